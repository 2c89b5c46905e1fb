"""Read prompt rows from JSONL, JSON, Parquet, CSV or a saved Hugging Face dataset.

Every row becomes a plain dict with an `id`. A field mapping renames the user's columns to the
task's field names, so a file never has to be rewritten to fit a task.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
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
    text = str(path)
    if text.startswith(SAMPLE_PREFIX):
        path = sample_path(text[len(SAMPLE_PREFIX) :])
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        return _read_saved_dataset(path, split)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))
    raise InputError(f"{path}: unsupported input format {suffix!r} (use .jsonl, .json, .parquet, .csv or a saved dataset folder)")


def read_located_rows(path: str | Path, what: str = "pair file") -> list[tuple[str, dict[str, Any]]]:
    """(location, row) for every row: "FILE, line N" for JSONL, "FILE, row I" for other formats.

    The location is what an error about the row names; `what` names the file when it is missing.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.is_file() and path.suffix.lower() in (".jsonl", ".ndjson"):
        return [(f"{path}, line {lineno}", row) for lineno, row in read_jsonl_numbered(path)]
    return [(f"{path}, row {i}", row) for i, row in enumerate(read_rows(path))]


def get_field(row: dict[str, Any], name: str) -> Any:
    """`row[name]`, where a dotted name reaches into nested dicts (`inputs.question`); KeyError if absent."""
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(name)
        value = value[part]
    return value


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) for every non-blank line; a bad line is an InputError naming it."""
    rows = []
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
            rows.append((lineno, row))
    return rows


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


def _read_saved_dataset(path: Path, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise InputError(f"{path}: a folder, but not a dataset saved with save_to_disk") from exc
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise InputError(f"{path}: no split {split!r} (has {', '.join(ds)})")
        ds = ds[split]
    return ds.to_list()


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
    rows: list[dict[str, Any]], mapping: Mapping[str, str], id_field: str = "id", source: str = "input"
) -> list[dict[str, Any]]:
    """Rename columns to task fields and give every row an `id` (its own, or `row-<index>`)."""
    out = []
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        new = dict(row)
        for task_field, column in mapping.items():
            if column not in row:
                raise InputError(f"{source}, row {index}: no column {column!r} (mapped to field {task_field!r})")
            new[task_field] = row[column]
        new["id"] = row_id(row, index, id_field)
        if new["id"] in seen:
            raise InputError(f"{source}, row {index}: id {new['id']!r} repeats row {seen[new['id']]}")
        seen[new["id"]] = index
        new["_index"] = index
        out.append(new)
    return out
