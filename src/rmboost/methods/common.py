"""What every method shares: per-request seeds, tagged sampling with bounded retries, failures."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from rmboost.llm import LLM, Completion, FatalLLMError, LLMError, Message, SamplingParams
from rmboost.options import option
from rmboost.parsing import ParseError, extract_tag, looks_like_refusal, normalize_for_compare
from rmboost.prompts import ASPECT_MODES, format_value
from rmboost.tasks import TaskSpec

if TYPE_CHECKING:  # methods.judge and methods.west_of_n import this module
    from rmboost.methods.judge import Judge
    from rmboost.methods.west_of_n import ResponseScorer


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from the job seed and names (row id, step, attempt)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class StepFailed(Exception):
    """A step produced no usable answer within its attempts; becomes a failures.jsonl row."""

    def __init__(self, step: str, reason: str, raw: str, attempts: list[dict[str, Any]]):
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason
        self.raw = raw
        self.attempts = attempts


@dataclass
class MethodSettings:
    """The methods' own settings, declared once (GenerateConfig carries the same fields)."""

    aspect_mode: str = option("model-selects", choices=ASPECT_MODES,
                              help="model-selects (paper), sample, or none (No-Aspect ablation).")
    aspects_k: int = option(2, help="Aspects per pair with --aspect-mode sample.")
    y1_from: str | None = option(None, help="Take y1 from this column (e.g. reference) instead of generating it.")
    n: int = option(8, flags=("--n",), help="west-of-n: samples per prompt.")


@dataclass
class MethodContext:
    """The job-wide things a method needs to turn a row into a pair."""

    llm: LLM
    task: TaskSpec
    params: SamplingParams
    seed: int = 0
    max_attempts: int = 3
    settings: MethodSettings = field(default_factory=MethodSettings)
    prefill: bool = False  # start each answer inside its tag (small models rarely write the tag)
    judge: Judge | None = None  # rlaif's labels, the filter, west-of-n's judge scorer
    scorer: ResponseScorer | None = None  # west-of-n's best and worst


@dataclass
class StepResult:
    text: str
    raw: str
    completions: list[Completion]


Validator = Callable[[str], None]  # raises ParseError to reject a parsed answer


async def sample_tagged(
    ctx: MethodContext,
    messages: list[Message],
    *,
    row_id: str,
    step: str,
    tag: str = "response",
    validate: Validator | None = None,
    stop_at_close: bool = True,
    seed_name: str | None = None,
    max_tokens: int | None = None,
) -> StepResult:
    """Sample until the answer parses and validates, at most `ctx.max_attempts` fresh samples.

    Each attempt has its own seed and sample index, so it is cached on its own: a re-run replays
    the same attempts from the cache. A backend error (not a bad answer) is not resampled, and
    neither is a greedy (temperature 0) request, which would only repeat itself.
    `seed_name` (default: `step`) separates samples that share a step, e.g. West-of-N's N draws.
    """
    completions: list[Completion] = []
    attempts: list[dict[str, Any]] = []
    if ctx.prefill:
        # Start the answer inside the tag: small models rarely emit the tag on their own.
        messages = [*messages, {"role": "assistant", "content": f"<{tag}>"}]
    stop = (f"</{tag}>",) if stop_at_close else ()
    tries = 1 if ctx.params.temperature == 0 else ctx.max_attempts
    name = seed_name or step
    for attempt in range(tries):
        params = replace(ctx.params, seed=derive_seed(ctx.seed, row_id, name, attempt), stop=stop)
        if max_tokens is not None:
            params = replace(params, max_tokens=max_tokens)
        try:
            completion = await ctx.llm.complete(messages, params, step=step, sample_index=attempt)
        except FatalLLMError:
            raise
        except LLMError as exc:
            reason = str(exc).split(":")[0] or "backend_error"
            attempts.append({"attempt": attempt, "reason": reason, "raw": "", "error": str(exc)})
            raise StepFailed(step, reason, "", attempts) from exc
        completions.append(completion)
        try:
            text = extract_tag(completion.text, tag)
            if tag == "response":
                reject_echo(ctx.task, text)
            if validate is not None:
                validate(text)
        except ParseError as exc:
            reason = exc.reason
            if reason == "no_tag" and looks_like_refusal(completion.text):
                reason = "refusal"
            if completion.finish_reason == "length" and reason in ("no_tag", "empty"):
                reason = f"{reason}_truncated"
            attempts.append(
                {"attempt": attempt, "reason": reason, "raw": completion.text, "request_id": completion.request_id}
            )
            continue
        return StepResult(text=text, raw=completion.text, completions=completions)
    last = attempts[-1]
    raise StepFailed(step, last["reason"], last["raw"], attempts)


def differs_from(first: str) -> Validator:
    """Reject an answer that is `first` again (up to case and spacing): reason `same_as_y1`."""
    folded = normalize_for_compare(first)

    def check(text: str) -> None:
        if normalize_for_compare(text) == folded:
            raise ParseError("same_as_y1", "the answer repeats the first response")

    return check


_INSTRUCTION_MARKERS = ("<task_description>", "<guideline>", "<existing_", "</response>", "<response>")


def reject_echo(task: TaskSpec, text: str) -> None:
    """A response that repeats the instruction (its tags, role or goal sentence) is no response."""
    lowered = text.lower()
    if any(marker in lowered for marker in _INSTRUCTION_MARKERS):
        raise ParseError("echoes_instruction", "the answer repeats the instruction's tags")
    folded = normalize_for_compare(text)
    for sentence in (task.role, task.goal):
        probe = normalize_for_compare(sentence)[:80]
        if len(probe) >= 40 and probe in folded:
            raise ParseError("echoes_instruction", "the answer repeats the instruction")


def pair_row(
    ctx: MethodContext,
    row: dict[str, Any],
    *,
    method: str,
    chosen: str,
    rejected: str,
    y1: str,
    y2: str,
    label: str,
    completions: list[Completion],
    **extra: Any,
) -> dict[str, Any]:
    """The one pair schema every method writes: TRL's columns first, then provenance."""
    task = ctx.task
    inputs = {f.name: format_value(row.get(f.name)) for f in task.inputs}
    if task.reference_field and format_value(row.get(task.reference_field)):
        inputs[task.reference_field] = format_value(row.get(task.reference_field))
    return {
        "id": row["id"],
        "prompt": task.render_prompt(row),
        "chosen": chosen,
        "rejected": rejected,
        "method": method,
        "task": task.name,
        "label": label,
        **extra,
        "y1": y1,
        "y2": y2,
        "model": ctx.llm.backend.model,
        "seed": ctx.seed,
        "tokens_in": sum(c.tokens_in for c in completions),
        "tokens_out": sum(c.tokens_out for c in completions),
        "request_ids": [c.request_id for c in completions],
        "inputs": inputs,
    }
