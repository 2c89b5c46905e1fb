"""log.jsonl: one JSON line per finished stage and invocation, echoed to the console."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console


@dataclass
class RunLog:
    """One JSON line per finished stage and invocation: what it did and how many calls it made."""

    path: Path
    console: Console
    invocation: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))

    def event(self, stage: str, message: str, **data: Any) -> None:
        self.console.print(f"[bold]{stage}[/bold] {message}", highlight=False)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"invocation": self.invocation, "time": time.time(), "stage": stage, **data}) + "\n")
