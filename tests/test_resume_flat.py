"""Memory flat in the size of the job: streamed inputs, resume from ids and offsets, the same bytes.

The reference for "the same bytes" is the finalize of the starting code (commit 1fa674e), kept
below as `finalize_as_before`: load every pair of the working file, keep one per id, write them
in input order (then the rest in file order) with json.dumps. The new writer copies lines by
byte offset instead; these tests hold it to the old output on jobs whose working file is out of
order, torn, and resumed.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import ScriptedBackend, read_jsonl, run

from rmboost.data.inputs import InputError, iter_rows
from rmboost.data.pairs import PairWriter, read_jsonl_tolerant
from rmboost.generate import GenerateConfig, run_generate
from rmboost.job_inputs import PromptSource, iter_prompt_rows
from rmboost.llm import FatalLLMError
from rmboost.methods.common import derive_seed
from rmboost.methods.rmboost import assign_labels, balanced_label


def finalize_as_before(working: Path, order: list[str]) -> bytes:
    """The starting code's PairWriter.finalize for JSONL, as bytes (the reference)."""
    rows = {r["id"]: r for r in read_jsonl_tolerant(working)[0]}
    out, seen = [], set()
    for rid in order:
        if rid in rows and rid not in seen:
            out.append(rows[rid])
            seen.add(rid)
    out.extend(r for rid, r in rows.items() if rid not in seen)
    return b"".join((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8") for r in out)


def labels_as_before(ids: list[str], seed: int) -> dict[str, str]:
    """The starting code's assign_labels (the reference for per-position labels)."""
    labels = {}
    for start in range(0, len(ids), 2):
        first = "better" if derive_seed(seed, "label", start) % 2 == 0 else "worse"
        labels[ids[start]] = first
        if start + 1 < len(ids):
            labels[ids[start + 1]] = "worse" if first == "better" else "better"
    return labels


def write_prompts(path: Path, n: int, passage_chars: int = 40) -> Path:
    filler = "Passage text é ü 中文 " * (passage_chars // 20 + 1)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"p{i}", "question": f"Question {i}?",
                                 "passages": filler[:passage_chars], "reference": f"Answer {i}."}) + "\n")
    return path


def answer(messages: list[dict[str, str]], params: Any) -> str:
    text = messages[-1]["content"]
    q = re.search(r"Question (\d+)\?", text).group(1)
    if "<existing_answer>" in text:
        direction = "better" if "clearly better" in text else "worse"
        return f"<aspects>Completeness</aspects><response>{direction} rewrite {q} \"quoted\" é</response>"
    return f"<response>first answer {q}</response>"


class JitteryBackend(ScriptedBackend):
    """Answers after a random short pause (pairs finish out of order); can die after N calls."""

    def __init__(self, die_after: int | None = None, seed: int = 0):
        super().__init__(answer)
        self.die_after = die_after
        self.started = 0  # requests accepted: exactly `die_after` are answered, however many overlap
        self.rng = random.Random(seed)

    async def complete(self, messages, params):
        if self.die_after is not None and self.started >= self.die_after:
            raise FatalLLMError("scripted: the endpoint went away")
        self.started += 1
        await asyncio.sleep(self.rng.random() * 0.01)
        return await super().complete(messages, params)


def cfg_for(tmp_path: Path, n: int, **kw: Any) -> GenerateConfig:
    return GenerateConfig(task="qa_feedback", input=str(write_prompts(tmp_path / "in.jsonl", n)),
                          output=tmp_path / "out" / "pairs.jsonl", show_progress=False,
                          cache=tmp_path / "cache.sqlite", concurrency=8, **kw)


def test_labels_per_position_are_the_old_labels():
    ids = [f"r{i}" for i in range(101)]
    for seed in (0, 1, 7):
        old = labels_as_before(ids, seed)
        assert assign_labels(ids, seed) == old
        assert [balanced_label(i, seed) for i in range(len(ids))] == [old[r] for r in ids]


def test_interrupted_out_of_order_resume_writes_the_old_bytes(tmp_path: Path):
    cfg = cfg_for(tmp_path, 30)
    out = Path(cfg.output)
    with pytest.raises(FatalLLMError):  # 30 of the 60 answers: at most 15 pairs, 8 more y1 in the cache
        run(run_generate(cfg, backend=JitteryBackend(die_after=30)))
    lines = read_jsonl(out)
    ids = [r["id"] for r in lines]
    assert 5 < len(ids) < 30 and ids != sorted(ids, key=lambda i: int(i[1:])), "an unordered partial file"
    with out.open("a", encoding="utf-8") as fh:
        fh.write('{"id": "p29", "prompt": "torn by kill -')  # a torn last line

    # Resume, but stop before the end as well (at least 22 answers are missing, 10 are given).
    backend = JitteryBackend(die_after=10, seed=1)
    with pytest.raises(FatalLLMError):
        run(run_generate(cfg, backend=backend))
    working = out.read_bytes()
    summary = run(run_generate(cfg, backend=JitteryBackend(seed=2)))
    assert summary.pairs_total == 30 and summary.resumed > len(ids)
    order = [f"p{i}" for i in range(30)]
    final = out.read_bytes()
    assert [json.loads(x)["id"] for x in final.splitlines()] == order
    # What the old code would have finalized: this run's working file, i.e. the one it resumed
    # plus the lines it appended (in any order: the old finalize sorts them by input).
    (tmp_path / "working.jsonl").write_bytes(working)
    before = {r["id"] for r in read_jsonl_tolerant(tmp_path / "working.jsonl")[0]}
    appended = b"".join(x for x in final.splitlines(keepends=True) if json.loads(x)["id"] not in before)
    (tmp_path / "working.jsonl").write_bytes(working + appended)
    assert final == finalize_as_before(tmp_path / "working.jsonl", order)
    # and an uninterrupted run of the same job (answers from the cache) writes the same bytes
    fresh = replace(cfg, output=tmp_path / "fresh" / "pairs.jsonl", concurrency=1)
    run(run_generate(fresh, backend=ScriptedBackend(answer)))
    assert Path(fresh.output).read_bytes() == final
    assert summary.labels == {"better": 15, "worse": 15}


def test_finalize_orders_by_input_then_the_rest_as_before(tmp_path: Path):
    out = tmp_path / "pairs.jsonl"
    rows = [{"id": i, "prompt": "p", "chosen": f"c{i}", "rejected": "r", "label": "better"} for i in "dacbe"]
    rows.append({"id": "c", "prompt": "p", "chosen": "c-again", "rejected": "r", "label": "worse"})  # a repeat
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    order = ["a", "b", "zz", "c", "a"]
    expected = finalize_as_before(out, order)
    w = PairWriter(out)
    assert len(w) == 5 and "c" in w and "zz" not in w
    w.finalize(order=order)
    w.close()
    assert out.read_bytes() == expected


def make_finished_job(tmp_path: Path, n: int, shuffle: bool) -> tuple[GenerateConfig, bytes]:
    """A finished job of n prompts written directly: input file and a ~2 KB pair per prompt."""
    src = write_prompts(tmp_path / "in.jsonl", n, passage_chars=600)
    ids = [f"p{i}" for i in range(n)]
    labels = labels_as_before(ids, 0)
    rows = (
        {"id": rid, "prompt": f"Question: Question {i}?\n\nPassages:\n" + "x" * 600, "chosen": "c" * 200,
         "rejected": "r" * 200, "method": "rmboost", "task": "qa_feedback", "label": labels[rid],
         "y1": "y" * 200, "y2": "z" * 200, "model": "m", "seed": 0, "tokens_in": 900, "tokens_out": 120,
         "request_ids": ["a" * 64, "b" * 64], "inputs": {"question": f"Question {i}?", "passages": "x" * 600}}
        for i, rid in enumerate(ids)
    )
    lines = [(json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8") for r in rows]
    out = tmp_path / "out" / "pairs.jsonl"
    out.parent.mkdir()
    if shuffle:  # killed before the end: finished out of order, as concurrent workers do
        random.Random(0).shuffle(lines)
    out.write_bytes(b"".join(lines))
    cfg = GenerateConfig(task="qa_feedback", input=str(src), output=out, show_progress=False,
                         cache=tmp_path / "cache.sqlite")
    return cfg, finalize_as_before(out, ids)


@pytest.mark.slow
@pytest.mark.parametrize("shuffle", [False, True], ids=["finished", "unordered"])
def test_resuming_a_large_job_holds_no_rows(tmp_path: Path, shuffle: bool):
    n = 10_000
    cfg, expected = make_finished_job(tmp_path, n, shuffle)
    size = Path(cfg.output).stat().st_size
    assert size > 20_000_000  # the pairs as Python dicts would take several times this

    def never(messages, params):
        raise AssertionError("a finished job makes no call")

    tracemalloc.start()
    try:
        summary = run(run_generate(cfg, backend=ScriptedBackend(never)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.resumed == n and summary.pairs_written == 0 and summary.pairs_total == n
    assert summary.labels == {"better": n // 2, "worse": n // 2}
    assert Path(cfg.output).read_bytes() == expected
    assert peak < 4_000_000, f"resume held {peak / 1e6:.1f} MB of Python objects for a {size / 1e6:.0f} MB job"


def test_inputs_are_read_as_a_stream(tmp_path: Path):
    src = tmp_path / "in.jsonl"
    good = "".join(json.dumps({"id": f"p{i}", "question": "Q?", "passages": "P"}) + "\n" for i in range(3))
    src.write_text(good + "{broken\n")
    rows = iter_rows(src)
    assert next(rows)["id"] == "p0"  # a list reader would have failed on line 4 already
    with pytest.raises(InputError, match="line 4: not valid JSON"):
        list(rows)
    assert [r["id"] for r in iter_prompt_rows(PromptSource(input=str(src), limit=3))] == ["p0", "p1", "p2"]


def test_parquet_input_streams_by_batches(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": f"p{i}", "question": f"Q{i}?", "passages": "P"} for i in range(3000)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet", row_group_size=1000)
    stream = iter_rows(tmp_path / "in.parquet")
    assert next(stream) == rows[0]
    assert [rows[0], *stream] == rows


def test_a_repeated_id_is_named_before_any_call(tmp_path: Path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "question": "Q?", "passages": "P"}) + "\n" for i in "abca"))
    backend = ScriptedBackend(answer)
    cfg = GenerateConfig(task="qa_feedback", input=str(src), output=tmp_path / "o.jsonl", show_progress=False)
    with pytest.raises(InputError, match=r"in.jsonl, line 4: id 'a' repeats line 1"):
        run(run_generate(cfg, backend=backend))
    assert backend.calls == []


def test_merge_streams_and_names_a_repeated_id(tmp_path: Path):
    from typer.testing import CliRunner

    from rmboost.cli import app

    a, b, empty = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "e.jsonl"
    a.write_text('{"id": "1", "chosen": "é"}\n{"id": "2", "chosen": "x"}\n', "utf-8")
    b.write_text('{"id": "3", "chosen": "y"}\n{"id": "2", "chosen": "again"}\n', "utf-8")
    empty.write_text("")
    result = CliRunner().invoke(app, ["merge", str(a), str(empty), str(b), "-o", str(tmp_path / "m.jsonl")])
    assert result.exit_code == 2
    assert f"id '2' is in both {a} and {b}" in result.output
    assert not (tmp_path / "m.jsonl").exists()


# --------------------------------------------------------------------------- the event loop during scans


def write_finished_pairs(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for i, rid in enumerate(ids):
            fh.write(json.dumps({"id": rid, "prompt": "p", "chosen": "c", "rejected": "r",
                                 "label": "better" if i % 2 else "worse"}) + "\n")


def test_the_scans_of_a_resume_give_the_event_loop_turns(tmp_path: Path):
    """Reading the input, the output's finished pairs and the rows still to do: another task on
    the loop (the progress line, the batch runner, Ctrl-C's cancellation) runs every SCAN_CHUNK
    rows, not only once a scan of many rows is over."""
    from rmboost.data.job_index import SCAN_CHUNK, JobIndex
    from rmboost.job_inputs import index_inputs, todo_rows
    from rmboost.tasks import load_task

    n = 5 * SCAN_CHUNK
    source = PromptSource(input=str(write_prompts(tmp_path / "in.jsonl", n)))
    out = tmp_path / "out" / "pairs.jsonl"
    write_finished_pairs(out, [f"p{i}" for i in range(n - 1)])  # all but the last are done
    task = load_task("qa_feedback")

    async def scans() -> tuple[dict[str, int], list[str], int, int]:
        ticks = 0
        turns: dict[str, int] = {}

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        async def count(name: str, scan: Any) -> Any:
            before = ticks
            result = await scan
            turns[name] = ticks - before
            return result

        async def todo() -> list[str]:
            return [row["id"] async for row in todo_rows(source, task, None, index, (1, 1), on_turn=on_turn)]

        def on_turn() -> None:
            nonlocal calls
            calls += 1

        calls = 0
        index = JobIndex()
        task_ = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        try:
            await count("inputs", index_inputs(source, task, None, index))
            writer = PairWriter(out, index, scan=False)
            await count("output", writer.scan())
            left = await count("todo", todo())
            size = len(writer)
            writer.close()
        finally:
            task_.cancel()
            index.close()
        return turns, left, size, calls

    turns, left, size, calls = run(scans())
    assert left == [f"p{n - 1}"] and size == n - 1
    assert calls == n // SCAN_CHUNK  # on_turn: once per chunk of rows read
    assert turns["inputs"] >= n // SCAN_CHUNK - 1
    assert turns["output"] >= (n - 1) // SCAN_CHUNK - 1
    assert turns["todo"] >= n // SCAN_CHUNK - 1


def test_resuming_from_a_finished_parquet_file_gives_the_event_loop_turns(tmp_path: Path):
    """A finished Parquet output goes back to the working file a record batch (SCAN_CHUNK rows) at
    a time, the loop getting a turn after each; cancelled part-way, it leaves no working file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rmboost.data.job_index import SCAN_CHUNK

    n = 5 * SCAN_CHUNK
    rows = [{"id": f"p{i}", "prompt": f"Q{i} é", "chosen": "c", "rejected": "r",
             "label": "better" if i % 2 else "worse"} for i in range(n)]
    out = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), out, row_group_size=n)  # one row group: batches still bound it
    working = tmp_path / "pairs.parquet.rows.jsonl"

    async def resume(stop_after: int | None) -> tuple[int, PairWriter | None]:
        converting = 0  # turns the loop had while the working file was not there yet

        async def ticker() -> None:
            nonlocal converting
            while True:
                await asyncio.sleep(0)
                if not working.exists():
                    converting += 1

        ticks = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        writer = PairWriter(out, scan=False)
        scan = asyncio.create_task(writer.scan())
        try:
            if stop_after is None:
                await scan
                return converting, writer
            while converting < stop_after:
                await asyncio.sleep(0)
            scan.cancel()
            with pytest.raises(asyncio.CancelledError):
                await scan
            writer.close()
            return converting, None
        finally:
            ticks.cancel()

    _, none = run(resume(stop_after=2))  # interrupted mid-conversion
    assert none is None and not working.exists() and not list(tmp_path.glob("*.tmp"))
    converting, writer = run(resume(stop_after=None))
    assert writer is not None
    assert converting >= n // SCAN_CHUNK - 1
    assert len(writer) == n and read_jsonl(working) == rows
    writer.write({"id": "new", "prompt": "p", "chosen": "c", "rejected": "r"})
    writer.finalize()
    writer.close()
    assert pq.read_table(out).column("id").to_pylist() == [*(r["id"] for r in rows), "new"]


def test_a_scanned_writer_resumes_as_the_constructor_does(tmp_path: Path):
    """`PairWriter(out, scan=False)` + `await scan()` indexes and cuts a torn tail like `PairWriter(out)`."""
    from rmboost.data.job_index import SCAN_CHUNK

    out = tmp_path / "pairs.jsonl"
    ids = [f"p{i}" for i in range(SCAN_CHUNK + 3)]
    write_finished_pairs(out, ids)
    with out.open("a") as fh:
        fh.write('{"id": "torn", "prom')
    whole = out.stat().st_size

    async def scanned() -> PairWriter:
        writer = PairWriter(out, scan=False)
        await writer.scan()
        return writer

    writer = run(scanned())
    assert len(writer) == len(ids) and "torn" not in writer and out.stat().st_size < whole
    writer.write({"id": "new", "prompt": "p", "chosen": "c", "rejected": "r"})
    writer.finalize(order=["new", *ids])
    writer.close()
    assert [r["id"] for r in read_jsonl(out)] == ["new", *ids]


# --------------------------------------------------------------------------- Parquet output, streamed


def heterogeneous_pairs(n: int) -> list[dict[str, Any]]:
    """Pair rows whose types settle only late in the file: what a row group alone would not show."""
    rows = []
    for i in range(n):
        row: dict[str, Any] = {
            "id": f"p{i}", "prompt": f"Question {i}? é 中文", "chosen": "c" * (i % 50), "rejected": "r",
            "label": "better" if i % 2 else "worse",
            "score": i if i < n - 3 else i + 0.5,  # ints, then floats at the very end
            "note": None if i < n // 2 else f"n{i}",  # None for the first half
            "request_ids": [] if i < n // 3 else [f"k{i}", f"k{i + 1}"],  # empty lists first
            # a nested dict whose fields grow: "reference" appears late, "extra" only in one row
            "inputs": {"question": f"Q{i}", "passages": "P", **({"reference": f"A{i}"} if i > n // 2 else {}),
                       **({"extra": 1.5} if i == n - 2 else {})},
            "filter": None if i % 3 else {"winner": "a", "orders": [{"first": "a", "decision": i % 2 == 0}]},
        }
        if i == 1:
            row["late"] = "a key not in the first row (from_pylist drops it)"
        rows.append(row)
    return rows


def test_streamed_parquet_is_the_table_built_in_one_piece(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rmboost.data import parquet

    rows = heterogeneous_pairs(600)
    keys = list(dict.fromkeys(key for row in rows for key in row))  # every row's keys, first seen first
    reference = tmp_path / "reference.parquet"
    pq.write_table(pa.Table.from_pylist([{key: row.get(key) for key in keys} for row in rows]), reference)
    monkeypatch.setattr(parquet, "ROW_GROUP_BYTES", 4_000)  # many small row groups

    out = tmp_path / "pairs.parquet"
    writer = PairWriter(out)
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)  # finished out of order, as concurrent workers do
    for row in shuffled:
        writer.write(row)
    writer.finalize(order=[r["id"] for r in rows])
    writer.close()

    new, old = pq.read_table(out), pq.read_table(reference)
    assert pq.ParquetFile(out).metadata.num_row_groups > 10
    assert new.schema.equals(old.schema) and new.equals(old)
    assert new.schema.field("score").type == pa.float64() and new.column_names == keys and keys[-1] == "late"
    assert new.column("late").to_pylist() == [None, rows[1]["late"], *[None] * 598]
    assert new.to_pylist() == old.to_pylist()

    for few in ([], rows[:1]):  # no pairs at all, and a single one
        lines = [json.dumps(r).encode() for r in few]
        parquet.write_parquet(tmp_path / "e.parquet", lambda lines=lines: iter(lines))
        pq.write_table(pa.Table.from_pylist(few), reference)
        assert pq.read_table(tmp_path / "e.parquet").equals(pq.read_table(reference))


def without_nulls(value: Any) -> Any:
    """A row with its None values (and keys) left out, nested dicts and lists included."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def test_rows_with_the_same_keys_give_the_table_built_in_one_piece(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Every row with the same keys: the columns, types and values of `from_pylist(rows)`, as before."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rmboost.data import parquet

    rows = [{k: v for k, v in row.items() if k != "late"} for row in heterogeneous_pairs(600)]
    monkeypatch.setattr(parquet, "ROW_GROUP_BYTES", 4_000)
    lines = [json.dumps(r).encode() + b"\n" for r in rows]
    parquet.write_parquet(tmp_path / "out.parquet", lambda: iter(lines))
    new, old = pq.read_table(tmp_path / "out.parquet"), pa.Table.from_pylist(rows)
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_row_groups > 10
    assert new.schema.equals(old.schema) and new.equals(old) and new.column_names == list(rows[0])


def test_a_key_some_rows_lack_survives_parquet_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A key missing from the first rows (filter info of a job resumed with --filter, say) is a
    column, null where a row lacks it; read back for a resume, every row has all it had."""
    import pyarrow.parquet as pq

    from rmboost.data import parquet

    monkeypatch.setattr(parquet, "ROW_GROUP_BYTES", 2_000)
    rows = [{"id": f"p{i}", "prompt": f"Q{i}", "chosen": "c", "rejected": "r",
             "inputs": {"question": f"Q{i}", **({"reference": f"A{i}"} if i % 7 == 3 else {})},
             **({"filter": {"winner": "a", "orders": [{"first": "a", "decision": True}]}} if i >= 40 else {}),
             **({"run": "2024-01-01T00:00:00"} if i % 5 == 4 else {})} for i in range(80)]
    out = tmp_path / "pairs.parquet"
    writer = PairWriter(out)
    for row in rows:
        writer.write(row)
    writer.finalize()
    writer.close()
    table = pq.read_table(out)
    assert table.column_names == ["id", "prompt", "chosen", "rejected", "inputs", "run", "filter"]
    assert table.schema.field("inputs").type.names == ["question", "reference"]
    assert [without_nulls(r) for r in table.to_pylist()] == rows

    again = PairWriter(out)  # resume: the Parquet file back as the working file
    back = read_jsonl(again.path)
    again.close()
    assert [without_nulls(r) for r in back] == rows and all(set(r) == set(table.column_names) for r in back)


@pytest.mark.parametrize("group_bytes", [1 << 20, 300], ids=["one-row-group", "many-row-groups"])
def test_types_that_do_not_mix_in_a_column_stop_parquet_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group_bytes: int,
):
    """bool after int, a dict after text: one line naming the column, both types and the row; the
    working file keeps every pair and no half Parquet file is left."""
    from rmboost.data import parquet

    monkeypatch.setattr(parquet, "ROW_GROUP_BYTES", group_bytes)
    base = [{"id": f"p{i}", "prompt": "p", "chosen": "c", "rejected": "r", "score": i, "inputs": {"question": "q"}}
            for i in range(12)]
    cases = {
        "score": ({"score": True}, "column 'score' holds both int64 and bool values"),
        "inputs.question": ({"inputs": {"question": {"text": "q"}}}, "column 'inputs.question' holds both string and object values"),
        "extra": ({"extra": "text"}, "column 'extra' holds both int64 and string values"),
    }
    for name, (change, message) in cases.items():
        out = tmp_path / name / "pairs.parquet"
        rows = [dict(row) for row in base]
        if name == "extra":
            rows[3]["extra"] = 1  # a key the first row lacks, then another type for it
        rows[9].update(change)
        writer = PairWriter(out)
        for row in rows:
            writer.write(row)
        with pytest.raises(parquet.ColumnClash) as clash:
            writer.finalize()
        writer.close()
        assert str(clash.value) == f"{out}: {message} (row 10, id 'p9'); a Parquet column takes one type"
        assert read_jsonl(writer.path) == rows and not out.exists() and not list(out.parent.glob("*.tmp"))


def test_streamed_parquet_holds_one_row_group_of_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The Parquet output of a job holds no more than a row group of pairs as Python objects."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rmboost.data import parquet

    monkeypatch.setattr(parquet, "ROW_GROUP_BYTES", 200_000)
    working = tmp_path / "rows.jsonl"
    with working.open("w", encoding="utf-8") as fh:
        for i in range(4_000):
            fh.write(json.dumps({"id": f"p{i}", "prompt": "x" * 1_000, "chosen": "c" * 500, "rejected": "r" * 500,
                                 "inputs": {"question": f"Q{i}", "passages": "P" * 200}}) + "\n")
    size = working.stat().st_size
    assert size > 8_000_000

    with working.open("rb") as src:

        def lines() -> Iterator[bytes]:
            src.seek(0)
            return iter(src.readline, b"")

        tracemalloc.start()
        try:
            parquet.write_parquet(tmp_path / "out.parquet", lines)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 3_000_000, f"held {peak / 1e6:.1f} MB of Python objects for {size / 1e6:.0f} MB of pairs"
    expected = pa.Table.from_pylist(read_jsonl(working))
    assert pq.read_table(tmp_path / "out.parquet").equals(expected) and expected.num_rows == 4_000


def test_an_object_empty_in_every_row_is_written_as_null(tmp_path: Path):
    """Parquet has no struct without fields: `{}` (the judge's `aspects` when none were asked)
    becomes null, at the top level, inside an object and inside a list; nothing else changes."""
    import pyarrow.parquet as pq

    from rmboost.data import parquet

    rows = [{"id": f"p{i}", "meta": {}, "filter": {"winner": "a", "aspects": {}, "orders": [{"aspects": {}, "n": i}]}}
            for i in range(3)]
    lines = [json.dumps(r).encode() + b"\n" for r in rows]
    parquet.write_parquet(tmp_path / "out.parquet", lambda: iter(lines))
    back = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert back == [{"id": f"p{i}", "meta": None, "filter": {"winner": "a", "aspects": None, "orders": [{"aspects": None, "n": i}]}}
                    for i in range(3)]


def test_an_integer_parquet_cannot_store_is_named_by_column_and_row(tmp_path: Path):
    """Found in review: 2**64 gave "rows 2-2 do not fit one Parquet schema" without the column."""
    from rmboost.data import parquet

    for i, rows in enumerate([[{"id": "p0", "n": 1}, {"id": "p1", "big": 2**64}], [{"id": "p0", "big": 2**64}]]):
        lines = [(json.dumps(r) + "\n").encode() for r in rows]
        with pytest.raises(parquet.ColumnClash, match=rf"column 'big' holds both int64 and integer beyond 64-bit values \(row {len(rows)}, id 'p{len(rows) - 1}'\)"):
            parquet.write_parquet(tmp_path / f"x{i}.parquet", lambda lines=lines: iter(lines))
