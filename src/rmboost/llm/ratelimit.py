"""Pacing: requests- and tokens-per-minute limits as async token buckets, and how long to wait
before a retry (Retry-After, else exponential backoff with full jitter)."""

from __future__ import annotations

import asyncio
import random
import time
from email.utils import parsedate_to_datetime
from typing import Any


class RateLimiter:
    """At most `per_minute` units per minute, with bursts up to one minute's worth."""

    def __init__(self, per_minute: float):
        if per_minute <= 0:
            raise ValueError("a rate limit must be positive")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._level = self.capacity
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, amount: float = 1.0) -> None:
        amount = min(amount, self.capacity)  # a single huge request must still pass, eventually
        async with self._lock:
            while True:
                now = time.monotonic()
                self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._level >= amount:
                    self._level -= amount
                    return
                await asyncio.sleep((amount - self._level) / self.rate)


def retry_after_seconds(headers: Any) -> float | None:
    """The server's Retry-After (or OpenAI's retry-after-ms) in seconds; None when absent or unreadable."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def backoff_delay(attempt: int, retry_after: float | None, base: float, cap: float) -> float:
    """Seconds before retry `attempt` (0-based): the server's Retry-After, capped, else full jitter."""
    if retry_after is not None:
        return min(retry_after, cap)
    return random.uniform(0, min(cap, base * 2**attempt))
