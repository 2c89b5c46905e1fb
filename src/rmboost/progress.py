"""Live progress for long jobs: a rich bar on a terminal, a periodic log line elsewhere (CI, files)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rmboost.llm.client import Usage


@dataclass
class JobProgress:
    """Pairs done / total, failures, tokens in/out, rate and ETA for one generation job."""

    total: int
    usage: Usage
    console: Console
    label: str = "pairs"
    enabled: bool = True
    log_every: float = 15.0
    # More to show, each a short text ('' for nothing now): the openai backend's in-flight limit
    # and replicas, batch mode's round and batch states.
    status: Sequence[Callable[[], str]] = ()
    done: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    _start: float = field(default_factory=time.monotonic)
    _last_log: float = 0.0
    _progress: Progress | None = None
    _task_id: int | None = None

    def __enter__(self) -> JobProgress:
        if self.enabled and self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task_id = self._progress.add_task(self.label, total=self.total, stats=self._stats())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.update(self._task_id, stats=self._stats())
            self._progress.stop()
        elif self.enabled:
            self._log()

    def advance(self, failed_reason: str | None = None) -> None:
        if failed_reason:
            self.failures[failed_reason] += 1
        else:
            self.done += 1
        if self._progress is not None:
            self._progress.update(self._task_id, advance=1, stats=self._stats())
        elif self.enabled and time.monotonic() - self._last_log >= self.log_every:
            self._log()

    def refresh(self) -> None:
        """Show the stats again although no pair finished (batch mode calls it after each poll)."""
        if self._progress is not None:
            self._progress.update(self._task_id, stats=self._stats())
        elif self.enabled and time.monotonic() - self._last_log >= self.log_every:
            self._log()

    def _stats(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = self.done / elapsed * 60
        tin, tout = self.usage.total("tokens_in"), self.usage.total("tokens_out")
        parts = [f"failed {sum(self.failures.values())}", f"tokens in {tin:,} out {tout:,}",
                 f"{rate:.1f} {self.label}/min"]
        return " | ".join(parts + [text for show in self.status if (text := show())])

    def _log(self) -> None:
        self._last_log = time.monotonic()
        finished = self.done + sum(self.failures.values())
        elapsed = time.monotonic() - self._start
        self.console.print(
            f"{self.label}: {self.done} done, {finished}/{self.total} finished | {self._stats()} | "
            f"elapsed {elapsed:.0f}s{eta_text(elapsed, finished, self.total)}",
            highlight=False,
        )


def eta_text(elapsed: float, finished: int, total: int) -> str:
    """', ETA 12s' from the pace so far; ', ETA unknown' before anything finished; '' with nothing left."""
    left = total - finished
    if left <= 0:
        return ""
    if finished <= 0:
        return ", ETA unknown"
    return f", ETA {elapsed / finished * left:.0f}s"
