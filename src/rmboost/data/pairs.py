"""Write pair datasets so that a crash loses nothing and a re-run resumes, in constant memory.

While a job runs, every finished pair is appended to a JSONL working file and flushed at once
(kill -9 keeps it). A re-run reads that file back once, noting each pair's id and byte offset
in the job's index (rows are not kept), and skips the ids it holds. At the end the dataset is
written in input order by copying those lines in order, atomically (temp file + rename); a
file already in order is left as it is. Parquet output is streamed too: written at the end from
the working file in row groups (`write_parquet`), its columns the keys of every row; a re-run
whose output is a finished Parquet file turns it back into the working file a batch at a time.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from rmboost.data.inputs import InputError, iter_located_rows, iter_rows
from rmboost.data.job_index import SCAN_CHUNK, JobIndex
from rmboost.data.output_lock import output_stem
from rmboost.data.parquet import ColumnClash, write_parquet

# TRL's preference columns first, then provenance.
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")


def working_path(output: Path) -> Path:
    """Where rows stream while the job runs: the output itself for JSONL, a sidecar otherwise."""
    return output if output.suffix == ".jsonl" else output.with_name(output.name + ".rows.jsonl")


def sidecar(output: Path, kind: str) -> Path:
    """`pairs.jsonl` -> `pairs.failures.jsonl`, `pairs.summary.json`, ... (`output_stem`: `pairs.a.jsonl`
    -> `pairs.a.summary.json`)."""
    stem = output_stem(output)
    suffix = ".json" if kind == "summary" else ".jsonl"
    return output.with_name(f"{stem}.{kind}{suffix}")


def write_summary(output: Path, summary: dict[str, Any] | str) -> Path:
    """The job's closing summary as `<stem>.summary.json` beside its output, atomically (never a
    half summary); returns that path. A dict is written as indented JSON, a str (a summary's own
    `to_json()`) as it is."""
    path = sidecar(output, "summary")
    atomic_write_json(path, summary)
    return path


def atomic_write_json(path: Path, value: Any, indent: int = 2) -> None:
    """`value` as indented JSON (a str: already JSON, written as it is), atomically: a kill leaves
    the old file or the new one, never half of one that a re-run would fail to read."""
    text = value if isinstance(value, str) else json.dumps(value, indent=indent, ensure_ascii=False)
    atomic_write_bytes(path, lambda fh: fh.write((text + "\n").encode("utf-8")))


def iter_jsonl_tolerant(path: Path) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(byte offset, byte length, row) of each whole line of a JSONL file, streamed.

    A file cut off mid-line by kill -9 ends in a partial line: reading stops before it (and
    before any line that is not valid JSON), so offset + length of the last row yielded is
    where the damage starts and the caller can truncate there.
    """
    offset = 0
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return  # a partial last line
            try:
                row = json.loads(raw)
            except json.JSONDecodeError:
                return
            yield offset, len(raw), row
            offset += len(raw)


def read_jsonl_tolerant(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of a JSONL file, and the byte length of its valid part (see `iter_jsonl_tolerant`)."""
    rows: list[dict[str, Any]] = []
    good_bytes = 0
    for offset, length, row in iter_jsonl_tolerant(path):
        rows.append(row)
        good_bytes = offset + length
    return rows, good_bytes


class NotTheOutput(ValueError):
    """The output file holds something other than a job's pairs (the input, another file):
    nothing is written to it, and there is nothing there to resume."""


def input_written_over(outputs: Iterable[str | Path], inputs: Iterable[str | Path]) -> Path | None:
    """The first of `outputs` that is one of the `inputs` (the same file, by resolved path), if any:
    a command must not write over a file it reads."""
    read = {Path(p).resolve() for p in inputs if Path(p).exists()}
    return next((Path(p) for p in outputs if Path(p).exists() and Path(p).resolve() in read), None)


def check_output_name(output: Path) -> None:
    if output.suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"output {output}: use a .jsonl or .parquet file name")


class PairWriter:
    """Append-only pair sink with resume; `finalize` writes the ordered dataset.

    What it holds is the job's index (`index`, on disk) and the working file's handle: never
    the pairs. Pass the job's index to order the output by its inputs; without one it makes
    its own.
    """

    def __init__(self, output: str | Path, index: JobIndex | None = None, *, scan: bool = True):
        """Index the pairs the output already holds; the working file is opened (created) at the
        first write, so a job that stops before writing anything leaves no file behind.

        With `scan=False` the indexing is left to `await scan()`, which hands the event loop a
        turn every SCAN_CHUNK lines (an async job resuming a million pairs); write nothing before it.
        """
        self.output = Path(output)
        check_output_name(self.output)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.path = working_path(self.output)
        self.index = index if index is not None else JobIndex()
        self._owns_index = index is None
        self._size = 0
        self._fh: BinaryIO | None = None
        # A finished Parquet output with no working file is turned back into one first, by the
        # scan (a record batch at a time).
        self._from_parquet = not self.path.exists() and self.output.suffix == ".parquet" and self.output.exists()
        if scan:
            for _ in self._scan():
                pass

    async def scan(self) -> None:
        """Index every whole line of the working file (cut off a torn tail), yielding to the event loop."""
        steps = self._scan()
        try:
            for _ in steps:
                await asyncio.sleep(0)
        finally:
            steps.close()

    def _scan(self) -> Iterator[None]:
        """Index the working file's lines a chunk (one transaction) at a time, yielding after
        each; at the end cut off a torn tail and note the good size."""

        def lines() -> Iterator[tuple[str, int, int, str | None]]:
            for number, (offset, length, row) in enumerate(iter_jsonl_tolerant(self.path), 1):
                if not isinstance(row, dict) or "id" not in row:
                    raise NotTheOutput(f"{self.path}, line {number}: the pair has no 'id'")
                if "chosen" not in row or "rejected" not in row:  # a prompt file given as --output, say
                    raise NotTheOutput(f"{self.path}, line {number} (id {row['id']!r}): not a preference pair (no "
                                     "'chosen'/'rejected'); the output holds the job's finished pairs: is it the right file?")
                yield row["id"], offset, length, _label(row)

        if self._from_parquet:
            yield from self._unpack_parquet()
            self._from_parquet = False
        good = 0
        if not self.path.exists():
            return
        rows = lines()
        count = 0
        while chunk := list(itertools.islice(rows, SCAN_CHUNK)):
            with self.index.batch():
                self.index.add_lines(chunk)
            _, offset, length, _ = chunk[-1]
            good = offset + length
            count += len(chunk)
            yield
        if good < self.path.stat().st_size:
            with self.path.open("r+b") as fh:
                fh.seek(good)
                if _has_newline(fh):  # a torn write leaves part of one line; this is a bad line, not a tear
                    raise NotTheOutput(f"{self.path}, line {count + 1}: not valid JSON (a whole line, not one cut off by a "
                                     "crash); the file is left as it is: is it the job's output?")
                fh.truncate(good)
        self._size = good

    def _unpack_parquet(self) -> Iterator[None]:
        """Write the finished Parquet output back as the working file, SCAN_CHUNK rows (one
        record batch) at a time, yielding after each; renamed into place once whole."""
        import pyarrow.parquet as pq

        tmp = self.path.with_name(self.path.name + ".tmp")  # a fixed name: the output's lock is held
        try:
            with tmp.open("wb") as fh:
                for batch in pq.ParquetFile(self.output).iter_batches(batch_size=SCAN_CHUNK):
                    for row in batch.to_pylist():
                        fh.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
                    yield
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def __contains__(self, row_id: str) -> bool:
        return self.index.has_line(row_id)

    def __len__(self) -> int:
        return self.index.line_count()

    def write(self, row: dict[str, Any]) -> None:
        if row["id"] in self:
            raise ValueError(f"pair id {row['id']!r} written twice")
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        assert not self._from_parquet, "scan() before writing"
        if self._fh is None:  # O_APPEND: writes go to the end, wherever the scan cut it
            self._fh = self.path.open("ab")
        self._fh.write(line)
        self._fh.flush()
        self.index.add_lines([(row["id"], self._size, len(line), _label(row))])
        self._size += len(line)

    def finalize(self, order: Iterable[str] | None = None) -> Path:
        """Write the dataset atomically and return its path: pairs in input order, then any others.

        The input order is the index's (`order`, if given, replaces it).
        """
        self.close_file()
        self.path.touch()  # a finished job without a pair still has its (empty) dataset
        if order is not None:
            self.index.set_inputs(order)
        if self.output.suffix == ".jsonl":
            if not self._in_order():
                with self.path.open("rb") as src:
                    atomic_write_bytes(self.output, lambda dst: _copy_spans(src, dst, self.index.ordered_spans()))
        else:
            tmp = self.output.with_name(self.output.name + ".tmp")
            try:
                with self.path.open("rb") as src:
                    write_parquet(tmp, lambda: (_read_span(src, off, n) for off, n in self.index.ordered_spans()))
            except BaseException as exc:
                tmp.unlink(missing_ok=True)
                if isinstance(exc, ColumnClash):
                    raise ColumnClash(f"{self.output}: {exc}") from None
                raise
            os.replace(tmp, self.output)
            self.path.unlink(missing_ok=True)
        return self.output

    def close_file(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        self.close_file()
        if self._owns_index:
            self.index.close()

    def _in_order(self) -> bool:
        """Whether the working file already is the ordered dataset, byte for byte."""
        end = 0
        for offset, length in self.index.ordered_spans():
            if offset != end:
                return False
            end += length
        return end == self._size


def _has_newline(fh: BinaryIO, chunk: int = 1 << 20) -> bool:
    """Whether a newline follows the file's position (read a chunk at a time)."""
    while data := fh.read(chunk):
        if b"\n" in data:
            return True
    return False


def _label(row: dict[str, Any]) -> str | None:
    label = row.get("label")
    return label if isinstance(label, str) and label else None


def _read_span(fh: BinaryIO, offset: int, length: int) -> bytes:
    fh.seek(offset)
    return fh.read(length)


def _copy_spans(src: BinaryIO, dst: BinaryIO, spans: Iterable[tuple[int, int]]) -> None:
    """Copy byte ranges of `src` to `dst` in the given order, adjacent ranges as one copy."""
    start = end = -1
    for offset, length in spans:
        if offset == end:
            end += length
            continue
        if start >= 0:
            _copy_range(src, dst, start, end)
        start, end = offset, offset + length
    if start >= 0:
        _copy_range(src, dst, start, end)


def _copy_range(src: BinaryIO, dst: BinaryIO, start: int, end: int, chunk: int = 1 << 20) -> None:
    src.seek(start)
    while start < end:
        data = src.read(min(chunk, end - start))
        if not data:
            raise ValueError(f"{src.name}: shorter than its index says (at byte {start})")
        dst.write(data)
        start += len(data)


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call `write(binary file)` on a temp file beside `path`, then rename it over `path`.

    A file replaced keeps its permissions.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StagedRows:
    """Rows streamed to a temporary file beside `path`, written over `path` by `prepare()` then
    `publish()` (apart, so that several files are all written before any is renamed).

    A `.jsonl` path stages its rows in `<name>.tmp`, renamed into place. A `.parquet` path
    stages them as JSON lines in `<name>.rows.tmp`, and `prepare()` writes the Parquet file from
    them (`write_parquet`, streamed) to `<name>.tmp` before the rename. `path` is thus never a
    half file; `discard()` (any failure) removes the temporary ones. The names are fixed, so the
    caller must hold the output's lock (data/output_lock.py); files left by kill -9 are simply
    overwritten by the next run. A file replaced keeps its permissions.
    """

    def __init__(self, path: Path):
        check_output_name(path)
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.rows = self.tmp if path.suffix == ".jsonl" else path.with_name(path.name + ".rows.tmp")
        self.count = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.rows.open("wb")

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        self.count += 1

    def prepare(self) -> None:
        """Everything but the rename: the slow part, and the one that can fail (a Parquet column clash)."""
        self._fh.close()
        if self.rows != self.tmp:
            with self.rows.open("rb") as src:

                def lines() -> Iterator[bytes]:
                    src.seek(0)
                    return iter(src.readline, b"")

                try:
                    write_parquet(self.tmp, lines)
                except ColumnClash as exc:
                    raise ColumnClash(f"{self.path}: {exc}") from None
            self.rows.unlink()

    def publish(self) -> Path:
        """Rename the prepared file over `path`."""
        if self.path.exists():
            os.chmod(self.tmp, self.path.stat().st_mode & 0o7777)
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self._fh.close()
        self.tmp.unlink(missing_ok=True)
        self.rows.unlink(missing_ok=True)


def atomic_write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write `rows` (any iterable, consumed as a stream) as JSONL, atomically."""

    def write(fh: BinaryIO) -> None:
        for row in rows:
            fh.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))

    atomic_write_bytes(path, write)


def merge_pair_files(inputs: list[Path], output: Path) -> int:
    """Concatenate pair files into one JSONL file, streamed: the ids are checked first (an id
    in two files is an error naming both, and nothing is written), then the rows are copied."""
    if not inputs:
        raise ValueError("give the shard files to merge")
    if output.suffix != ".jsonl":
        raise ValueError(f"--output {output}: merge writes JSONL; use a .jsonl name")
    if input_written_over([output], inputs):
        raise ValueError(f"--output {output} is one of the inputs: write the merged pairs to a new file")
    starts: list[int] = []  # the position of each file's first row

    def ids() -> Iterator[tuple[int, str]]:
        count = 0
        for path in inputs:
            starts.append(count)
            for where, row in iter_located_rows(path):
                if "id" not in row:
                    raise InputError(f"{where}: no 'id' (shards of one job hold ids)")
                yield count, row["id"]
                count += 1

    index = JobIndex()
    try:
        repeat = index.add_inputs(ids())
        if repeat is not None:
            pos, row_id, first = repeat
            earlier, later = (inputs[bisect.bisect_right(starts, p) - 1] for p in (first, pos))
            raise ValueError(f"id {row_id!r} is in both {earlier} and {later}")
        count = index.count_inputs((1, 1))
    finally:
        index.close()
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(output, (row for path in inputs for row in iter_rows(path)))
    return count


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
