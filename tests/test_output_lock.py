"""One writer per output: a second job is refused before any call, and kill -9 frees the output."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ScriptedBackend, read_jsonl, run
from servers import ScriptedServer, ok, sleep

from rmboost.data.output_lock import OutputBusy, hold_output, lock_path, output_stem
from rmboost.data.pairs import sidecar
from rmboost.generate import GenerateConfig, run_generate

SRC = str(Path(__file__).resolve().parents[1] / "src")


def prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "question": f"Question {i}?", "passages": "P.",
                                        "reference": f"Reference answer {i}."}) + "\n" for i in range(n)))
    return path


def answer(messages, params):
    return "<response>an answer that differs from the reference</response>"


def cfg_for(tmp_path: Path, output: Path, **kw) -> GenerateConfig:
    kw = {"y1_from": "reference", **kw}
    return GenerateConfig(task="qa_feedback", input=str(prompts(tmp_path / "in.jsonl", 4)), output=output,
                          show_progress=False, cache=tmp_path / "cache.sqlite", **kw)


def test_a_second_job_on_a_held_output_is_refused_before_any_call(tmp_path: Path):
    out = tmp_path / "pairs.jsonl"
    backend = ScriptedBackend(answer)
    with hold_output(out, command="rmboost generate --output pairs.jsonl"):
        with pytest.raises(OutputBusy) as busy:
            run(run_generate(cfg_for(tmp_path, out), backend=backend))
        message = str(busy.value)
        assert f"pid {os.getpid()} on {socket.gethostname()}, started " in message
        assert "rmboost generate --output pairs.jsonl" in message and "\n" not in message
        assert backend.calls == [] and not out.exists()
    # released: the same job now runs, and a later one (the experiment runner's pattern) too
    assert run(run_generate(cfg_for(tmp_path, out), backend=backend)).pairs_written == 4
    assert run(run_generate(cfg_for(tmp_path, out), backend=backend)).resumed == 4
    assert not lock_path(out).exists()


def test_the_lock_is_released_when_the_job_fails(tmp_path: Path):
    out = tmp_path / "pairs.jsonl"
    bad = cfg_for(tmp_path, out, y1_from="nope")  # every row lacks the column: fails after locking
    with pytest.raises(ValueError, match="missing field 'nope'"):
        run(run_generate(bad, backend=ScriptedBackend(answer)))
    with hold_output(out):  # free again
        pass


def test_two_jobs_on_one_output_in_one_process_one_is_refused(tmp_path: Path):
    out = tmp_path / "pairs.jsonl"

    async def both():
        slow = ScriptedBackend(answer)
        first = asyncio.create_task(run_generate(cfg_for(tmp_path, out), backend=slow))
        await asyncio.sleep(0)  # the first takes the lock before its first await
        second = ScriptedBackend(answer)
        with pytest.raises(OutputBusy, match=f"pid {os.getpid()}"):
            await run_generate(cfg_for(tmp_path, out), backend=second)
        assert second.calls == []
        return await first

    assert run(both()).pairs_written == 4


def test_the_experiment_runner_resumes_a_variant_under_the_lock(tmp_path: Path):
    """Its pattern: the variant's job, then on a re-run the job again and a replay into a scratch file."""
    from rich.console import Console

    from rmboost.experiment import generate_variant

    out = tmp_path / "gen" / "rmboost" / "pairs.jsonl"
    cfg, backend = cfg_for(tmp_path, out), ScriptedBackend(answer)
    first = run(generate_variant(cfg, Console(quiet=True), backend, None))
    again = run(generate_variant(cfg, Console(quiet=True), backend, None))
    assert first["pairs"] == again["pairs"] == 4 and again["calls_this_run"] == 0
    assert again["tokens_in"] == first["tokens_in"] > 0  # the replay saw the whole job
    assert not lock_path(out).exists()


def test_pairs_jsonl_and_pairs_parquet_share_a_lock(tmp_path: Path):
    with hold_output(tmp_path / "pairs.jsonl"), pytest.raises(OutputBusy):  # they share pairs.failures.jsonl
        run(run_generate(cfg_for(tmp_path, tmp_path / "pairs.parquet"), backend=ScriptedBackend(answer)))


def test_side_files_drop_only_the_data_format_suffix():
    d = Path("d")
    plain = d / "pairs.jsonl"  # today's names, unchanged
    assert lock_path(plain) == d / "pairs.lock"
    assert (sidecar(plain, "summary"), sidecar(plain, "failures")) == (d / "pairs.summary.json", d / "pairs.failures.jsonl")
    a, b = d / "pairs.a.jsonl", d / "pairs.b.jsonl"
    assert (lock_path(a), lock_path(b)) == (d / "pairs.a.lock", d / "pairs.b.lock")
    assert (sidecar(a, "summary"), sidecar(b, "summary")) == (d / "pairs.a.summary.json", d / "pairs.b.summary.json")
    assert (sidecar(a, "failures"), sidecar(b, "failures")) == (d / "pairs.a.failures.jsonl", d / "pairs.b.failures.jsonl")
    # `filter pairs.jsonl -o pairs.kept.jsonl` no longer writes over generate's side files
    assert sidecar(d / "pairs.kept.jsonl", "summary") == d / "pairs.kept.summary.json"
    assert lock_path(d / "pairs.kept.jsonl") == d / "pairs.kept.lock"
    # a compression suffix goes with the format it compresses
    assert (output_stem(d / "x.jsonl.gz"), output_stem(d / "x.v2.jsonl.zst"), output_stem(d / "x")) == ("x", "x.v2", "x")
    assert (lock_path(d / "x.jsonl.gz"), sidecar(d / "x.jsonl.gz", "summary")) == (d / "x.lock", d / "x.summary.json")


def test_two_dotted_outputs_in_one_folder_are_two_jobs_with_their_own_side_files(tmp_path: Path):
    a, b = tmp_path / "dots" / "pairs.a.jsonl", tmp_path / "dots" / "pairs.b.jsonl"
    with hold_output(a):  # a job on pairs.a.jsonl is running: one on pairs.b.jsonl is not refused
        no_tag = ScriptedBackend(lambda messages, params: "no response tag")  # every prompt fails
        failed = run(run_generate(cfg_for(tmp_path, b), backend=no_tag))
    assert failed.pairs_written == 0 and sum(failed.failures.values()) == 4
    good = cfg_for(tmp_path, a, seed=1)  # another seed: not b's cached failures
    assert run(run_generate(good, backend=ScriptedBackend(answer))).pairs_written == 4
    assert len(read_jsonl(b.with_name("pairs.b.failures.jsonl"))) == 4
    assert not a.with_name("pairs.a.failures.jsonl").exists()  # b's failures are not a's
    summaries = {p.name: json.loads(p.read_text()) for p in (tmp_path / "dots").glob("*.summary.json")}
    assert {n: s["output"] for n, s in summaries.items()} == {"pairs.a.summary.json": str(a), "pairs.b.summary.json": str(b)}
    assert not list((tmp_path / "dots").glob("*.lock"))


# --------------------------------------------------------------------------- real processes


def generate_cmd(server_url: str, out: Path, cache: Path, src: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rmboost.cli", "generate", "--input", str(src), "--output", str(out),
            "--cache", str(cache), "--backend", "openai", "--base-url", server_url,
            "--model", "scripted-model", "--y1-from", "reference", "--no-progress", *extra]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def complete_lines(path: Path) -> list[str]:
    return [x for x in path.read_text("utf-8").splitlines(keepends=True) if x.endswith("\n")] if path.exists() else []


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the job ended before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout}s")
        time.sleep(0.1)


@pytest.mark.server
def test_second_process_is_refused_naming_the_first_then_kill_9_frees_the_output(tmp_path: Path):
    src, out, cache = prompts(tmp_path / "in.jsonl", 5), tmp_path / "pairs.jsonl", tmp_path / "cache.sqlite"
    with ScriptedServer([ok(), ok()], default=sleep(15)) as server, ScriptedServer() as other:
        first = subprocess.Popen(generate_cmd(server.base_url, out, cache, src), env=child_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:  # two pairs written, the third request hangs
            wait_for(lambda: server.attempts >= 3 and len(complete_lines(out)) == 2, first, "two pairs")
            second = subprocess.run(generate_cmd(other.base_url, out, cache, src), env=child_env(),
                                    capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1, second.stderr
            assert f"pid {first.pid} on {socket.gethostname()}, started " in lines[0]
            assert "generate --input" in lines[0] and str(out) in lines[0]
            assert other.received == []  # it asked nothing of its endpoint: nothing paid
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
        assert lock_path(out).exists()  # kill -9 left the file, but not the lock
        server.default = ok()
        third = subprocess.run(generate_cmd(server.base_url, out, cache, src), env=child_env(),
                               capture_output=True, text=True, timeout=300)
        assert third.returncode == 0, third.stderr
        assert json.loads((tmp_path / "pairs.summary.json").read_text())["resumed"] == 2
        assert [r["id"] for r in read_jsonl(out)] == [f"p{i}" for i in range(5)]
        assert not lock_path(out).exists()
        # the same job uninterrupted (answers from the cache) writes the same bytes
        asked = server.attempts
        fresh = subprocess.run(generate_cmd(server.base_url, tmp_path / "fresh.jsonl", cache, src),
                               env=child_env(), capture_output=True, text=True, timeout=300)
        assert fresh.returncode == 0, fresh.stderr
        assert server.attempts == asked
        assert (tmp_path / "fresh.jsonl").read_bytes() == out.read_bytes()


@pytest.mark.server
def test_two_jobs_with_different_outputs_share_one_cache_at_once(tmp_path: Path):
    src, cache = prompts(tmp_path / "in.jsonl", 12), tmp_path / "cache.sqlite"
    outs = [tmp_path / "a" / "pairs.jsonl", tmp_path / "b" / "pairs.jsonl"]
    with ScriptedServer(default=sleep(0.2)) as server:
        procs = [subprocess.Popen(generate_cmd(server.base_url, out, cache, src, "--concurrency", "4",
                                               *(["--seed", "1"] if i else [])),
                                  env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i, out in enumerate(outs)]
        results = [p.communicate(timeout=300) for p in procs]
    for proc, (_, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr
    for out in outs:
        assert len(read_jsonl(out)) == 12
    # seeds differ, so the two jobs made different requests: every one of them is in the cache
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 24
    assert server.attempts == 24
