"""`rmboost filter` as a job: one writer per output, streamed in input order, accounted for, resumable."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from conftest import ScriptedBackend, read_jsonl, run
from servers import ScriptedServer, ok, sleep
from test_output_lock import child_env, wait_for
from typer.testing import CliRunner

from rmboost.cli import app
from rmboost.data.inputs import InputError
from rmboost.data.output_lock import OutputBusy, hold_output, lock_path
from rmboost.filtering import run_filter
from rmboost.llm.batch import BatchOptions
from rmboost.llm.types import Completion, FatalLLMError
from rmboost.methods.judge import JudgeOptions

TESTS = Path(__file__).resolve().parent


def write_pairs(path: Path, n: int, pad: int = 0) -> list[dict]:
    """n pairs; every third one is mislabelled (its `rejected` is the better answer)."""
    rows = []
    for i in range(n):
        good, bad = (1, 8) if i % 3 == 0 else (9, 2)
        rows.append({"id": f"p{i}", "prompt": f"Q{i}?", "chosen": f"answer quality {good}" + " x" * pad,
                     "rejected": f"answer quality {bad}" + " x" * pad, "inputs": {"question": f"Q{i}?", "passages": "P."}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def decide(text: str) -> str:
    """The judge: the answer with the higher 'quality' wins."""
    first, second = (int(x) for x in re.findall(r"answer quality (\d+)", text)[-2:])
    return "<decision>" + ("first" if first > second else "second" if second > first else "same") + "</decision>"


def judge_answer(messages, params):
    return decide(messages[-1]["content"])


class Shuffling(ScriptedBackend):
    """Answers later pairs first (each waits less the later its pair), so that pairs finish out of order."""

    async def complete(self, messages, params):
        pair = int(re.search(r"Q(\d+)\?", messages[-1]["content"]).group(1))
        await asyncio.sleep(0.002 * (12 - pair % 12))
        return await super().complete(messages, params)


def filter_job(src: Path, out: Path, backend, **kw):
    return run_filter(src, out, "qa_feedback", JudgeOptions(), judge_backend=backend, show_progress=False, **kw)


def test_pairs_stream_out_in_input_order_whatever_order_they_finish(tmp_path: Path):
    rows = write_pairs(tmp_path / "pairs.jsonl", 10)
    one = run(filter_job(tmp_path / "pairs.jsonl", tmp_path / "one.jsonl", ScriptedBackend(judge_answer)))
    many = run(filter_job(tmp_path / "pairs.jsonl", tmp_path / "many.jsonl", Shuffling(judge_answer), concurrency=4))
    assert (tmp_path / "many.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert (tmp_path / "many.filtered.jsonl").read_bytes() == (tmp_path / "one.filtered.jsonl").read_bytes()
    kept, removed = read_jsonl(tmp_path / "many.jsonl"), read_jsonl(tmp_path / "many.filtered.jsonl")
    assert [r["id"] for r in kept] == [f"p{i}" for i in range(10) if i % 3]
    assert [r["id"] for r in removed] == ["p0", "p3", "p6", "p9"]
    by_id = {r["id"]: r for r in rows}
    for row in kept + removed:  # the input row as it was, plus the verdict
        assert {k: v for k, v in row.items() if k != "filter"} == by_id[row["id"]]
    assert {r["filter"]["winner"] for r in kept} == {"a"} and {r["filter"]["winner"] for r in removed} == {"b"}
    lines = (tmp_path / "many.jsonl").read_text("utf-8").splitlines()
    assert lines[0] == json.dumps(kept[0], ensure_ascii=False)
    assert (one.kept, one.removed, one.failed, one.pairs) == (many.kept, many.removed, many.failed, many.pairs) == (6, 4, 0, 10)
    assert not list(tmp_path.glob("*.tmp")) and not lock_path(tmp_path / "many.jsonl").exists()


def test_kept_pairs_can_be_parquet_with_the_jsonl_rows_and_order(tmp_path: Path):
    """`-o kept.parquet` holds the rows `-o kept.jsonl` holds, in the same order (the verdicts'
    empty `aspects` objects as null: Parquet has no empty struct); removed pairs stay JSONL
    beside it; no staged file is left."""
    import pyarrow.parquet as pq

    write_pairs(tmp_path / "pairs.jsonl", 9)
    run(filter_job(tmp_path / "pairs.jsonl", tmp_path / "kept.jsonl", ScriptedBackend(judge_answer)))
    summary = run(filter_job(tmp_path / "pairs.jsonl", tmp_path / "kept.parquet", Shuffling(judge_answer), concurrency=3))
    as_jsonl = read_jsonl(tmp_path / "kept.jsonl")
    for row in as_jsonl:
        assert all(order.pop("aspects") == {} for order in row["filter"]["orders"])
    back = pq.read_table(tmp_path / "kept.parquet").to_pylist()
    for row in back:
        assert all(order.pop("aspects") is None for order in row["filter"]["orders"])
    assert back == as_jsonl and len(back) == 6
    assert (tmp_path / "kept.parquet.filtered.jsonl").exists() is False
    assert read_jsonl(tmp_path / "kept.filtered.jsonl")[0]["id"] == "p0" and summary.kept == 6
    assert not list(tmp_path.glob("*.tmp")) and not lock_path(tmp_path / "kept.parquet").exists()


def test_progress_failures_tokens_and_cost_reach_the_user_and_the_summary_file(tmp_path: Path):
    from io import StringIO

    from rich.console import Console

    write_pairs(tmp_path / "pairs.jsonl", 5)
    backend = ScriptedBackend(lambda m, p: "no idea" if "Q2?" in m[-1]["content"] else judge_answer(m, p))
    shown = StringIO()
    summary = run(run_filter(tmp_path / "pairs.jsonl", tmp_path / "kept.jsonl", "qa_feedback", JudgeOptions(),
                             judge_backend=backend, console=Console(file=shown, width=300), price_in=2.0, price_out=10.0))
    # no verdict for p2: in the removed file with its reason, counted apart
    removed = {r["id"]: r for r in read_jsonl(tmp_path / "kept.filtered.jsonl")}
    reason = removed["p2"]["filter"]["reason"]
    assert removed["p2"]["filter"]["winner"] is None and summary.failures == {reason: 1}
    assert (summary.kept, summary.removed, summary.failed) == (2, 2, 1) and summary.rate == 0.5
    # the log line (no terminal) shows judged/total, failures and tokens
    tokens_in = sum(len(m[-1]["content"].split()) for m, _ in backend.calls)
    tokens_out = sum(len(backend.answer(m, p).split()) for m, p in backend.calls)
    log = shown.getvalue()
    assert "5/5 finished" in log and "failed 1" in log and f"tokens in {tokens_in:,} out {tokens_out:,}" in log
    assert "written: kept 2, removed 2, no verdict 1" in log  # the summary's counts, not removed 3
    saved = json.loads((tmp_path / "kept.summary.json").read_text())
    assert saved["judge_usage"]["filter"]["tokens_in"] == tokens_in and saved["judge_usage"]["filter"]["tokens_out"] == tokens_out
    cost = round(tokens_in * 2.0 / 1e6 + tokens_out * 10.0 / 1e6, 6)
    assert saved["cost_usd"] == {"total": cost, "this_run": cost} and cost > 0
    assert saved["llm_calls"] == len(backend.calls) and saved["failures"] == {reason: 1} and saved["filter_rate"] == 0.5
    assert (saved["kept"], saved["removed"], saved["failed"], saved["pairs"]) == (2, 2, 1, 5)


def test_with_no_verdict_at_all_the_filter_rate_is_null_not_zero(tmp_path: Path, capsys):
    from rmboost.cli import print_filter_summary

    write_pairs(tmp_path / "pairs.jsonl", 2)
    summary = run(filter_job(tmp_path / "pairs.jsonl", tmp_path / "kept.jsonl", ScriptedBackend(lambda m, p: "no idea")))
    assert (summary.kept, summary.removed, summary.failed) == (0, 0, 2) and summary.rate is None
    saved = json.loads((tmp_path / "kept.summary.json").read_text())
    assert "filter_rate" in saved and saved["filter_rate"] is None  # as generate's summary
    print_filter_summary(summary)
    printed = capsys.readouterr().err
    assert "kept 0, removed 0 (filter rate n/a), no verdict 2" in printed and "nan" not in printed


def test_a_rerun_pays_for_nothing_and_writes_the_same_bytes(tmp_path: Path):
    write_pairs(tmp_path / "pairs.jsonl", 6)
    first_backend, again_backend = ScriptedBackend(judge_answer), ScriptedBackend(judge_answer)
    kw = {"cache_path": tmp_path / "cache.sqlite", "price_in": 1.0, "price_out": 1.0}
    first = run(filter_job(tmp_path / "pairs.jsonl", tmp_path / "kept.jsonl", first_backend, **kw))
    kept_bytes = (tmp_path / "kept.jsonl").read_bytes()
    again = run(filter_job(tmp_path / "pairs.jsonl", tmp_path / "kept.jsonl", again_backend, **kw))
    assert len(first_backend.calls) == 12 and again_backend.calls == []
    assert (again.llm_calls, again.cache_hits) == (0, 12)
    assert (tmp_path / "kept.jsonl").read_bytes() == kept_bytes
    assert again.cost_usd["this_run"] == 0 and again.cost_usd["total"] == first.cost_usd["total"] > 0


def test_a_crash_leaves_the_outputs_as_they_were_and_the_rerun_pays_only_the_rest(tmp_path: Path):
    write_pairs(tmp_path / "pairs.jsonl", 6)
    out = tmp_path / "kept.jsonl"
    out.write_text("an earlier run's kept pairs\n")
    (tmp_path / "kept.filtered.jsonl").write_text("an earlier run's removed pairs\n")
    answered = []

    def dies_after_five(messages, params):
        if len(answered) == 5:
            return FatalLLMError("the endpoint went away")
        answered.append(1)
        return judge_answer(messages, params)

    with pytest.raises(FatalLLMError):
        run(filter_job(tmp_path / "pairs.jsonl", out, ScriptedBackend(dies_after_five), cache_path=tmp_path / "c.sqlite"))
    assert out.read_text() == "an earlier run's kept pairs\n"  # no half file under either name
    assert (tmp_path / "kept.filtered.jsonl").read_text() == "an earlier run's removed pairs\n"
    assert not list(tmp_path.glob("*.tmp")) and not lock_path(out).exists()
    rerun = ScriptedBackend(judge_answer)
    summary = run(filter_job(tmp_path / "pairs.jsonl", out, rerun, cache_path=tmp_path / "c.sqlite"))
    assert len(rerun.calls) == 12 - 5 and summary.cache_hits == 5
    assert [r["id"] for r in read_jsonl(out)] == ["p1", "p2", "p4", "p5"]


def test_memory_does_not_grow_with_the_job(tmp_path: Path):
    """Twice the pairs (of 20 kB each), the same peak: the job holds a window of pairs, never the file.

    (The peak is not near zero: the request cache's key builder keeps the JSON of its last 256
    requests, a fixed amount that a job of a few hundred pairs fills either way.)
    """

    class Counting(ScriptedBackend):  # keeps no messages
        async def complete(self, messages, params):
            return Completion(text=judge_answer(messages, params), tokens_in=1, tokens_out=1, model=self.model)

    def peak_for(n: int) -> tuple[int, int]:
        src = tmp_path / f"pairs{n}.jsonl"
        write_pairs(src, n, pad=5_000)
        tracemalloc.start()
        try:
            summary = run(filter_job(src, tmp_path / f"kept{n}.jsonl", Counting(judge_answer), concurrency=2))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert summary.kept + summary.removed == n
        return peak, src.stat().st_size

    peak, size = peak_for(300)
    twice, _ = peak_for(600)
    assert size > 6_000_000
    assert twice - peak < size / 10, f"peaks {peak:,} and {twice:,} bytes for inputs of {size:,} and twice that"


def test_bad_rows_are_named_by_file_and_line_before_any_call(tmp_path: Path):
    good = write_pairs(tmp_path / "pairs.jsonl", 3)
    cases = {
        "missing field 'rejected'": {k: v for k, v in good[0].items() if k != "rejected"},
        "no 'inputs' column": {k: v for k, v in good[0].items() if k != "inputs"},
        "field 'chosen' must be a string": {**good[0], "chosen": 7},
    }
    for message, bad in cases.items():
        src = tmp_path / "bad.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in [*good, bad]))  # the bad row comes last
        backend = ScriptedBackend(judge_answer)
        with pytest.raises(InputError, match=rf"bad\.jsonl, line 4\b.*{re.escape(message)}"):
            run(filter_job(src, tmp_path / "kept.jsonl", backend))
        assert backend.calls == [] and not (tmp_path / "kept.jsonl").exists()
    (tmp_path / "torn.jsonl").write_text(json.dumps(good[0]) + "\n{not json\n")
    result = CliRunner().invoke(app, ["filter", str(tmp_path / "torn.jsonl"), "-o", str(tmp_path / "kept.jsonl"),
                                      "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"error: {tmp_path / 'torn.jsonl'}, line 2: not valid JSON "
                                                  "(Expecting property name enclosed in double quotes)"]


# --------------------------------------------------------------------------- one writer per output


def test_a_second_filter_on_a_held_output_is_refused_before_any_call(tmp_path: Path):
    write_pairs(tmp_path / "pairs.jsonl", 3)
    out, backend = tmp_path / "kept.jsonl", ScriptedBackend(judge_answer)
    with hold_output(out, command="rmboost filter pairs.jsonl -o kept.jsonl"):
        with pytest.raises(OutputBusy) as busy:
            run(filter_job(tmp_path / "pairs.jsonl", out, backend))
        assert f"pid {os.getpid()} on {socket.gethostname()}" in str(busy.value)
        assert "rmboost filter pairs.jsonl -o kept.jsonl" in str(busy.value) and "\n" not in str(busy.value)
    assert backend.calls == [] and not out.exists() and not (tmp_path / "kept.filtered.jsonl").exists()


def test_two_filters_on_one_output_at_once_one_is_refused(tmp_path: Path):
    write_pairs(tmp_path / "pairs.jsonl", 4)
    out = tmp_path / "kept.jsonl"

    async def both():
        first = asyncio.create_task(filter_job(tmp_path / "pairs.jsonl", out, Shuffling(judge_answer)))
        await asyncio.sleep(0)  # the first takes the lock before its first await
        second = ScriptedBackend(judge_answer)
        with pytest.raises(OutputBusy, match=f"pid {os.getpid()}"):
            await filter_job(tmp_path / "pairs.jsonl", out, second)
        assert second.calls == []
        return await first

    assert run(both()).kept == 2
    assert not lock_path(out).exists()


def filter_cmd(url: str, src: Path, out: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "rmboost.cli", "filter", str(src), "--output", str(out), "--cache", str(cache),
            "--backend", "openai", "--base-url", url, "--model", "scripted-model", "--no-progress"]


def reply(body) -> str:
    return decide(body["messages"][-1]["content"])


@pytest.mark.server
def test_second_filter_process_is_refused_then_kill_9_leaves_no_half_file(tmp_path: Path):
    src, out, cache = tmp_path / "pairs.jsonl", tmp_path / "kept.jsonl", tmp_path / "cache.sqlite"
    write_pairs(src, 4)
    with ScriptedServer([ok(), ok()], default=sleep(15), reply=reply) as server, ScriptedServer(reply=reply) as other:
        first = subprocess.Popen(filter_cmd(server.base_url, src, out, cache), env=child_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:  # the first pair judged in both orders, the next request hangs
            wait_for(lambda: server.attempts >= 3, first, "three requests")
            second = subprocess.run(filter_cmd(other.base_url, src, out, cache), env=child_env(),
                                    capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1, second.stderr
            assert f"pid {first.pid} on {socket.gethostname()}, started " in lines[0] and "filter" in lines[0]
            assert other.received == []
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
        assert not out.exists() and not (tmp_path / "kept.filtered.jsonl").exists()
        server.default = ok()
        asked = server.attempts
        again = subprocess.run(filter_cmd(server.base_url, src, out, cache), env=child_env(),
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert server.attempts - asked == 8 - 2  # the two answers the killed job got come from the cache
        assert [r["id"] for r in read_jsonl(out)] == ["p1", "p2"]
        assert json.loads((tmp_path / "kept.summary.json").read_text())["cache_hits"] == 2


# --------------------------------------------------------------------------- batch mode


def test_batch_rows_keep_that_many_pairs_per_round(tmp_path: Path):
    write_pairs(tmp_path / "pairs.jsonl", 5)
    command = f"{sys.executable} {TESTS / 'answer_batch.py'} -i {{input}} -o {{output}}"
    opts = BatchOptions(enabled=True, transport="command", command=command, poll_interval=0.02,
                        workdir=tmp_path / "work", rows=2)
    summary = run(run_filter(tmp_path / "pairs.jsonl", tmp_path / "kept.jsonl", "qa_feedback", JudgeOptions(model="m"),
                             cache_path=tmp_path / "c.sqlite", batch=opts, show_progress=False))
    assert summary.batch["rounds"] == 3  # pairs 0-1, 2-3, then 4: both orders of each in one round
    ids = [r["id"] for r in read_jsonl(tmp_path / "kept.jsonl")] + [r["id"] for r in read_jsonl(tmp_path / "kept.filtered.jsonl")]
    assert sorted(ids) == [f"p{i}" for i in range(5)]
    for path in (tmp_path / "kept.jsonl", tmp_path / "kept.filtered.jsonl"):
        order = [int(r["id"][1:]) for r in read_jsonl(path)]
        assert order == sorted(order)


# Found in review (stop 18): four ways the filter's files could disagree or lose removed pairs.


def test_a_parquet_clash_at_the_end_leaves_every_file_as_it_was(tmp_path: Path):
    """The removed file used to be renamed into place before the kept Parquet file was written;
    a column clash there left the new removed file beside the old kept file and summary."""
    src, out = tmp_path / "pairs.jsonl", tmp_path / "kept.parquet"
    write_pairs(src, 3)
    run(filter_job(src, out, ScriptedBackend(judge_answer)))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("kept")}
    rows = read_jsonl(src)
    rows[0]["chosen"], rows[0]["rejected"] = rows[0]["rejected"], rows[0]["chosen"]  # p0 now kept
    rows[1]["meta"], rows[2]["meta"] = 1, "x"  # kept rows whose column cannot be one Parquet type
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="column 'meta' holds both int64 and string"):
        run(filter_job(src, out, ScriptedBackend(judge_answer)))
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("kept")}
    assert after == before and set(before) == {"kept.parquet", "kept.filtered.jsonl", "kept.summary.json"}


def test_a_pair_without_an_input_the_task_needs_is_refused_before_any_call(tmp_path: Path):
    rows = write_pairs(tmp_path / "pairs.jsonl", 3)
    rows[1]["inputs"] = {"question": "Q1?", "passage": "misspelt"}
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    backend = ScriptedBackend(judge_answer)
    with pytest.raises(InputError, match=r"pairs.jsonl, line 2 \(id p1\): 'inputs' has no 'passages', needed by task 'qa_feedback'"):
        run(filter_job(tmp_path / "pairs.jsonl", tmp_path / "kept.jsonl", backend))
    assert backend.calls == [] and not (tmp_path / "kept.jsonl").exists()


def test_filtering_a_file_onto_itself_is_refused(tmp_path: Path):
    """Was: run 1 replaced the input with the kept pairs; the same command again wrote an empty
    removed file over the only copy of the removed pairs."""
    src = tmp_path / "pairs.jsonl"
    write_pairs(src, 4)
    original = src.read_bytes()
    res = CliRunner().invoke(app, ["filter", str(src), "-o", str(src), "--backend", "openai",
                                   "--base-url", "http://127.0.0.1:9/v1", "--model", "m"])
    assert res.exit_code == 2 and "is the input: filter writes the kept pairs" in res.output
    assert src.read_bytes() == original and sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]


def test_an_input_that_grows_while_it_is_judged_stops_the_job(tmp_path: Path):
    """Was: rows appended after the checking pass were judged unchecked and the counts disagreed."""
    src = tmp_path / "pairs.jsonl"
    write_pairs(src, 4)
    extra = read_jsonl(src)[1] | {"id": "p99"}

    def answer(messages, params):
        if "p99" not in src.read_text():
            with src.open("a") as fh:  # another program still appending
                fh.write(json.dumps(extra) + "\n")
        return judge_answer(messages, params)

    with pytest.raises(InputError, match=r"pairs.jsonl changed while it was being filtered \(4 pairs when checked\)"):
        run(filter_job(src, tmp_path / "kept.jsonl", ScriptedBackend(answer)))
    assert not (tmp_path / "kept.jsonl").exists() and not list(tmp_path.glob("*.tmp"))


def test_the_input_is_locked_against_a_generate_job_writing_it(tmp_path: Path):
    src = tmp_path / "pairs.jsonl"
    write_pairs(src, 2)
    backend = ScriptedBackend(judge_answer)
    with hold_output(src), pytest.raises(OutputBusy, match=r"being written by another job .*filter it once that job has finished"):
        run(filter_job(src, tmp_path / "kept.jsonl", backend))
    assert backend.calls == []
    run(filter_job(src, tmp_path / "kept.jsonl", backend))  # released: the filter runs, and leaves no lock behind
    assert not lock_path(src).exists() and len(read_jsonl(tmp_path / "kept.jsonl")) == 1
