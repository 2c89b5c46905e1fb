"""Write pair datasets so that a crash loses nothing and a re-run resumes.

While a job runs, every finished pair is appended to a JSONL working file and flushed at once
(kill -9 keeps it). A re-run reads that file back and skips the ids it holds. At the end, the
dataset is written in input order, atomically (temp file + rename), as JSONL or Parquet.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# TRL's preference columns first, then provenance.
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")


def working_path(output: Path) -> Path:
    """Where rows stream while the job runs: the output itself for JSONL, a sidecar otherwise."""
    return output if output.suffix == ".jsonl" else output.with_name(output.name + ".rows.jsonl")


def sidecar(output: Path, kind: str) -> Path:
    """`pairs.jsonl` -> `pairs.failures.jsonl`, `pairs.summary.json`, ..."""
    stem = output.name.split(".")[0]
    suffix = ".json" if kind == "summary" else ".jsonl"
    return output.with_name(f"{stem}.{kind}{suffix}")


def write_summary(output: Path, summary: dict[str, Any]) -> Path:
    """The job's closing summary as `<stem>.summary.json` beside its output; returns that path."""
    path = sidecar(output, "summary")
    path.write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    return path


def read_jsonl_tolerant(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of a JSONL file, and the byte length of its valid part.

    A file cut off mid-line by kill -9 ends in a partial line: the rows before it are kept and
    the byte offset where the damage starts is returned so the caller can truncate there.
    """
    rows: list[dict[str, Any]] = []
    good_bytes = 0
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break  # a partial last line
            try:
                row = json.loads(raw)
            except json.JSONDecodeError:
                break
            rows.append(row)
            good_bytes += len(raw)
    return rows, good_bytes


class PairWriter:
    """Append-only pair sink with resume; `finalize` writes the ordered dataset."""

    def __init__(self, output: str | Path):
        self.output = Path(output)
        if self.output.suffix not in (".jsonl", ".parquet"):
            raise ValueError(f"output {self.output}: use a .jsonl or .parquet file name")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.path = working_path(self.output)
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            rows, good = read_jsonl_tolerant(self.path)
            if good < self.path.stat().st_size:
                with self.path.open("r+b") as fh:
                    fh.truncate(good)
            self.rows = {r["id"]: r for r in rows}
        elif self.output.suffix == ".parquet" and self.output.exists():
            import pyarrow.parquet as pq

            self.rows = {r["id"]: r for r in pq.read_table(self.output).to_pylist()}
            self._rewrite_working(self.rows.values())
        self._fh = self.path.open("a", encoding="utf-8")

    @property
    def done_ids(self) -> set[str]:
        return set(self.rows)

    def write(self, row: dict[str, Any]) -> None:
        if row["id"] in self.rows:
            raise ValueError(f"pair id {row['id']!r} written twice")
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()
        self.rows[row["id"]] = row

    def finalize(self, order: Iterable[str] | None = None) -> Path:
        """Write the dataset (rows in `order`, then any others) atomically; return its path."""
        self._fh.close()
        ordered = _ordered(self.rows, order)
        if self.output.suffix == ".jsonl":
            atomic_write_jsonl(self.output, ordered)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            tmp = self.output.with_name(self.output.name + ".tmp")
            pq.write_table(pa.Table.from_pylist(ordered), tmp)
            os.replace(tmp, self.output)
            self.path.unlink(missing_ok=True)
        return self.output

    def close(self) -> None:
        self._fh.close()

    def _rewrite_working(self, rows: Iterable[dict[str, Any]]) -> None:
        atomic_write_jsonl(self.path, rows)


def _ordered(rows: dict[str, dict[str, Any]], order: Iterable[str] | None) -> list[dict[str, Any]]:
    out, seen = [], set()
    for rid in order or ():
        if rid in rows and rid not in seen:
            out.append(rows[rid])
            seen.add(rid)
    out.extend(r for rid, r in rows.items() if rid not in seen)
    return out


def atomic_write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FailureLog:
    """Append-only side file (failures, filtered pairs); created only when there is a row."""

    def __init__(self, path: Path):
        self.path = path
        self._fh: Any = None
        self.count = 0

    def write(self, row: dict[str, Any]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()
        self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
