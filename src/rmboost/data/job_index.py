"""A generation job's bookkeeping, kept on disk so that memory does not grow with the job.

Three tables in a private SQLite database (SQLite's own temporary file: deleted when closed,
and by the OS when the process dies; its page cache is capped, so its memory is constant):

* `inputs`: the id of the prompt at each input position (after --limit, before --shard),
  filled by the validating pass; a repeated id is found by the UNIQUE constraint.
* `lines`: where each pair sits in the working file (byte offset and length, in order of first
  appearance) and its label; what resume needs, and all the final ordered copy needs.
* `settled`: ids whose pair was decided without a line in the output (removed by the filter).

Nothing here is durable: the working file is the record, and every run rebuilds the index
from it. The passes that fill it read every row of a file (a million, on a large resume), so
they go `SCAN_CHUNK` rows at a time and hand the event loop a turn between chunks (`in_chunks`):
the progress line, the batch runner and Ctrl-C are not held up for the length of a scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TypeVar

CACHE_KIB = 2_048  # SQLite's page cache for this index (its default); the rest stays on disk
SCAN_CHUNK = 2_000  # rows a scan reads between two turns of the event loop

T = TypeVar("T")


async def in_chunks(rows: Iterable[T], size: int = SCAN_CHUNK) -> AsyncIterator[list[T]]:
    """`rows` in lists of `size`, streamed, the event loop getting a turn after each list."""
    it = iter(rows)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
        await asyncio.sleep(0)


class JobIndex:
    def __init__(self) -> None:
        self._db = sqlite3.connect("", isolation_level=None)  # "": a private temporary database
        for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{CACHE_KIB}", "temp_store=FILE"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.executescript(
            "CREATE TABLE inputs (pos INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE);"
            "CREATE TABLE lines (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,"
            " offset INTEGER NOT NULL, length INTEGER NOT NULL, label TEXT);"
            "CREATE TABLE settled (id TEXT PRIMARY KEY) WITHOUT ROWID;"
        )

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction around many writes (a bulk load is far faster that way)."""
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # --- input positions

    def add_inputs(self, rows: Iterable[tuple[int, str]]) -> tuple[int, str, int] | None:
        """Record (position, id) pairs, streamed; stop at an id seen before: (position, id, first position)."""
        last: tuple[int, str] | None = None

        def tracked() -> Iterator[tuple[int, str]]:
            nonlocal last
            for row in rows:
                last = row  # the row being inserted when a constraint fails
                yield row

        try:
            with self.batch():
                self._db.executemany("INSERT INTO inputs (pos, id) VALUES (?, ?)", tracked())
        except sqlite3.IntegrityError:
            assert last is not None
            return last[0], last[1], int(self._one("SELECT pos FROM inputs WHERE id = ?", last[1]))
        return None

    def set_inputs(self, ids: Iterable[str]) -> None:
        """Replace the input order by `ids` (a repeated id keeps its first position)."""
        with self.batch():
            self._db.execute("DELETE FROM inputs")
            self._db.executemany("INSERT OR IGNORE INTO inputs (id) VALUES (?)", ((i,) for i in ids))

    def input_id(self, pos: int) -> str | None:
        return self._one("SELECT id FROM inputs WHERE pos = ?", pos)

    def count_inputs(self, shard: tuple[int, int], state: str = "all") -> int:
        """Input positions of shard (k, N): `all`, those with a pair (`paired`) or still to do (`todo`)."""
        k, n = shard
        where = {
            "all": "",
            "paired": " AND EXISTS (SELECT 1 FROM lines l WHERE l.id = i.id)",
            "todo": " AND NOT EXISTS (SELECT 1 FROM lines l WHERE l.id = i.id)"
                    " AND NOT EXISTS (SELECT 1 FROM settled s WHERE s.id = i.id)",
        }[state]
        return int(self._one(f"SELECT COUNT(*) FROM inputs i WHERE i.pos % ? = ?{where}", n, k - 1))

    # --- lines of the working file

    def add_lines(self, lines: Iterable[tuple[str, int, int, str | None]]) -> None:
        """Record (id, offset, length, label) of pairs' lines, streamed; a later line for an id
        replaces the earlier one but keeps its place."""
        self._db.executemany(
            "INSERT INTO lines (id, offset, length, label) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE"
            " SET offset = excluded.offset, length = excluded.length, label = excluded.label",
            lines,
        )

    def has_line(self, row_id: str) -> bool:
        return self._one("SELECT 1 FROM lines WHERE id = ?", row_id) is not None

    def line_count(self) -> int:
        return int(self._one("SELECT COUNT(*) FROM lines"))

    def label_counts(self) -> dict[str, int]:
        """Pairs per label, labels in order of first appearance (as a Counter over the rows)."""
        rows = self._db.execute(
            "SELECT label, COUNT(*) FROM lines WHERE label IS NOT NULL GROUP BY label ORDER BY MIN(seq)"
        )
        return {label: count for label, count in rows}

    def ordered_spans(self) -> Iterator[tuple[int, int]]:
        """(offset, length) of every line: by input position, then those of no input in file order."""
        yield from self._db.execute(
            "SELECT l.offset, l.length FROM inputs i JOIN lines l ON l.id = i.id ORDER BY i.pos"
        )
        yield from self._db.execute(
            "SELECT offset, length FROM lines WHERE id NOT IN (SELECT id FROM inputs) ORDER BY seq"
        )

    # --- settled ids and the question resume asks

    def add_settled(self, ids: Iterable[str]) -> None:
        with self.batch():
            self._db.executemany("INSERT OR IGNORE INTO settled (id) VALUES (?)", ((i,) for i in ids))

    def is_done(self, row_id: str) -> bool:
        """Whether this prompt needs no more work: its pair is in the output, or it was settled."""
        return self.has_line(row_id) or self._one("SELECT 1 FROM settled WHERE id = ?", row_id) is not None

    def _one(self, sql: str, *args: object) -> object:
        row = self._db.execute(sql, args).fetchone()
        return None if row is None else row[0]
