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
    with pytest.raises(InputError, match=r"row 3: id 'a' repeats row 0"):
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
