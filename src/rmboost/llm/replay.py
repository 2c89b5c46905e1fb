"""A backend that can only replay the cache: every request it is asked to answer fails.

Run a job through it to recount a finished job's tokens from the cached answers (the cache keys
are the real backend's, so every stored answer is found) without ever paying for one.
"""

from __future__ import annotations

from typing import Any

from rmboost.llm.types import Backend, Completion, LLMError, Message, SamplingParams


class CacheOnly:
    """Wraps a backend: the same name, model and cache identity, but no request leaves it."""

    def __init__(self, inner: Backend):
        self.inner, self.name, self.model = inner, inner.name, inner.model

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()  # the same cache keys as the real backend

    async def check(self) -> None:
        return None

    async def complete(self, messages: list[Message], params: SamplingParams) -> Completion:
        raise LLMError("not_cached: this replay reads the cache only")

    async def aclose(self) -> None:
        return None
