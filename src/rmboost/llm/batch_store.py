"""Batch state in the request cache database, written before anything is sent.

Two tables beside the cache's `requests`:

* `batches`: one row per batch file: where it goes (`target`, no secrets), the provider's ids
  once known, its state, the provider's status and request counts.
* `batch_requests`: the requests of each batch (cache key and the request as the cache records
  it), and what became of each (`ok`, or the error).

A batch's state moves `new` (recorded; input not uploaded yet) -> `uploaded` (the provider holds
the input file) -> `submitted` (the provider's batch exists) -> `reading` (finished; results not
all read) -> `done`. Each step is committed before the next call, so a job killed anywhere finds
out on restart what exists and re-attaches to it instead of paying again.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rmboost.llm.cache import open_shared_db

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS batches ("
    " id TEXT PRIMARY KEY, transport TEXT NOT NULL, target TEXT NOT NULL, state TEXT NOT NULL,"
    " remote_id TEXT, input_file TEXT, status TEXT, counts TEXT, info TEXT NOT NULL DEFAULT '{}',"
    " n_requests INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS batch_requests ("
    " batch TEXT NOT NULL, key TEXT NOT NULL, request TEXT NOT NULL, outcome TEXT,"
    " PRIMARY KEY (batch, key))",
    "CREATE INDEX IF NOT EXISTS batch_requests_key ON batch_requests (key)",
    "CREATE INDEX IF NOT EXISTS batches_state ON batches (state)",
)


@dataclass
class BatchRecord:
    id: str  # ours (a uuid), stable from the moment the batch is recorded
    transport: str
    target: dict[str, Any]
    state: str
    remote_id: str | None
    input_file: str | None
    status: str | None
    counts: dict[str, int]
    info: dict[str, Any] = field(default_factory=dict)
    n_requests: int = 0
    created: float = 0.0


def target_text(target: dict[str, Any]) -> str:
    return json.dumps(target, sort_keys=True, separators=(",", ":"))


class BatchStore:
    """The batch tables of one cache file (its own connection; SQLite WAL lets both share the file)."""

    def __init__(self, path: str | Path):
        self._db = open_shared_db(Path(path), SCHEMA)

    def create(self, transport: str, target: dict[str, Any], requests: list[tuple[str, str]]) -> str:
        """Record a batch and its (key, request JSON) pairs in one transaction; returns its id."""
        batch_id = uuid.uuid4().hex
        now = time.time()
        with self._transaction():
            self._db.execute(
                "INSERT INTO batches (id, transport, target, state, counts, n_requests, created, updated)"
                " VALUES (?, ?, ?, 'new', '{}', ?, ?, ?)",
                (batch_id, transport, target_text(target), len(requests), now, now),
            )
            self._db.executemany(
                "INSERT INTO batch_requests (batch, key, request) VALUES (?, ?, ?)",
                ((batch_id, key, request) for key, request in requests),
            )
        return batch_id

    def update(self, batch_id: str, **fields: Any) -> None:
        """Set columns of a batch (counts and info as JSON), committed at once."""
        for name in ("counts", "info"):
            if name in fields:
                fields[name] = json.dumps(fields[name])
        columns = ", ".join(f"{name} = ?" for name in fields)
        self._db.execute(
            f"UPDATE batches SET {columns}, updated = ? WHERE id = ?", (*fields.values(), time.time(), batch_id)
        )

    def get(self, batch_id: str) -> BatchRecord:
        row = self._db.execute(
            "SELECT id, transport, target, state, remote_id, input_file, status, counts, info, n_requests, created"
            " FROM batches WHERE id = ?", (batch_id,),
        ).fetchone()
        if row is None:
            raise KeyError(batch_id)
        return BatchRecord(
            id=row[0], transport=row[1], target=json.loads(row[2]), state=row[3], remote_id=row[4],
            input_file=row[5], status=row[6], counts=json.loads(row[7] or "{}"), info=json.loads(row[8] or "{}"),
            n_requests=row[9], created=row[10],
        )

    def unfinished_for(self, keys: Iterable[str], targets: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
        """Batches not yet read that hold any of `keys` and go to one of `targets`: id -> keys."""
        wanted = {target_text(t) for t in targets}
        found: dict[str, set[str]] = {}
        chunk: list[str] = []

        def lookup(part: list[str]) -> None:
            marks = ",".join("?" * len(part))
            rows = self._db.execute(
                "SELECT r.batch, r.key, b.target FROM batch_requests r JOIN batches b ON b.id = r.batch"
                f" WHERE b.state != 'done' AND r.key IN ({marks})", part,
            )
            for batch_id, key, target in rows:
                if target in wanted:
                    found.setdefault(batch_id, set()).add(key)

        for key in keys:
            chunk.append(key)
            if len(chunk) == 500:
                lookup(chunk)
                chunk = []
        if chunk:
            lookup(chunk)
        return found

    def requests(self, batch_id: str) -> Iterator[tuple[str, str]]:
        """(key, request JSON) of a batch, streamed in the order they were recorded."""
        yield from self._db.execute(
            "SELECT key, request FROM batch_requests WHERE batch = ? ORDER BY rowid", (batch_id,)
        )

    def request(self, batch_id: str, key: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT request FROM batch_requests WHERE batch = ? AND key = ?", (batch_id, key)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def set_outcomes(self, batch_id: str, outcomes: Iterable[tuple[str, str]]) -> None:
        """Record what became of requests of a batch, (key, outcome) pairs, in one transaction."""
        with self._transaction():
            self._db.executemany(
                "UPDATE batch_requests SET outcome = ? WHERE batch = ? AND key = ?",
                ((outcome, batch_id, key) for key, outcome in outcomes),
            )

    def outcomes(self, batch_id: str) -> dict[str, str | None]:
        rows = self._db.execute("SELECT key, outcome FROM batch_requests WHERE batch = ?", (batch_id,))
        return dict(rows)

    def batches(self, state: str | None = None) -> list[BatchRecord]:
        query = "SELECT id FROM batches" + (" WHERE state = ?" if state else "") + " ORDER BY created"
        return [self.get(row[0]) for row in self._db.execute(query, (state,) if state else ())]

    def _transaction(self) -> Any:
        db = self._db

        class Transaction:
            def __enter__(self) -> None:
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type: object, *rest: object) -> None:
                db.execute("ROLLBACK" if exc_type else "COMMIT")

        return Transaction()

    def close(self) -> None:
        self._db.close()


# --------------------------------------------------------------------------- transports


TERMINAL = ("completed", "expired", "cancelled", "failed")


@dataclass
class Poll:
    """What a transport learned about a batch on one look."""

    status: str  # the provider's words: validating, in_progress, finalizing, completed, expired, ...
    counts: dict[str, int]  # total / completed / failed, as far as known
    info: dict[str, Any] = field(default_factory=dict)  # where the results are (file ids, paths)
    problem: str | None = None  # the whole batch failed: why (a job-level error, after reading)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class BatchTransport(Protocol):
    """Where a round's batch files go: a provider's Files + Batches API, or a local command."""

    name: str
    max_poll_delay: float  # seconds; a cap on the runner's poll backoff

    def target(self) -> dict[str, Any]:
        """Where batches go, without secrets: recorded with each batch, and how it is found again."""
        ...

    async def submit(self, record: BatchRecord, store: BatchStore, write_input: Callable[[Path], int]) -> None:
        """Take a `new` or `uploaded` batch to `submitted`, recording each step in `store` at once."""
        ...

    async def poll(self, record: BatchRecord) -> Poll: ...

    def results(self, record: BatchRecord) -> AsyncIterator[dict[str, Any]]:
        """Every line of the output and error files (read more than once if interrupted)."""
        ...

    async def cleanup(self, record: BatchRecord) -> None:
        """Remove what the batch left behind once its results are in the cache (best effort)."""
        ...

    async def aclose(self) -> None: ...
