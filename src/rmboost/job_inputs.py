"""A generation job's prompts: where they come from, and the job's two passes over them.

`PromptSource` declares the input options (`GenerateConfig` reuses them). The input is read as
a stream, twice, so that memory does not grow with the job:

1. `index_inputs`: before any call, every row (after --limit) is validated and its id recorded
   by input position in the job's on-disk index (data/job_index.py); a repeated id fails there.
2. `todo_rows`: this shard's rows that have no pair and no settled decision yet, for the workers.
   A row whose id is not the one recorded at its position means the file changed in between.

Both are async and hand the event loop a turn every SCAN_CHUNK rows they read.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rmboost.data import qa_feedback
from rmboost.data.inputs import (
    InputError,
    iter_located_rows,
    located,
    map_fields,
    parse_field_map,
    repeated_id,
    resolve_input,
    unique_ids,
)
from rmboost.data.job_index import SCAN_CHUNK, JobIndex, in_chunks
from rmboost.options import option
from rmboost.tasks import TaskSpec

INPUT_FORMATS = ("auto", "rows", "qa_feedback")


@dataclass(kw_only=True)
class PromptSource:
    """The prompts of a generation job: `rmboost generate`'s input flags (GenerateConfig reuses them)."""

    input: str = option(
        "sample:qa_feedback", flags=("--input", "-i"),
        help="Prompts: .jsonl/.json/.parquet/.csv, a saved HF dataset folder, QA-Feedback's "
        "dev_feedback.json (or its folder), or sample:qa_feedback (20 shipped prompts).",
    )
    fields: dict[str, str] = option(
        default_factory=dict, flags=("--field",), cli_type=list[str] | None, parse=parse_field_map,
        help="Map a task field to your column: TASK_FIELD=COLUMN (repeatable).",
    )
    id_field: str = option("id", help="Column holding row ids (row-<index> when absent).")
    split: str = option("train", help="Split of a saved DatasetDict.")
    input_format: str = option("auto", choices=INPUT_FORMATS, noun="input format", help="auto, rows or qa_feedback.")
    limit: int | None = option(None, help="Use only the first N prompts.")


def iter_prompt_rows(src: PromptSource) -> Iterator[dict[str, Any]]:
    """The rows (after --limit) with ids, `_index` and `_where` ("FILE, line N" for JSONL, "FILE,
    row N" otherwise, both from 1), streamed; ids are not checked for repeats."""
    source = str(src.input)
    fmt = src.input_format
    if fmt == "auto":
        path = Path(source)
        is_qaf = path.name == "dev_feedback.json" or (path.is_dir() and (path / "dev_feedback.json").is_file())
        fmt = "qa_feedback" if is_qaf else "rows"
    if fmt == "qa_feedback":
        rows = located(qa_feedback.load_prompts(source), source)  # one JSON document, read whole
    elif fmt == "rows":
        if not resolve_input(source).exists():
            raise InputError(f"input not found: {source}")  # an InputError, as from every other reader
        rows = iter_located_rows(source, "input", split=src.split)
    else:
        raise InputError(f"unknown input format {fmt!r} (use {', '.join(INPUT_FORMATS)})")
    return itertools.islice(map_fields(rows, src.fields, id_field=src.id_field), src.limit)


def load_prompt_rows(src: PromptSource) -> list[dict[str, Any]]:
    """All rows (--limit ignored) with ids, in a list, ids checked unique: for inputs small enough to hold."""
    return list(unique_ids(iter_prompt_rows(replace(src, limit=None))))


def validate_row(row: dict[str, Any], src: PromptSource, task: TaskSpec, y1_from: str | None = None) -> None:
    """Fail before any call if a row lacks a field the task needs: name the row and the field."""
    missing = task.missing_fields(row)
    if y1_from and row.get(y1_from) in (None, ""):
        missing.append(y1_from)
    if missing:
        hint = "" if src.fields else " (map your columns with --field TASK_FIELD=COLUMN)"
        raise InputError(
            f"{row['_where']} (id {row['id']}): missing field "
            f"{', '.join(repr(m) for m in missing)} needed by task {task.name!r}{hint}"
        )


async def index_inputs(src: PromptSource, task: TaskSpec, y1_from: str | None, index: JobIndex) -> None:
    """The first pass: validate every row and record its id by position (a repeated id fails),
    handing the event loop a turn every SCAN_CHUNK rows."""

    def checked() -> Iterator[tuple[int, str]]:
        for row in iter_prompt_rows(src):
            validate_row(row, src, task, y1_from)
            yield row["_index"], row["id"]

    async for chunk in in_chunks(checked()):
        if (repeat := index.add_inputs(chunk)) is not None:
            pos, rid, first = repeat
            raise repeated_id(where_of(src, pos), rid, where_of(src, first))


def where_of(src: PromptSource, pos: int) -> str:
    """The location of the row at position `pos` (read again: for an error, not the hot path)."""
    return next((row["_where"] for row in iter_prompt_rows(src) if row["_index"] == pos), f"{src.input}, row {pos + 1}")


async def todo_rows(
    src: PromptSource, task: TaskSpec, y1_from: str | None, index: JobIndex, shard: tuple[int, int],
    on_turn: Callable[[], None] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """The second pass: the rows of shard (k, N) still to do, in input order.

    Every SCAN_CHUNK rows read it hands the event loop a turn (a resumed job may read a
    million finished rows before the next one to do), calling `on_turn` first.
    """
    k, n = shard
    for count, row in enumerate(iter_prompt_rows(src), 1):
        if count % SCAN_CHUNK == 0:
            if on_turn is not None:
                on_turn()
            await asyncio.sleep(0)
        pos = row["_index"]
        if pos % n != k - 1:
            continue
        if index.input_id(pos) != row["id"]:
            raise InputError(f"{src.input} changed while the job was reading it (at {row['_where'].rpartition(', ')[2]})")
        if not index.is_done(row["id"]):
            validate_row(row, src, task, y1_from)
            yield row
