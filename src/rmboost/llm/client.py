"""The one object methods talk to: a backend behind the cache, a concurrency limit and token accounting."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from rmboost.llm.cache import RequestCache, assemble_blob, canonical, key_of
from rmboost.llm.types import Backend, Completion, Message, SamplingParams


@dataclass
class StepUsage:
    calls: int = 0  # requests sent to the backend
    cache_hits: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cached_tokens_in: int = 0
    cached_tokens_out: int = 0


@dataclass
class Usage:
    """Token and call counts per step ("y1", "y2", "judge", ...), paid and cached kept apart."""

    steps: dict[str, StepUsage] = field(default_factory=lambda: defaultdict(StepUsage))

    def record(self, step: str, completion: Completion) -> None:
        s = self.steps[step]
        if completion.cached:
            s.cache_hits += 1
            s.cached_tokens_in += completion.tokens_in
            s.cached_tokens_out += completion.tokens_out
        else:
            s.calls += 1
            s.tokens_in += completion.tokens_in
            s.tokens_out += completion.tokens_out

    def total(self, attr: str) -> int:
        return sum(getattr(s, attr) for s in self.steps.values())

    def as_dict(self) -> dict[str, Any]:
        return {name: vars(s).copy() for name, s in sorted(self.steps.items())}


class LLM:
    """Cached, concurrency-limited chat completions.

    A request is identified by its rendered messages, sampling params and `sample_index`
    (the n-th independent sample of the same request); equal requests are answered from the cache.
    """

    def __init__(
        self,
        backend: Backend,
        cache: RequestCache | None = None,
        max_concurrency: int = 1,
    ):
        self.backend = backend
        self.cache = cache
        self.usage = Usage()
        self._semaphore = asyncio.Semaphore(max(1, max_concurrency))
        self._identity = backend.identity()
        self._identity_json = canonical(self._identity)  # serialised once: part of every key
        # Batch mode (rmboost.llm.batch): uncached requests wait for a batch round instead.
        self.batch: Any = None  # a BatchRunner
        self.batch_transport: Any = None  # where this LLM's batches go

    async def complete(
        self,
        messages: list[Message],
        params: SamplingParams,
        *,
        step: str,
        sample_index: int = 0,
    ) -> Completion:
        blob = assemble_blob(self._identity_json, messages, params, sample_index)
        key = key_of(blob)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.usage.record(step, hit)
            return hit
        if self.batch is not None:  # the runner caches the answer the moment it reads it
            request = {
                "backend": self._identity,
                "messages": messages,
                "params": params.as_dict(),
                "sample_index": sample_index,
            }
            completion = await self.batch.complete(self.batch_transport, key, request)
            self.usage.record(step, completion)
            return completion
        async with self._semaphore:
            completion = await self.backend.complete(messages, params)
        completion.request_id = key
        if self.cache is not None:
            await self.cache.store(key, blob, completion)  # committed before anything uses it
        self.usage.record(step, completion)
        return completion
