"""Read prompt rows from JSONL, JSON, Parquet, CSV or a saved Hugging Face dataset.

Every row becomes a plain dict with an `id`. A field mapping renames the user's columns to the
task's field names, so a file never has to be rewritten to fit a task.

`iter_rows` streams: JSONL line by line, Parquet one record batch at a time, CSV/TSV row by row,
a saved dataset (memory-mapped Arrow) in batches. A `.json` file is one JSON document and is
parsed whole. `read_rows` is the same rows as a list, for inputs small enough to hold.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

SAMPLE_PREFIX = "sample:"


class InputError(ValueError):
    """The input is missing or malformed; the message names the file and, where known, the row."""


def sample_path(name: str) -> Path:
    """A prompt file shipped inside the package (see data/samples/NOTICE.md)."""
    from importlib import resources

    path = Path(str(resources.files("rmboost.data") / "samples" / f"{name}.jsonl"))
    if not path.is_file():
        raise InputError(f"no shipped sample named {name!r}")
    return path


def read_rows(path: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """All rows of a file or saved dataset, as dicts, in file order."""
    return list(iter_rows(path, split))


def resolve_input(path: str | Path) -> Path:
    """The file a path names: `sample:NAME` is a shipped sample, anything else the path itself."""
    text = str(path)
    return sample_path(text[len(SAMPLE_PREFIX) :]) if text.startswith(SAMPLE_PREFIX) else Path(path)


def iter_rows(path: str | Path, split: str = "train") -> Iterator[dict[str, Any]]:
    """The rows of a file or saved dataset, in file order, read as a stream (see the module doc)."""
    path = resolve_input(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        return _iter_saved_dataset(path, split)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return (row for _, row in read_jsonl_numbered(path))
    if suffix == ".json":
        return iter(_read_json(path))
    if suffix == ".parquet":
        return _iter_parquet(path)
    if suffix in (".csv", ".tsv"):
        return _iter_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    raise InputError(f"{path}: unsupported input format {suffix!r} (use .jsonl, .json, .parquet, .csv or a saved dataset folder)")


def read_located_rows(path: str | Path, what: str = "pair file") -> list[tuple[str, dict[str, Any]]]:
    """(location, row) for every row: "FILE, line N" for JSONL (the physical line), "FILE, row N"
    for other formats (counted from 1 too).

    The location is what an error about the row names; `what` names the file when it is missing.
    """
    return list(iter_located_rows(path, what))


def iter_located_rows(
    path: str | Path, what: str = "pair file", split: str = "train",
) -> Iterator[tuple[str, dict[str, Any]]]:
    """`read_located_rows` as a stream: one row read at a time (a missing file fails at once).
    A `sample:NAME` input is named as given; `split` picks the split of a saved DatasetDict."""
    name = str(path)
    path = resolve_input(path)
    if not name.startswith(SAMPLE_PREFIX):
        name = str(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.is_file() and path.suffix.lower() in (".jsonl", ".ndjson"):
        return ((f"{name}, line {lineno}", row) for lineno, row in read_jsonl_numbered(path))
    return located(iter_rows(path, split), name)


def located(rows: Iterable[dict[str, Any]], name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(f"{name}, row N", row) with N counted from 1: rows whose lines are not known."""
    return ((f"{name}, row {n}", row) for n, row in enumerate(rows, 1))


def get_field(row: dict[str, Any], name: str) -> Any:
    """`row[name]`, where a dotted name reaches into nested dicts (`inputs.question`); KeyError if absent."""
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(name)
        value = value[part]
    return value


def read_jsonl_numbered(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for every non-blank line, streamed; a bad line is an InputError naming it."""
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise InputError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def _iter_parquet(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        yield from batch.to_pylist()


def _iter_csv(path: Path, delimiter: str) -> Iterator[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as fh:
        yield from csv.DictReader(fh, delimiter=delimiter)


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    if isinstance(data, dict):  # {"data": [...]} or a column-oriented dict
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(data) == 1 and lists:
            data = lists[0]
        elif lists and len(lists) == len(data) and len({len(v) for v in lists}) == 1:
            data = [dict(zip(data, vals, strict=True)) for vals in zip(*data.values(), strict=True)]
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a list of objects")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise InputError(f"{path}, item {i}: expected an object, got {type(row).__name__}")
    return data


def _iter_saved_dataset(path: Path, split: str) -> Iterator[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise InputError(f"{path}: a folder, but not a dataset saved with save_to_disk") from exc
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise InputError(f"{path}: no split {split!r} (has {', '.join(ds)})")
        ds = ds[split]
    return _batched_rows(ds)


def _batched_rows(ds: Any) -> Iterator[dict[str, Any]]:
    for batch in ds.with_format("arrow").iter(batch_size=1024):  # Arrow slices of the mapped file
        yield from batch.to_pylist()


def row_id(row: dict[str, Any], index: int, id_field: str = "id") -> str:
    """A row's id: its own (as text), or `row-<index>` when it has none."""
    raw = row.get(id_field)
    return str(raw) if raw not in (None, "") else f"row-{index}"


def parse_field_map(pairs: list[str] | None) -> dict[str, str]:
    """['question=q', 'passages=ctx'] -> {'question': 'q', 'passages': 'ctx'} (task field = column)."""
    mapping: dict[str, str] = {}
    for item in pairs or []:
        task_field, sep, column = item.partition("=")
        if not sep or not task_field.strip() or not column.strip():
            raise InputError(f"--field {item!r}: expected TASK_FIELD=COLUMN")
        mapping[task_field.strip()] = column.strip()
    return mapping


def apply_field_map(
    rows: Iterable[dict[str, Any]], mapping: Mapping[str, str], id_field: str = "id", source: str = "input"
) -> list[dict[str, Any]]:
    """Rename columns to task fields and give every row an `id` (its own, or `row-<index>`)."""
    return list(unique_ids(map_fields(located(rows, source), mapping, id_field)))


def unique_ids(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Pass mapped rows through, failing on an id seen before (holds every id: for small inputs)."""
    seen: dict[str, str] = {}
    for row in rows:
        if row["id"] in seen:
            raise repeated_id(row["_where"], row["id"], seen[row["id"]])
        seen[row["id"]] = row["_where"]
        yield row


def map_fields(
    rows: Iterable[tuple[str, dict[str, Any]]], mapping: Mapping[str, str], id_field: str = "id",
) -> Iterator[dict[str, Any]]:
    """`apply_field_map` as a stream over located rows (`iter_located_rows`), without the check
    that ids are unique (see `unique_ids`). Each row gets `_index` (its position, from 0: the
    default id `row-<index>`) and `_where` (where an error about it points)."""
    for index, (where, row) in enumerate(rows):
        new = dict(row)
        for task_field, column in mapping.items():
            if column not in row:
                raise InputError(f"{where}: no column {column!r} (mapped to field {task_field!r})")
            new[task_field] = row[column]
        new["id"] = row_id(row, index, id_field)
        new["_index"] = index
        new["_where"] = where
        yield new


def repeated_id(where: str, rid: str, first: str) -> InputError:
    """The error for the row at `where` whose id the row at `first` already has (same file)."""
    return InputError(f"{where}: id {rid!r} repeats {first.rpartition(', ')[2]}")
