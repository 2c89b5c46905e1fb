"""A persistent per-request cache, so that a re-run or a resumed job never pays for an answer twice.

One SQLite row per request, written the moment the answer arrives (WAL mode, committed per row).
The key is a hash of everything that determines the answer; secrets never enter it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from rmboost.llm.types import Completion, Message, SamplingParams


def cache_dir() -> Path:
    """rmboost's cache folder: $RMBOOST_HOME, else $XDG_CACHE_HOME/rmboost, else ~/.cache/rmboost.

    It holds the request cache (`llm-cache.sqlite`, unless $RMBOOST_CACHE names another file) and
    the converted models (`backbones/`).
    """
    if env := os.environ.get("RMBOOST_HOME"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rmboost"


def default_cache_path() -> Path:
    """One content-addressed request cache per user ($RMBOOST_CACHE, else in cache_dir()):
    sharing it across jobs is safe and saves calls."""
    if env := os.environ.get("RMBOOST_CACHE"):
        return Path(env)
    return cache_dir() / "llm-cache.sqlite"


def request_key(
    identity: dict[str, Any],
    messages: list[Message],
    params: SamplingParams,
    sample_index: int,
) -> str:
    """A stable hash of the backend identity, model, rendered messages, sampling params and sample index."""
    payload = {
        "backend": identity,
        "messages": messages,
        "params": params.as_dict(),
        "sample_index": sample_index,
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class RequestCache:
    """SQLite store of completed requests: key -> (request, answer)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS requests ("
                " key TEXT PRIMARY KEY, request TEXT NOT NULL, response TEXT NOT NULL,"
                " created REAL NOT NULL)"
            )
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"cannot open cache {self.path}: {exc}") from exc

    def get(self, key: str) -> Completion | None:
        row = self._db.execute("SELECT response FROM requests WHERE key = ?", (key,)).fetchone()
        return Completion.from_record(json.loads(row[0]), key) if row else None

    def put(self, key: str, request: dict[str, Any], completion: Completion) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO requests (key, request, response, created) VALUES (?, ?, ?, ?)",
            (
                key,
                json.dumps(request, ensure_ascii=False),
                json.dumps(completion.to_record(), ensure_ascii=False),
                time.time(),
            ),
        )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]

    def close(self) -> None:
        self._db.close()
