"""log.jsonl: one JSON line per finished stage and invocation, echoed to the console."""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

_STARTED = itertools.count(1)  # RunLogs started in this process


def invocation_id() -> str:
    """An id unique to one invocation, e.g. "2025-06-01T12:00:00.123456-4242-1": the local start
    time to the microsecond, the process id, and how many RunLogs this process has started (two
    invocations in the same second, or the same process twice, get different ids)."""
    return f"{datetime.now().isoformat(timespec='microseconds')}-{os.getpid()}-{next(_STARTED)}"


@dataclass
class RunLog:
    """One JSON line per finished stage and invocation: what it did and how many calls it made."""

    path: Path
    console: Console
    invocation: str = field(default_factory=invocation_id)

    def event(self, stage: str, message: str, **data: Any) -> None:
        self.console.print(f"[bold]{stage}[/bold] {message}", highlight=False)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"invocation": self.invocation, "time": time.time(), "stage": stage, **data}) + "\n")
