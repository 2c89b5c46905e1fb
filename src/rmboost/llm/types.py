"""The vocabulary shared by every backend: messages, sampling parameters, completions, errors."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Protocol

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}


@dataclass(frozen=True)
class SamplingParams:
    """Everything besides the messages that decides what the model answers."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int | None = None
    logprobs: int | None = None  # top-k log-probabilities per generated token, if wanted
    stop: tuple[str, ...] = ()  # stop sequences (not included in the text)

    def as_dict(self) -> dict[str, Any]:
        # Shallow (dataclasses.asdict deep-copies): the same JSON, a tenth of the time.
        return {f: getattr(self, f) for f in _PARAM_FIELDS}


_PARAM_FIELDS = tuple(f.name for f in fields(SamplingParams))


@dataclass
class Completion:
    """One answer from a backend, with the token counts that were billed for it."""

    text: str
    tokens_in: int
    tokens_out: int
    model: str
    finish_reason: str | None = None
    logprobs: list[dict[str, Any]] | None = None
    request_id: str = ""  # the cache key; stable across runs
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """What the cache stores (no request_id/cached: those describe the lookup, not the answer)."""
        return {
            "text": self.text,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "model": self.model,
            "finish_reason": self.finish_reason,
            "logprobs": self.logprobs,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], request_id: str) -> Completion:
        return cls(
            text=record["text"],
            tokens_in=record["tokens_in"],
            tokens_out=record["tokens_out"],
            model=record["model"],
            finish_reason=record.get("finish_reason"),
            logprobs=record.get("logprobs"),
            request_id=request_id,
            cached=True,
        )


class LLMError(Exception):
    """A request failed for this request only (after retries); the job goes on."""


class FatalLLMError(LLMError):
    """The backend cannot serve this job at all (bad key, unknown model, unreachable endpoint)."""


class Backend(Protocol):
    """What rmboost needs from a model server or a local model."""

    name: str  # "llamacpp", "openai", ...
    model: str  # what to record as the model in outputs

    def identity(self) -> dict[str, Any]:
        """Everything about the backend that changes answers (never secrets): part of the cache key."""
        ...

    async def complete(self, messages: list[Message], params: SamplingParams) -> Completion:
        """One chat completion. Raises LLMError (this request) or FatalLLMError (the whole job).

        A final assistant message is a prefill: the model continues it, and the completion's
        text starts with it (backends that cannot prefill raise LLMError).
        """
        ...

    async def check(self) -> None:
        """Fail fast with FatalLLMError when the backend cannot work (called once before a job)."""
        ...

    async def aclose(self) -> None: ...
