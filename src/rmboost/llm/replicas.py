"""Several replicas of one model behind one backend: least-loaded choice, ejection, re-admission.

Each attempt goes to the healthy replica with the fewest attempts in flight (ties in turn). A
replica that refuses or drops a connection is taken out at once; one that times out or answers
5xx is taken out after `eject_after` such failures in a row. It comes back after a cool-down
(`cooldown` seconds, doubling while it keeps failing, at most `max_cooldown`), on probation:
one attempt at a time until one succeeds. A 429 never takes a replica out: it is alive, only
busy, and the adaptive limit deals with that. When every replica is out, the one due back first
is tried anyway, so a request is never stuck without a target (its retries pace it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# What one attempt's outcome says about the replica that served it.
ALIVE = ("ok", "rate_limited", "client_error", "bad_response", "auth", "not_found", "cancelled")
DEAD_AT_ONCE = ("connection_error",)


@dataclass
class Replica:
    base_url: str  # without the trailing slash, e.g. http://node1:8000/v1
    in_flight: int = 0
    failures: int = 0  # consecutive failed attempts
    down_until: float = 0.0  # monotonic time it comes back (0: never taken out)
    probation: bool = False  # back after a cool-down: one attempt at a time until one succeeds
    cooldown: float = 0.0
    ejections: int = 0
    attempts: int = 0

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/chat/completions"


class ReplicaPool:
    def __init__(
        self,
        base_urls: Sequence[str],
        *,
        eject_after: int = 3,
        cooldown: float = 2.0,
        max_cooldown: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not base_urls:
            raise ValueError("at least one base URL is needed")
        self.replicas = [Replica(url.rstrip("/")) for url in base_urls]
        self.eject_after = eject_after
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self._clock = clock
        self._turn = 0

    def pick(self) -> Replica:
        """The replica for the next attempt (counted in flight until `done`)."""
        replicas = self.replicas
        if len(replicas) == 1:
            best = replicas[0]
        else:
            now = self._clock()
            n = len(replicas)
            self._turn = (self._turn + 1) % n
            best = None
            for i in range(n):
                r = replicas[(self._turn + i) % n]
                if r.down_until > now or (r.probation and r.in_flight):
                    continue
                if best is None or r.in_flight < best.in_flight:
                    best = r
            if best is None:  # all out: the one due back first
                best = min(replicas, key=lambda r: (r.down_until, r.in_flight))
        best.in_flight += 1
        best.attempts += 1
        return best

    def done(self, replica: Replica, outcome: str) -> None:
        """Record how an attempt ended ("ok", "timeout", "connection_error", "server_error", ...)."""
        replica.in_flight -= 1
        if outcome == "ok":
            replica.failures = 0
            replica.probation = False
            replica.cooldown = 0.0
            return
        if outcome in ALIVE:
            return
        replica.failures += 1
        if outcome in DEAD_AT_ONCE or replica.failures >= self.eject_after or replica.probation:
            replica.cooldown = min(self.max_cooldown, replica.cooldown * 2 or self.cooldown)
            replica.down_until = self._clock() + replica.cooldown
            replica.probation = True
            replica.ejections += 1

    def up(self) -> int:
        """Replicas in service now."""
        now = self._clock()
        return sum(1 for r in self.replicas if r.down_until <= now)

    def describe(self) -> str:
        return ", ".join(r.base_url for r in self.replicas)
