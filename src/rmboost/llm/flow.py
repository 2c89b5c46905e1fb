"""Graceful under overload: an adaptive in-flight limit (AIMD) and a circuit breaker.

`AdaptiveLimit` gates HTTP attempts (not requests: a request sleeping in its backoff holds no
slot). A 429, 503 or timeout halves the limit, down to a floor; each success while the limit
is in use raises it by one, back up to the ceiling (--concurrency). A burst of overload answers
halves it once, not once per answer: every attempt carries the epoch it started in, and only an
attempt that started under the current limit can lower it (the others were sent under a limit
that has already been cut).

`CircuitBreaker` stops the job when the endpoint has failed everything for a stretch: a number
of requests in a row that failed after all their retries, or a number of seconds in which every
attempt failed. Either condition alone trips it; 0 switches a condition off.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from rmboost.llm.types import FatalLLMError


class AdaptiveLimit:
    """At most `limit` attempts in flight; the limit moves between `floor` and `ceiling`."""

    def __init__(self, ceiling: int, floor: int = 1):
        if ceiling < 1:
            raise ValueError("the in-flight ceiling must be at least 1")
        self.ceiling = ceiling
        self.floor = max(1, min(floor, ceiling))
        self.limit = ceiling
        self.lowest = ceiling  # the lowest the limit has been (for tests and summaries)
        self.decreases = 0
        self.in_flight = 0
        self.epoch = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> int:
        """Wait for a slot; returns the epoch to hand back to `overload`."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return self.epoch
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted, then cancelled: pass it on
                self.release()
            raise
        return self.epoch

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def overload(self, epoch: int) -> None:
        """An attempt that started in `epoch` was answered 429/503 or timed out."""
        if epoch != self.epoch:
            return
        self.epoch += 1
        if self.limit > self.floor:
            self.limit = max(self.floor, self.limit // 2)
            self.lowest = min(self.lowest, self.limit)
            self.decreases += 1

    def success(self) -> None:
        """An attempt succeeded (call before `release`): additive increase while in use."""
        if self.limit < self.ceiling and 2 * self.in_flight >= self.limit:
            self.limit += 1
            self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)


class CircuitBreaker:
    """Opens (raises FatalLLMError, now and on every later call) when the endpoint is gone.

    `failures`: requests in a row that failed after all their retries (429, 5xx, timeouts,
    dropped connections, garbage answers; a 400 is the request's fault and does not count).
    `seconds`: how long every attempt may fail, counted from the first failure after the last
    success. Any success resets both.
    """

    def __init__(
        self, where: str, failures: int = 50, seconds: float = 120.0, clock: Callable[[], float] = time.monotonic
    ):
        self.where = where
        self.failures = failures
        self.seconds = seconds
        self._clock = clock
        self._failed_requests = 0
        self._failing_since: float | None = None
        self._last = ""
        self._open: str | None = None

    def raise_if_open(self) -> None:
        if self._open is not None:
            raise FatalLLMError(self._open)

    def succeeded(self) -> None:
        self._failed_requests = 0
        self._failing_since = None

    def attempt_failed(self, reason: str) -> None:
        now = self._clock()
        self._last = reason
        if self._failing_since is None:
            self._failing_since = now
        elif self.seconds > 0 and now - self._failing_since >= self.seconds:
            self._trip(f"every request failed for {now - self._failing_since:.0f} s (--breaker-seconds {self.seconds:g})")

    def request_failed(self, reason: str) -> None:
        self._last = reason
        self._failed_requests += 1
        if self.failures > 0 and self._failed_requests >= self.failures:
            self._trip(f"{self._failed_requests} requests in a row failed after their retries (--breaker-failures {self.failures})")

    def _trip(self, why: str) -> None:
        if self._open is None:
            self._open = f"stopped: the endpoint {self.where} is failing: {why}; last error: {self._last}"
        self.raise_if_open()
