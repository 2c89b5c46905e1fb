"""The LLM judge (RLAIF): compare two responses in both orders, and rate single responses.

Judges of every size favour one position, so each comparison is asked twice with the responses
swapped. A pair gets a label only when both orders name the same winner; two "same" verdicts
are a tie, any other disagreement is inconsistent. Neither becomes a label.

Two modes: `text` parses a <decision> tag (first / second / same); `logprobs` reads the
probability of "first" vs "second" from the first decision token and averages P(A better) over
both orders (needs a backend that returns log-probabilities: llama.cpp and most
OpenAI-compatible servers do).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from rmboost.backends import BACKENDS, BackendOptions, http_urls, make_backend
from rmboost.methods.common import MethodContext, StepFailed, derive_seed, sample_tagged
from rmboost.options import option
from rmboost.parsing import ParseError, extract_tag
from rmboost.prompts import judge_messages, rating_messages

Decision = Literal["first", "second", "same"]
JUDGE_MODES = ("text", "logprobs")

_WORDS: dict[str, Decision] = {
    "first": "first", "1": "first", "response 1": "first", "a": "first",
    "second": "second", "2": "second", "response 2": "second", "b": "second",
    "same": "same", "tie": "same", "equal": "same", "neither": "same", "both": "same",
}


def parse_decision(text: str) -> Decision:
    """first / second / same from a decision tag's content; ParseError otherwise."""
    key = " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())
    if key in _WORDS:
        return _WORDS[key]
    words = key.split()
    # "first. Because ..." (an unclosed tag) counts; "first or second" (the options echoed) does not.
    if words and len(words[0]) > 1 and words[0] in _WORDS:
        if len(words) > 1 and (words[1] == "or" or words[1] in _WORDS):
            raise ParseError("bad_decision", f"the options were echoed: {text[:80]!r}")
        return _WORDS[words[0]]
    hits = {d for word, d in _WORDS.items() if len(word) > 2 and re.search(rf"\b{word}\b", key)}
    if len(hits) == 1:
        return hits.pop()
    raise ParseError("bad_decision", f"cannot read a decision from {text[:80]!r}")


def parse_aspect_verdicts(text: str) -> dict[str, Decision]:
    """'name: first' lines inside <aspect_verdicts>; unreadable lines are skipped."""
    try:
        body = extract_tag(text, "aspect_verdicts", required=False) or ""
    except ParseError:
        return {}
    verdicts: dict[str, Decision] = {}
    for line in body.splitlines():
        name, sep, value = line.partition(":")
        if not sep:
            continue
        try:
            verdicts[name.strip(" -*").lower()] = parse_decision(value)
        except ParseError:
            continue
    return verdicts


@dataclass
class Verdict:
    """One judge call: the decision for (first, second) as shown to the judge."""

    decision: Decision
    p_first: float | None = None
    aspects: dict[str, Decision] = field(default_factory=dict)
    explanation: str = ""
    request_id: str = ""


@dataclass
class PairVerdict:
    """Both orders combined, in terms of the caller's (a, b)."""

    winner: Literal["a", "b"] | None
    reason: str | None  # None, "judge_tie" or "judge_inconsistent"
    p_a: float | None
    verdicts: list[Verdict]
    completions: list[Any]

    def as_record(self) -> dict[str, Any]:
        return {
            "winner": self.winner,
            "reason": self.reason,
            "p_a": self.p_a,
            "orders": [
                {"shown": shown, "decision": v.decision, "p_first": v.p_first, "aspects": v.aspects,
                 "explanation": v.explanation}
                for shown, v in zip(("a,b", "b,a"), self.verdicts, strict=True)
            ],
        }


@dataclass
class Judge:
    """A judge LLM with its own sampling settings (greedy by default)."""

    ctx: MethodContext  # the judge's llm, params (temperature 0 = greedy), task and seed
    mode: str = "text"
    margin: float = 0.0  # logprobs: |P(a) - 0.5| must exceed this for a label

    async def check(self) -> None:
        """Ask the judge's endpoint once before any work (FatalLLMError: one line, nothing spent)."""
        await self.ctx.llm.backend.check()

    async def aclose(self) -> None:
        await self.ctx.llm.backend.aclose()

    def usage(self) -> dict[str, Any]:
        """Calls, cache hits and tokens per step, as summaries report them."""
        return self.ctx.llm.usage.as_dict()

    async def compare(self, row: dict[str, Any], a: str, b: str, *, step: str = "judge") -> PairVerdict:
        # Both orders at once: one batch round rather than two (the results do not depend on order).
        ab, ba = await asyncio.gather(self._once(row, a, b, step, "ab"), self._once(row, b, a, step, "ba"))
        completions = [*ab[1], *ba[1]]
        v1, v2 = ab[0], ba[0]
        if self.mode == "logprobs":
            assert v1.p_first is not None and v2.p_first is not None
            p_a = (v1.p_first + (1.0 - v2.p_first)) / 2
            if abs(p_a - 0.5) <= self.margin:
                return PairVerdict(None, "judge_tie", p_a, [v1, v2], completions)
            return PairVerdict("a" if p_a > 0.5 else "b", None, p_a, [v1, v2], completions)
        back = {"first": "b", "second": "a", "same": "same"}[v2.decision]
        first = {"first": "a", "second": "b", "same": "same"}[v1.decision]
        if first == back == "same":
            return PairVerdict(None, "judge_tie", None, [v1, v2], completions)
        if first != back:
            return PairVerdict(None, "judge_inconsistent", None, [v1, v2], completions)
        return PairVerdict(first, None, None, [v1, v2], completions)  # type: ignore[arg-type]

    def _short(self) -> int | None:
        """Prefilled inside the tag, the answer is a word or a number: no room for rambling."""
        return 8 if self.ctx.prefill else None

    async def _once(
        self, row: dict[str, Any], first: str, second: str, step: str, order: str
    ) -> tuple[Verdict, list[Any]]:
        ctx = self.ctx
        messages = judge_messages(ctx.task, row, first, second, mode=self.mode)
        if self.mode == "logprobs":
            return await self._logprob_verdict(row, messages, step, order)
        result = await sample_tagged(
            ctx, messages, row_id=row["id"], step=step, tag="decision", max_tokens=self._short(),
            validate=_check_decision, seed_name=f"{step}-{order}",
        )
        return (
            Verdict(
                decision=parse_decision(result.text),
                aspects=parse_aspect_verdicts(result.raw),
                explanation=extract_tag(result.raw, "explanation", required=False) or "",
                request_id=result.completions[-1].request_id,
            ),
            result.completions,
        )

    async def _logprob_verdict(
        self, row: dict[str, Any], messages: list[dict[str, str]], step: str, order: str
    ) -> tuple[Verdict, list[Any]]:
        completion = await self._next_token(row, messages, "decision", step, order)
        p_first = p_first_from_logprobs(completion.logprobs)
        if p_first is None:
            raise StepFailed(
                step, "no_decision_logprobs", completion.text,
                [{"reason": "neither 'first' nor 'second' among the top log-probabilities",
                  "raw": completion.text, "request_id": completion.request_id}],
            )
        decision: Decision = "first" if p_first > 0.5 else "second" if p_first < 0.5 else "same"
        return Verdict(decision, p_first=p_first, request_id=completion.request_id), [completion]

    async def _next_token(
        self, row: dict[str, Any], messages: list[dict[str, str]], tag: str, step: str,
        seed_part: str | int, sample_index: int = 0,
    ) -> Any:
        """One greedy token with its top-20 log-probabilities, the answer started inside `<tag>`."""
        ctx = self.ctx
        if ctx.prefill:
            messages = [*messages, {"role": "assistant", "content": f"<{tag}>"}]
        params = replace(
            ctx.params, max_tokens=1, logprobs=20, temperature=0.0,
            seed=derive_seed(ctx.seed, row["id"], step, seed_part),
        )
        return await ctx.llm.complete(messages, params, step=step, sample_index=sample_index)

    async def rate(
        self, row: dict[str, Any], candidate: str, *, index: int, step: str = "score"
    ) -> tuple[float, list[Any]]:
        """A validated 1-10 score for one response (logprobs mode: the expected score)."""
        if self.mode == "logprobs":
            return await self._logprob_score(row, candidate, index, step)
        result = await sample_tagged(
            self.ctx, rating_messages(self.ctx.task, row, candidate), row_id=row["id"], step=step,
            tag="score", max_tokens=self._short(), validate=_check_score, seed_name=f"{step}-{index}",
        )
        return float(parse_score(result.text)), result.completions

    async def _logprob_score(
        self, row: dict[str, Any], candidate: str, index: int, step: str
    ) -> tuple[float, list[Any]]:
        messages = rating_messages(self.ctx.task, row, candidate)
        completion = await self._next_token(row, messages, "score", step, index, sample_index=index)
        score = expected_score_from_logprobs(completion.logprobs)
        if score is None:
            raise StepFailed(
                step, "no_score_logprobs", completion.text,
                [{"reason": "no score 1-10 among the top log-probabilities", "raw": completion.text,
                  "request_id": completion.request_id}],
            )
        return score, [completion]


def expected_score_from_logprobs(logprobs: list[dict[str, Any]] | None, low: int = 1, high: int = 10) -> float | None:
    """Sum of score x P(score) over the first token's candidates that are whole numbers in range."""
    if not logprobs:
        return None
    weights: dict[int, float] = {}
    for item in logprobs[0].get("top_logprobs") or []:
        word = item["token"].strip()
        if word.isdigit() and low <= int(word) <= high:
            weights[int(word)] = weights.get(int(word), 0.0) + math.exp(item["logprob"])
    total = sum(weights.values())
    return sum(k * w for k, w in weights.items()) / total if total else None


def parse_score(text: str, low: int = 1, high: int = 10) -> int:
    """The whole number a score tag starts with ("7", "7/10", "7. The answer ..."), in range."""
    match = re.match(r"\s*(\d+)(?![\d.]\d)", text)
    if not match:
        raise ParseError("bad_score", f"not a whole number: {text[:40]!r}")
    value = int(match.group(1))
    if not low <= value <= high:
        raise ParseError("score_out_of_range", f"{value} is outside {low}-{high}")
    return value


def p_first_from_logprobs(logprobs: list[dict[str, Any]] | None) -> float | None:
    """P(first) / (P(first) + P(second)) from the first generated token's top log-probabilities."""
    if not logprobs:
        return None
    top = logprobs[0].get("top_logprobs") or []
    candidates = [(t["token"], t["logprob"]) for t in top] or [(logprobs[0]["token"], logprobs[0]["logprob"])]
    best: dict[str, float] = {}
    for token, logprob in candidates:
        word = token.strip().lower()
        if len(word) < 2:
            continue
        for target in ("first", "second"):
            if target.startswith(word) or word.startswith(target):
                best[target] = max(best.get(target, -math.inf), logprob)
    if not best:
        return None
    pf = math.exp(best.get("first", -math.inf))
    ps = math.exp(best.get("second", -math.inf))
    return pf / (pf + ps)


def _check_decision(text: str) -> None:
    parse_decision(text)


def _check_score(text: str) -> None:
    parse_score(text)


CONNECTION = ("backend", "model", "base_url", "api_key_env")  # the judge's own endpoint, if any


@dataclass
class JudgeOptions:
    """The judge: its model (connection fields left None: the generator's) and how it is asked.

    One declaration for `generate`'s and `filter`'s `--judge-*` flags, `relabel`'s (with its own
    defaults) and an experiment's `judge` section.
    """

    backend: str | None = option(None, choices=BACKENDS, help="Judge backend (default: the generator's).")
    model: str | None = option(None, help="Judge model (openai) or GGUF path (llamacpp).")
    base_url: str | list[str] | None = option(
        None, check=http_urls, help="Judge endpoint (openai); repeat for replicas of one model.")
    api_key_env: str | None = option(None, help="Environment variable with the judge's API key.")
    mode: str = option("text", choices=JUDGE_MODES, noun="judge mode",
                       help="text (parse first/second/same) or logprobs (P(first) from token log-probabilities).")
    temperature: float = option(0.0, help="Judge sampling temperature (0: greedy, no resampling).")
    max_tokens: int = option(512, cli=False)
    margin: float = option(0.0, help="logprobs mode: |P(first better) - 0.5| must exceed this for a label.")
    max_attempts: int = option(3, cli=False, yaml=False)
    prefill: bool | None = option(None, cli=False, yaml=False)  # None: on for llamacpp

    def own_connection(self) -> bool:
        return any(getattr(self, k) is not None for k in CONNECTION)

    def connection(self, generator: BackendOptions | None = None) -> BackendOptions:
        """The judge's backend: the connection fields set here over the generator's.

        Another backend kind starts from its own model and URL (the generator's name a model on
        another server); the pacing settings (timeout, retries, limits, threads, breaker) are the
        generator's. The generator's `cache_identity` names the generator's deployment, so a judge
        with its own endpoint (or another backend kind) is cached under its own URL instead.
        """
        base = generator or BackendOptions()
        changed = {k: v for k in CONNECTION if (v := getattr(self, k)) is not None}
        if self.backend is not None and self.backend != base.backend:
            changed = {"model": None, "base_url": None, **changed}
        if "base_url" in changed:
            changed["cache_identity"] = None
        return replace(base, **changed)


@asynccontextmanager
async def open_judge(
    opts: JudgeOptions, task: Any, seed: int, cache: Any, concurrency: int = 1, backend: Any = None,
) -> AsyncIterator[Judge]:
    """A judge for a job of its own (`filter`, `relabel --scores-from judge`): built, its endpoint
    checked before any work, and closed on any exit. `generate` uses make_judge, check and aclose
    itself, because its judge starts and stops with the generator's backend."""
    judge = make_judge(opts, task, seed, cache, concurrency, backend=backend)
    try:
        await judge.check()
        yield judge
    finally:
        await judge.aclose()


def make_judge(
    opts: JudgeOptions, task: Any, seed: int, cache: Any, concurrency: int = 1, backend: Any = None,
    generator: BackendOptions | None = None,
) -> Judge:
    """A Judge with its own backend instance (and its own concurrency limit).

    `backend` (tests, replays) replaces the one `opts.connection(generator)` describes.
    """
    from rmboost.llm import LLM, SamplingParams

    if opts.mode not in JUDGE_MODES:
        raise ValueError(f"unknown judge mode {opts.mode!r} (use {', '.join(JUDGE_MODES)})")
    if backend is None:
        backend = make_backend(opts.connection(generator), concurrency=concurrency)
    ctx = MethodContext(
        llm=LLM(backend, cache, max_concurrency=concurrency),
        task=task,
        params=SamplingParams(temperature=opts.temperature, top_p=1.0, max_tokens=opts.max_tokens),
        seed=seed,
        max_attempts=opts.max_attempts,
        prefill=opts.prefill if opts.prefill is not None else backend.name == "llamacpp",
    )
    return Judge(ctx=ctx, mode=opts.mode, margin=opts.margin)
