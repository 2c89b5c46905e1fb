"""Requests-per-minute and tokens-per-minute limits as async token buckets."""

from __future__ import annotations

import asyncio
import time


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
