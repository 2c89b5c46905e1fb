"""A persistent per-request cache, so that a re-run or a resumed job never pays for an answer twice.

One SQLite row per request (WAL mode). The key is a hash of everything that determines the
answer; secrets never enter it. The request's canonical JSON is both what is hashed and what
is stored, so it is serialised once.

Answers are committed as they arrive: `store` queues the row and commits every row queued in
the same event-loop tick in one transaction (one commit per tick instead of one per answer, the
larger part of the cache's cost at hundreds of answers a second), and returns only once its row
is committed. So nothing is ever built on an answer that is not on disk: no pair is written and
no follow-up request is sent for it before its row is. A kill -9 can lose only answers whose
bytes arrived in the last tick and were not committed yet, as a per-answer commit could lose
the one answer being written.

Batch mode reads answers from a file that stays readable until the batch is marked read, so it
queues them (`queue`) and commits a chunk at a time (`commit`) through the same queue: one
transaction per chunk instead of one per answer, and a kill before the commit only means the
file is read again.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from rmboost.llm.types import Completion, Message, SamplingParams

_INSERT = "INSERT OR REPLACE INTO requests (key, request, response, created) VALUES (?, ?, ?, ?)"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS requests ("
    " key TEXT PRIMARY KEY, request TEXT NOT NULL, response TEXT NOT NULL, created REAL NOT NULL)",
)
LOCK_WAIT_S = 60.0  # how long opening or writing the shared cache file waits for another job


def open_shared_db(path: Path, schema: tuple[str, ...]) -> sqlite3.Connection:
    """A connection to the cache file, in WAL mode, with `schema` created.

    Several jobs may open one cache at the same moment. SQLite answers "database is locked" at
    once, without waiting, to a connection that switches a file to WAL while another does the
    same, so the whole opening is retried (with backoff, up to LOCK_WAIT_S); writes later wait
    on the busy timeout as usual.
    """
    deadline, pause = time.monotonic() + LOCK_WAIT_S, 0.005
    while True:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=LOCK_WAIT_S)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            for statement in schema:
                db.execute(statement)
            return db
        except sqlite3.OperationalError as exc:
            db.close()
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        except BaseException:
            db.close()
            raise
        time.sleep(pause)
        pause = min(2 * pause, 0.5)


def messages_json(messages: list[Message]) -> str:
    """The canonical JSON of a message list (sorted keys, compact), encoded once per request:
    the cache key and the HTTP body both embed it, and it is the larger part of both."""
    return _messages_json(tuple(tuple(m.items()) for m in messages))


@functools.lru_cache(maxsize=256)  # the key and the body of one request are made moments apart
def _messages_json(frozen: tuple[tuple[tuple[str, str], ...], ...]) -> str:
    return canonical([dict(m) for m in frozen])


def canonical(value: Any) -> str:
    """JSON with sorted keys, no spaces, UTF-8 text unescaped: the form cache keys hash."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def request_blob(
    identity: dict[str, Any],
    messages: list[Message],
    params: SamplingParams,
    sample_index: int,
) -> str:
    """The canonical JSON of a request: backend identity, model, messages, params, sample index.

    Byte for byte `json.dumps({"backend": identity, "messages": messages, "params": params,
    "sample_index": sample_index}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))`,
    the form every cache key has been hashed from, assembled around the shared messages JSON.
    """
    return assemble_blob(canonical(identity), messages, params, sample_index)


def assemble_blob(identity_json: str, messages: list[Message], params: SamplingParams, sample_index: int) -> str:
    """`request_blob` with the identity already serialised (it is the same for a whole job)."""
    return (
        f'{{"backend":{identity_json},"messages":{messages_json(messages)},'
        f'"params":{canonical(params.as_dict())},"sample_index":{int(sample_index)}}}'
    )


def key_of(blob: str) -> str:
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


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
    return key_of(request_blob(identity, messages, params, sample_index))


class RequestCache:
    """SQLite store of completed requests: key -> (request, answer)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pending: list[tuple[str, str, str, float]] = []
        self._waiters: list[asyncio.Future[None]] = []
        try:
            self._db = open_shared_db(self.path, SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"cannot open cache {self.path}: {exc}") from exc

    def get(self, key: str) -> Completion | None:
        row = self._db.execute("SELECT response FROM requests WHERE key = ?", (key,)).fetchone()
        return Completion.from_record(json.loads(row[0]), key) if row else None

    def put(self, key: str, request: dict[str, Any] | str, completion: Completion) -> None:
        """Commit one answer now (outside an event loop, or when a caller cannot wait a tick)."""
        self.queue(key, request, completion)
        self.commit()

    def queue(self, key: str, request: dict[str, Any] | str, completion: Completion) -> None:
        """Add one answer to the rows the next commit writes (`commit`, a tick's, or `close`'s).

        Not on disk until then: for answers that can be read again if the process dies first
        (a batch's result file), queued many at a time and committed together.
        """
        self._pending.append(self._row(key, request, completion))

    def commit(self) -> None:
        """Commit every queued row in one transaction."""
        self._commit_pending()

    async def store(self, key: str, request: dict[str, Any] | str, completion: Completion) -> None:
        """Commit one answer with the others of this event-loop tick; return once it is committed."""
        loop = asyncio.get_running_loop()
        self._pending.append(self._row(key, request, completion))
        if not self._waiters:
            loop.call_soon(self._commit_tick)
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        await waiter

    def _row(self, key: str, request: dict[str, Any] | str, completion: Completion) -> tuple[str, str, str, float]:
        text = request if isinstance(request, str) else json.dumps(request, ensure_ascii=False)
        return key, text, json.dumps(completion.to_record(), ensure_ascii=False), time.time()

    def _commit_tick(self) -> None:
        waiters, self._waiters = self._waiters, []
        try:
            self._commit_pending()
        except Exception as exc:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _commit_pending(self) -> None:
        rows, self._pending = self._pending, []
        if not rows:
            return
        self._db.execute("BEGIN")
        try:
            self._db.executemany(_INSERT, rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]

    def close(self) -> None:
        self._commit_pending()  # rows queued by a tick that has not run (or never will: Ctrl-C)
        self._db.close()
