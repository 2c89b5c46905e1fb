"""Batch mode end to end: rounds of batches through a loopback Files + Batches server, and the
command transport through a small stand-in for vLLM's run_batch.

The server (tests/batch_server.py) is a real HTTP process whose state lives in a folder; its own
counters (batches created, lines answered, duplicates) say whether anything was paid twice.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from batch_server import MODEL, BatchServer, batch_server
from conftest import read_jsonl, run
from servers import key_in_files
from typer.testing import CliRunner

from rmboost.backends import BackendOptions
from rmboost.cli import app
from rmboost.experiment import ConfigError
from rmboost.experiment.config import batch_setting
from rmboost.generate import GenerateConfig, run_generate
from rmboost.llm.accounting import estimate_cost, job_prices
from rmboost.llm.batch import BatchOptions
from rmboost.llm.batch_format import parse_result_line
from rmboost.llm.chat_format import chat_body
from rmboost.llm.types import SamplingParams
from rmboost.options import OptionError

KEY_ENV = "RMBOOST_TEST_BATCH_KEY"
SECRET = "sk-batch-test-5f0c2a9e1d"
TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
FAST_POLLS = BatchOptions(enabled=True, poll_interval=0.02, poll_max=0.1)
ONLINE = BatchOptions()


def write_prompts(path: Path, n: int, poison: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for i in range(n):
            question = f"Question {i}?" + (" POISON" if i == poison else "")
            fh.write(json.dumps({"id": f"p{i}", "question": question, "passages": f"Passage {i}."}) + "\n")
    return path


def config(tmp: Path, server: BatchServer, name: str, *, batch: BatchOptions, n: int = 6,
           poison: int | None = None, **kw: Any) -> GenerateConfig:
    backend = BackendOptions(backend="openai", base_url=server.base_url, model=MODEL, api_key_env=KEY_ENV,
                             max_retries=8)
    if batch.enabled and batch.workdir is None:
        batch = replace(batch, workdir=tmp / name / "work")
    return GenerateConfig(
        task="qa_feedback", input=str(write_prompts(tmp / "prompts.jsonl", n, poison)),
        output=tmp / name / "pairs.jsonl", backend=backend, cache=tmp / name / "cache.sqlite",
        show_progress=False, concurrency=4, batch=batch, **kw,
    )


def wait_for(condition: Callable[[], bool], what: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)


# --------------------------------------------------------------------------- the file format


def test_request_and_result_lines_follow_the_batch_format():
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<response>"}]
    body = chat_body("m", messages, SamplingParams(temperature=0.5, seed=7, stop=("</response>",), logprobs=3))
    assert body["seed"] == 7 and body["stop"] == ["</response>"] and body["top_logprobs"] == 3
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    completion = {"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}], "usage": {}}
    ok = parse_result_line({"custom_id": "k", "response": {"status_code": 200, "body": completion}, "error": None})
    assert ok.body is completion
    old_vllm = parse_result_line({"custom_id": "k", "response": completion, "error": None})
    assert old_vllm.body is completion
    expired = parse_result_line({"custom_id": "k", "response": None,
                                 "error": {"code": "batch_expired", "message": "too late"}})
    assert (expired.reason, expired.retryable, expired.body) == ("batch_expired", True, None)
    vllm_error = parse_result_line({"custom_id": "k", "response": {"status_code": 400, "request_id": "r"},
                                    "error": "prompt too long"})
    assert (vllm_error.reason, vllm_error.message, vllm_error.retryable) == ("http_400", "prompt too long", False)
    server_error = parse_result_line({"custom_id": "k", "response": {"status_code": 503, "body": {
        "error": {"message": "busy"}}}})
    assert (server_error.reason, server_error.retryable) == ("http_503", True)


def test_the_online_backend_sends_what_a_batch_line_carries():
    """One request/response mapping (rmboost.llm.chat_format) for online calls and batch files."""
    from servers import SCRIPTED_MODEL, SCRIPTED_TEXT, ScriptedServer

    from rmboost.llm.batch_format import line_for_record
    from rmboost.llm.openai_compat import OpenAIBackend

    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<response>"}]
    params = SamplingParams(temperature=0.5, seed=7, stop=("</response>",), logprobs=3, max_tokens=9)
    with ScriptedServer() as server:
        backend = OpenAIBackend(server.base_url, SCRIPTED_MODEL, api_key_env=KEY_ENV)

        async def ask() -> Any:
            try:
                return await backend.complete(messages, params)
            finally:
                await backend.aclose()

        completion = run(ask())
    record = {"backend": backend.identity(), "messages": messages, "params": params.as_dict(), "sample_index": 0}
    batch_body = json.loads(line_for_record("k", record))["body"]
    assert server.received[-1].body == batch_body
    assert batch_body["continue_final_message"] is True and batch_body["top_logprobs"] == 3
    assert completion.text == "<response>" + SCRIPTED_TEXT and completion.model == SCRIPTED_MODEL


def test_batch_prices_and_experiment_setting():
    on = BatchOptions(enabled=True)
    assert job_prices(2.0, 8.0, on) == (1.0, 4.0)
    assert job_prices(2.0, 8.0, BatchOptions()) == (2.0, 8.0)  # batch off: the online prices
    assert job_prices(2.0, None, BatchOptions(enabled=True, discount=0.0, price_out=3.0)) == (2.0, 3.0)
    usage = {"y1": {"tokens_in": 1_000_000, "tokens_out": 0, "cached_tokens_in": 0, "cached_tokens_out": 0}}
    assert estimate_cost([usage], 2.0, 8.0, on) == {"total": 1.0, "this_run": 1.0}
    assert estimate_cost([usage], 2.0, 8.0) == {"total": 2.0, "this_run": 2.0}
    assert batch_setting(True) == on and batch_setting(False) == BatchOptions()
    assert batch_setting({"transport": "command", "command": "x {input} {output}"}) == BatchOptions(
        enabled=True, transport="command", command="x {input} {output}")
    with pytest.raises(OptionError, match=r"generator\.batch\.transprot: unknown setting \(did you mean 'transport'"):
        batch_setting({"transprot": "command"})
    with pytest.raises(OptionError, match=r"generator\.batch: .*needs --batch-command"):
        batch_setting({"transport": "command"})
    with pytest.raises(OptionError, match=r"generator\.batch\.discount must be between 0 and 1"):
        batch_setting({"discount": 2})
    with pytest.raises(ValueError, match="placeholders"):
        from rmboost.llm.batch_command import CommandBatchTransport

        CommandBatchTransport("vllm run", Path("."))


def test_batch_flags_come_from_the_batch_options(tmp_path: Path):
    """`--batch*` on generate and filter are BatchOptions' fields; a bad value is one line, exit 2."""
    generate_help = CliRunner().invoke(app, ["generate", "--help"], env={"COLUMNS": "250"}).output
    filter_help = CliRunner().invoke(app, ["filter", "--help"], env={"COLUMNS": "250"}).output
    for flag in ("--batch ", "--batch-transport", "--batch-command", "--batch-window", "--batch-max-requests",
                 "--batch-max-bytes", "--batch-poll ", "--batch-poll-max", "--batch-rows", "--batch-dir"):
        assert flag in generate_help and flag in filter_help, flag
    for flag in ("--batch-discount", "--batch-price-in", "--batch-price-out", "--price-in", "--price-out"):
        assert flag in generate_help and flag in filter_help, flag  # both estimate a cost
    out = tmp_path / "o.jsonl"
    bad = CliRunner().invoke(app, ["generate", "-o", str(out), "--batch", "--batch-transport", "ftp"])
    assert bad.exit_code == 2 and "--batch-transport: unknown batch transport 'ftp' (use openai or command)" in bad.output
    no_cache = CliRunner().invoke(app, ["generate", "-o", str(out), "--batch", "--no-cache",
                                        "--input", str(write_prompts(tmp_path / "p.jsonl", 1))])
    assert no_cache.exit_code != 0 and "--batch needs the request cache" in no_cache.output
    assert not out.exists()


def test_experiment_generator_batch_setting_reaches_generation(tmp_path: Path):
    import yaml

    from rmboost.experiment import Variant, generate_config, load_config

    def gcfg_for(batch: Any) -> GenerateConfig:
        path = tmp_path / "exp.yaml"
        path.write_text(yaml.safe_dump({"name": "t", "task": "qa_feedback", "generator": {"batch": batch},
                                        "data": {"prompts": "p.jsonl", "test": "t.jsonl",
                                                 "real_train": "r.jsonl"}}))
        return generate_config(load_config(path), Variant("rmboost", "rmboost", None), tmp_path / "p.jsonl", tmp_path)

    assert gcfg_for(True).batch == BatchOptions(enabled=True)
    assert gcfg_for(False).batch == BatchOptions()
    assert gcfg_for({"transport": "command", "command": "run {input} {output}"}).batch.command == "run {input} {output}"
    with pytest.raises(ConfigError, match=r"generator\.batch\.transprot: unknown setting"):
        gcfg_for({"transprot": "command"})
    with pytest.raises(ConfigError, match=r"generator\.batch: expected a mapping of settings, got 'yes'"):
        gcfg_for("yes")


def test_a_resumed_experiment_variant_in_batch_mode_is_recounted_from_the_cache(tmp_path: Path):
    """The replay that recounts a resumed variant reads the batch job's answers (the command
    transport's cache keys) without sending anything, and prices them at the batch price."""
    import yaml
    from rich.console import Console

    from rmboost.experiment import Variant, generate_config, generate_variant, load_config

    runs = tmp_path / "runs.txt"
    prompts = write_prompts(tmp_path / "p.jsonl", 4)
    path = tmp_path / "exp.yaml"
    batch = {"transport": "command", "command": command("--count", str(runs)), "poll_interval": 0.02,
             "workdir": str(tmp_path / "work")}
    path.write_text(yaml.safe_dump({
        "name": "t", "task": "qa_feedback", "cache": str(tmp_path / "c.sqlite"),
        "generator": {"model": MODEL, "batch": batch, "price_in": 2.0, "price_out": 2.0},
        "generation": {"quality_check": False},
        "data": {"prompts": "p.jsonl", "test": "t.jsonl", "real_train": "r.jsonl"}}))
    gcfg = generate_config(load_config(path), Variant("rmboost", "rmboost"), prompts, tmp_path / "run")
    first = run(generate_variant(replace(gcfg, limit=2), Console(quiet=True), None, None))
    commands_before = runs.read_text().count("\n")
    record = run(generate_variant(gcfg, Console(quiet=True), None, None))
    summary = json.loads((Path(gcfg.output).parent / "pairs.summary.json").read_text())
    assert first["pairs"] == 2 and record["pairs"] == 4
    assert summary["job"]["counted"] == "replayed from the cache" and summary["job"]["exact"] is True
    assert summary["pairs_total"] == summary["job"]["pairs"] == 4
    assert summary["batch"]["rounds"] >= 2  # the second run's own rounds (y1, y2 for the other two prompts)
    # The replay found every answer (it would have failed those pairs otherwise) and sent nothing.
    assert runs.read_text().count("\n") == commands_before + summary["batch"]["batches_created"]
    tokens = record["tokens_in"] + record["tokens_out"]
    assert tokens > 0 and record["cost_usd"] == pytest.approx(tokens * 1.0 / 1e6)  # half of $2 per million


# --------------------------------------------------------------------------- the openai transport


@pytest.mark.server
def test_batch_pairs_equal_online_pairs_and_nothing_is_paid_twice(tmp_path: Path):
    """Several polls per batch, resamples with fresh seeds, the judge filter: the same pairs as online."""
    with batch_server(tmp_path / "server", polls=3, api_key=SECRET) as server:
        online = run(run_generate(config(tmp_path, server, "online", batch=ONLINE, filter=True)))
        chat_requests = server.counters()["chat_requests"]
        batch = run(run_generate(config(tmp_path, server, "batch", batch=FAST_POLLS, filter=True)))
        counters = server.counters()
    assert online.pairs_total + online.filtered == 6 and batch.pairs_total == online.pairs_total
    assert (tmp_path / "batch" / "pairs.jsonl").read_bytes() == (tmp_path / "online" / "pairs.jsonl").read_bytes()
    assert (tmp_path / "batch" / "pairs.filtered.jsonl").exists() == (tmp_path / "online" / "pairs.filtered.jsonl").exists()
    # The same requests, each answered once: as many batch lines as online calls, no duplicates.
    assert counters["lines_answered"] == chat_requests and counters.get("duplicates", 0) == 0
    assert counters["chat_requests"] == chat_requests  # batch mode made no online call
    # y1, y2 (+ resample rounds), the judge's two orders in one round.
    assert batch.batch["rounds"] == counters["batches_created"] >= 3
    assert counters["polls"] >= 3 * counters["batches_created"]
    assert batch.usage["y1"]["calls"] == online.usage["y1"]["calls"]
    assert batch.usage["y1"]["tokens_in"] == online.usage["y1"]["tokens_in"] > 0
    # A re-run reads every answer from the cache: no batch at all.
    again = run(run_generate(config(tmp_path, server=server, name="batch", batch=FAST_POLLS, filter=True)))
    assert again.pairs_written == 0 and again.batch["rounds"] == 0
    assert key_in_files(tmp_path / "batch", SECRET) == []


@pytest.mark.server
def test_an_expired_batch_resubmits_only_its_unanswered_requests(tmp_path: Path):
    with batch_server(tmp_path / "server", expire=1) as server:
        summary = run(run_generate(config(tmp_path, server, "batch", batch=FAST_POLLS, labels="worse")))
        batches = sorted(server.state.batches(), key=lambda b: b["_seq"])
        counters = server.counters()
    first, second = batches[0], batches[1]
    assert first["status"] == "expired" and first["request_counts"]["total"] == 6
    answered = server.state.custom_ids(first["output_file_id"])
    unanswered = server.state.custom_ids(first["error_file_id"])
    resent = server.state.custom_ids(second["input_file_id"])
    assert len(answered) == len(unanswered) == 3
    assert unanswered <= resent and not answered & resent  # only the unanswered half went out again
    assert counters.get("duplicates", 0) == 0 and summary.pairs_total == 6 and summary.failures == {}


@pytest.mark.server
def test_per_request_errors_are_retried_then_recorded_as_failures(tmp_path: Path):
    with batch_server(tmp_path / "server", flaky=2, reject="POISON") as server:
        summary = run(run_generate(config(tmp_path, server, "batch", batch=FAST_POLLS, poison=3)))
        counters = server.counters()
    flaked = (server.state_dir / "flaked.txt").read_text().split()
    assert flaked, "no request failed with a 500; the test would prove nothing"
    failures = read_jsonl(tmp_path / "batch" / "pairs.failures.jsonl")
    assert [(f["id"], f["step"], f["reason"]) for f in failures] == [("p3", "y1", "http_400")]
    assert "scripted rejection" in failures[0]["attempts"][0]["error"]
    assert summary.pairs_total == 5 and counters.get("duplicates", 0) == 0


@pytest.mark.server
def test_retryable_errors_give_up_after_max_attempts(tmp_path: Path):
    with batch_server(tmp_path / "server", expire=100) as server:  # every batch expires half done
        run(run_generate(config(tmp_path, server, "batch", batch=FAST_POLLS, n=4, max_attempts=2)))
    expired = [f for f in read_jsonl(tmp_path / "batch" / "pairs.failures.jsonl") if f["reason"] == "batch_expired"]
    assert expired, "no request ran out of batch attempts; the test would prove nothing"
    assert all("after 2 batch(es)" in f["attempts"][-1]["error"] for f in expired)


def cli(tmp: Path, server: BatchServer, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rmboost.cli", "generate", "--input", str(write_prompts(tmp / "prompts.jsonl", 6)),
            "--output", str(tmp / "job" / "pairs.jsonl"), "--cache", str(tmp / "job" / "cache.sqlite"),
            "--backend", "openai", "--base-url", server.base_url, "--model", MODEL, "--api-key-env", KEY_ENV,
            "--batch", "--batch-poll", "0.02", "--batch-poll-max", "0.1", "--max-retries", "10",
            "--no-progress", *extra]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), KEY_ENV: SECRET}


@pytest.mark.server
def test_a_job_killed_after_creating_a_batch_reattaches_to_it(tmp_path: Path):
    with batch_server(tmp_path / "server", polls=10**9) as server:  # batches wait until told otherwise
        job = subprocess.Popen(cli(tmp_path, server), env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: server.counters().get("polls", 0) >= 2, "the first batch to be created and polled")
        finally:
            job.send_signal(signal.SIGKILL)
            job.wait()
        assert server.counters()["batches_created"] == 1
        server.configure(polls=2)
        done = subprocess.run(cli(tmp_path, server), env=env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        counters = server.counters()
    summary = json.loads((tmp_path / "job" / "pairs.summary.json").read_text())
    assert summary["pairs_total"] + sum(summary["failures"].values()) == 6
    assert summary["batch"]["batches_attached"] == 1  # the killed run's batch, not a new one
    assert counters["batches_created"] == 1 + summary["batch"]["batches_created"]
    assert counters["files_uploaded"] == counters["batches_created"]
    assert counters.get("duplicates", 0) == 0
    assert "already sent by an earlier run" in done.stderr


@pytest.mark.server
def test_a_server_restart_between_polls_loses_nothing(tmp_path: Path):
    with batch_server(tmp_path / "server", polls=10**9) as server:
        job = subprocess.Popen(cli(tmp_path, server), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        try:
            wait_for(lambda: server.counters().get("polls", 0) >= 2, "the first batch to be polled")
            server.stop()
            server.configure(polls=server.state.counters()["polls"] + 3)
            server.start()  # same port, same state folder
            _, stderr = job.communicate(timeout=300)
        finally:
            if job.poll() is None:
                job.kill()
        counters = server.counters()
    assert job.returncode == 0, stderr[-3000:]
    summary = json.loads((tmp_path / "job" / "pairs.summary.json").read_text())
    assert summary["pairs_total"] == 6 and summary["batch"]["rounds"] == counters["batches_created"]
    assert counters.get("duplicates", 0) == 0


# --------------------------------------------------------------------------- the command transport


def command(*extra: str) -> str:
    return f"{sys.executable} {TESTS / 'answer_batch.py'} -i {{input}} -o {{output}} " + " ".join(extra)


@pytest.mark.server
def test_command_transport_end_to_end_then_filter(tmp_path: Path):
    """rmboost generate and rmboost filter through a command that answers a request file."""
    with batch_server(tmp_path / "server") as server:  # only for the online reference run
        online = run(run_generate(config(tmp_path, server, "online", batch=ONLINE)))
    opts = BatchOptions(enabled=True, transport="command", command=command(), poll_interval=0.02, workdir=tmp_path / "work",
                        max_requests=4)  # a round of 6 requests goes out as two batch files
    cfg = GenerateConfig(task="qa_feedback", input=str(tmp_path / "prompts.jsonl"), output=tmp_path / "cmd" / "pairs.jsonl",
                         backend=BackendOptions(model=MODEL), cache=tmp_path / "cmd.sqlite", show_progress=False,
                         batch=opts)
    summary = run(run_generate(cfg))
    assert summary.pairs_total == online.pairs_total == 6
    assert summary.batch["batches_created"] > summary.batch["rounds"] >= 2

    def content(path: Path) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k not in ("request_ids", "model")} for r in read_jsonl(path)]

    assert content(tmp_path / "cmd" / "pairs.jsonl") == content(tmp_path / "online" / "pairs.jsonl")
    assert list((tmp_path / "work").iterdir()) == []  # batch files are removed once read

    filtered = CliRunner().invoke(app, [
        "filter", str(tmp_path / "cmd" / "pairs.jsonl"), "--output", str(tmp_path / "kept.jsonl"), "--model", MODEL,
        "--cache", str(tmp_path / "cmd.sqlite"), "--batch", "--batch-transport", "command",
        "--batch-command", command(), "--batch-poll", "0.02", "--batch-dir", str(tmp_path / "work"),
    ])
    assert filtered.exit_code == 0, filtered.output
    assert "batch round 1: 12 requests" in filtered.output  # both orders of all six pairs, in one round
    kept, removed = read_jsonl(tmp_path / "kept.jsonl"), read_jsonl(tmp_path / "kept.filtered.jsonl")
    assert len(kept) + len(removed) == 6 and all(r["filter"]["winner"] for r in removed)


def test_a_failing_command_stops_the_job_and_keeps_what_it_wrote(tmp_path: Path):
    write_prompts(tmp_path / "prompts.jsonl", 6)
    opts = BatchOptions(enabled=True, transport="command", command=command("--fail-after 2"), poll_interval=0.02,
                        workdir=tmp_path / "work")
    cfg = GenerateConfig(task="qa_feedback", input=str(tmp_path / "prompts.jsonl"), output=tmp_path / "pairs.jsonl",
                         backend=BackendOptions(model=MODEL), cache=tmp_path / "c.sqlite", show_progress=False,
                         batch=opts, labels="worse")
    from rmboost.llm.types import FatalLLMError

    with pytest.raises(FatalLLMError, match="exited with status 3"):
        run(run_generate(cfg))
    # The two answers it wrote are in the cache: the next run (a working command) sends only the rest.
    summary = run(run_generate(replace(cfg, batch=replace(opts, command=command()))))
    assert summary.pairs_total == 6
    assert summary.usage["y1"]["cache_hits"] == 2  # written by the failed run, read then, not asked again


@pytest.mark.slow
def test_a_killed_job_waits_for_the_command_it_started(tmp_path: Path):
    """The command outlives a SIGKILLed rmboost; the next run re-attaches to that process."""
    runs, go = tmp_path / "runs.txt", tmp_path / "go"
    job_cmd = [sys.executable, "-m", "rmboost.cli", "generate", "--input", str(write_prompts(tmp_path / "p.jsonl", 4)),
               "--output", str(tmp_path / "out" / "pairs.jsonl"), "--cache", str(tmp_path / "c.sqlite"),
               "--model", MODEL, "--batch", "--batch-transport", "command", "--batch-poll", "0.02",
               "--batch-command", command("--count", str(runs), "--wait-for", str(go)),
               "--batch-dir", str(tmp_path / "work"), "--no-progress"]
    first = subprocess.Popen(job_cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: runs.exists() and runs.read_text().count("\n") == 1, "the batch command to start")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    log = tmp_path / "second.log"
    with log.open("w") as fh:
        second = subprocess.Popen(job_cmd, env=env(), stdout=subprocess.DEVNULL, stderr=fh)
    try:
        # While the old command still runs, the new job waits on it rather than starting another.
        wait_for(lambda: "already sent" in log.read_text(), "the second run to re-attach")
        assert runs.read_text().count("\n") == 1
        go.touch()  # the first run's command answers now
        second.wait(timeout=300)
    finally:
        go.touch()
        if second.poll() is None:
            second.kill()
    stderr = log.read_text()
    assert second.returncode == 0, stderr[-3000:]
    assert "already sent by an earlier run" in stderr
    started = runs.read_text().splitlines()
    summary = json.loads((tmp_path / "out" / "pairs.summary.json").read_text())
    # Round 1's command ran once (started by the killed run); every later round started one more.
    assert len(started) == 1 + summary["batch"]["batches_created"]
    assert summary["batch"]["batches_attached"] == 1 and summary["pairs_total"] == 4


@pytest.mark.server
def test_a_run_killed_between_creating_a_batch_and_recording_it_finds_it(tmp_path: Path, monkeypatch):
    """The batch's input file id is recorded before the batch is created; a restart looks it up."""
    from rmboost.llm.batch_store import BatchStore

    original = BatchStore.update

    def lose_the_batch_id(self: BatchStore, batch_id: str, **fields: Any) -> None:
        if fields.get("state") == "submitted":
            raise RuntimeError("killed before the batch id was recorded")
        original(self, batch_id, **fields)

    with batch_server(tmp_path / "server") as server:
        cfg = config(tmp_path, server, "batch", batch=FAST_POLLS, n=4)
        monkeypatch.setattr(BatchStore, "update", lose_the_batch_id)
        with pytest.raises(RuntimeError, match="killed before"):
            run(run_generate(cfg))
        assert server.counters()["batches_created"] == 1
        monkeypatch.setattr(BatchStore, "update", original)
        summary = run(run_generate(cfg))
        counters = server.counters()
    assert summary.batch["batches_attached"] == 1
    assert summary.pairs_total + sum(summary.failures.values()) == 4
    assert counters["batches_created"] == 1 + summary.batch["batches_created"]
    assert counters["files_uploaded"] == counters["batches_created"]  # the first file was not uploaded again
    assert counters.get("duplicates", 0) == 0


@pytest.mark.parametrize(("method", "first_round"), [("west-of-n", 4 * 3), ("rlaif", 4)])
def test_baselines_in_batch_mode_ask_independent_requests_in_one_round(tmp_path: Path, method: str, first_round: int):
    """West-of-N's N samples go out together; so do the judge's two orders and its N ratings."""
    import io

    from rich.console import Console

    write_prompts(tmp_path / "prompts.jsonl", 4)
    opts = BatchOptions(enabled=True, transport="command", command=command(), poll_interval=0.02, workdir=tmp_path / "work")
    cfg = GenerateConfig(task="qa_feedback", input=str(tmp_path / "prompts.jsonl"), output=tmp_path / "pairs.jsonl",
                         method=method, n=3, backend=BackendOptions(model=MODEL), cache=tmp_path / "c.sqlite",
                         show_progress=False, batch=opts)
    text = io.StringIO()
    summary = run(run_generate(cfg, Console(file=text, width=200)))
    assert f"batch round 1: {first_round} requests" in text.getvalue()
    assert summary.pairs_total + sum(summary.failures.values()) == 4 and summary.pairs_total >= 1
    judged = summary.judge_usage["score" if method == "west-of-n" else "judge"]
    assert judged["calls"] >= 2 * summary.pairs_total


@pytest.mark.parametrize("rows", [0, 4])
def test_a_round_holds_every_prompt_in_flight_from_the_streamed_input(tmp_path: Path, rows: int):
    """Prompts stream from the input through a bounded queue: a round still holds one request for each
    of --batch-rows prompts (all of them with 0), however small --concurrency is; a resumed job's
    first round holds exactly the prompts still to do."""
    import io
    import re

    from rich.console import Console

    write_prompts(tmp_path / "prompts.jsonl", 10)
    opts = BatchOptions(enabled=True, transport="command", command=command(), poll_interval=0.02,
                        workdir=tmp_path / "work", rows=rows)
    cfg = GenerateConfig(task="qa_feedback", input=str(tmp_path / "prompts.jsonl"), output=tmp_path / "pairs.jsonl",
                         backend=BackendOptions(model=MODEL), cache=tmp_path / "c.sqlite", show_progress=False,
                         batch=opts, concurrency=1, limit=7)
    text = io.StringIO()
    first = run(run_generate(cfg, Console(file=text, width=200)))
    sizes = [int(n) for n in re.findall(r"batch round \d+: (\d+) requests", text.getvalue())]
    assert sizes[0] == (rows or 7) and max(sizes) <= (rows or 7)
    assert first.pairs_total + sum(first.failures.values()) == 7

    text = io.StringIO()  # the whole input now: the 3 prompts past --limit are the only ones to do
    again = run(run_generate(replace(cfg, limit=None), Console(file=text, width=200)))
    assert f"batch round 1: {min(rows or 10, 10 - first.pairs_total)} requests" in text.getvalue()
    assert again.resumed == first.pairs_total and again.pairs_total + sum(again.failures.values()) == 10


# --------------------------------------------------------------------------- reading a large batch


async def ask_in_one_batch(cache_path: Path, workdir: Path, n: int, count: Path) -> tuple[list[Any], dict[str, Any]]:
    """n different requests through a BatchRunner with the command transport: one round, one batch."""
    from rmboost.llm import LLM
    from rmboost.llm.batch import BatchRunner
    from rmboost.llm.batch_command import CommandBackend
    from rmboost.llm.cache import RequestCache

    cache = RequestCache(cache_path)
    runner = BatchRunner(cache, BatchOptions(enabled=True, transport="command", command=command("--count", str(count)),
                                             poll_interval=0.02, workdir=workdir))
    llm = LLM(CommandBackend(MODEL), cache)
    runner.attach(llm, BackendOptions(model=MODEL))
    params = SamplingParams(max_tokens=16)
    try:
        answers = await asyncio.gather(*(llm.complete([{"role": "user", "content": f"Question {i}?"}], params,
                                                      step="y1") for i in range(n)))
    finally:
        await runner.aclose()
        cache.close()
    return answers, runner.summary()


class AnswerTransactions:
    """Counts the SQLite transactions that write answers (`requests` rows) or batch outcomes, on
    every connection opened while it is installed: a BEGIN..COMMIT holding such a write, or
    such a statement run on its own (autocommit)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.count = 0
        connect = sqlite3.connect

        def counting_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            db = connect(*args, **kwargs)
            state = {"open": False, "writes": False}

            def trace(sql: str) -> None:
                head = sql.lstrip().split(None, 1)[0].upper()
                if head == "BEGIN":
                    state.update(open=True, writes=False)
                elif head in ("COMMIT", "END", "ROLLBACK"):
                    self.count += head != "ROLLBACK" and state["writes"]
                    state.update(open=False, writes=False)
                elif "INTO requests " in sql or sql.startswith("UPDATE batch_requests"):
                    if state["open"]:
                        state["writes"] = True
                    else:
                        self.count += 1

            db.set_trace_callback(trace)
            return db

        monkeypatch.setattr(sqlite3, "connect", counting_connect)


def test_a_batch_read_commits_its_answers_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Answers read from one result file go into the cache READ_CHUNK to a transaction (their
    outcomes too), not one transaction each."""
    from rmboost.llm.batch import READ_CHUNK
    from rmboost.llm.batch_store import BatchStore
    from rmboost.llm.cache import RequestCache

    n = 2 * READ_CHUNK + READ_CHUNK // 2
    transactions = AnswerTransactions(monkeypatch)
    answers, summary = run(ask_in_one_batch(tmp_path / "c.sqlite", tmp_path / "work", n, tmp_path / "runs.txt"))
    assert summary["batches_created"] == 1 and len(answers) == n
    assert len({a.text for a in answers}) > n // 2 and not any(a.cached for a in answers)
    # 3 chunks: 3 transactions of answers and 3 of outcomes (one each per answer before).
    assert 0 < transactions.count <= 2 * math.ceil(n / READ_CHUNK)
    assert len(RequestCache(tmp_path / "c.sqlite")) == n
    store = BatchStore(tmp_path / "c.sqlite")
    [batch] = store.batches()
    assert batch.state == "done" and set(store.outcomes(batch.id).values()) == {"ok"}
    store.close()


KILL_AT_SECOND_COMMIT = """
import asyncio, os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_batch import ask_in_one_batch
from rmboost.llm.cache import RequestCache

commit = RequestCache.commit
commits = []

def commit_then_die(self):
    commits.append(1)
    if len(commits) == 2:  # the second chunk is read, not committed yet
        os.kill(os.getpid(), signal.SIGKILL)
    commit(self)

RequestCache.commit = commit_then_die
asyncio.run(ask_in_one_batch(Path({cache!r}), Path({work!r}), {n}, Path({count!r})))
"""


def test_a_run_killed_while_reading_a_batch_reads_it_again_and_pays_nothing(tmp_path: Path):
    """kill -9 between two chunks of a batch read: the first chunk is in the cache, the batch is
    still `reading`; the next run reads the same result file again, sending no new batch."""
    from rmboost.llm.batch import READ_CHUNK
    from rmboost.llm.batch_store import BatchStore
    from rmboost.llm.cache import RequestCache

    n = 2 * READ_CHUNK + 10
    cache, work, count = tmp_path / "c.sqlite", tmp_path / "work", tmp_path / "runs.txt"
    child = KILL_AT_SECOND_COMMIT.format(tests=str(TESTS), cache=str(cache), work=str(work), n=n, count=str(count))
    killed = subprocess.run([sys.executable, "-c", child], env=env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert len(RequestCache(cache)) == READ_CHUNK  # the first chunk only
    store = BatchStore(cache)
    [batch] = store.batches()
    assert batch.state == "reading"
    store.close()

    answers, summary = run(ask_in_one_batch(cache, work, n, count))
    assert len(answers) == n and sum(not a.cached for a in answers) == n - READ_CHUNK
    assert summary["batches_created"] == 0 and summary["batches_attached"] == 1
    assert count.read_text().count("\n") == 1  # the batch command ran once, in the killed run
    assert len(RequestCache(cache)) == n
    store = BatchStore(cache)
    assert [b.state for b in store.batches()] == ["done"]
    store.close()


def test_an_error_while_reading_a_batch_keeps_what_was_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A result file that breaks off (a failed download): the answers read so far are committed,
    the batch stays `reading`, and the next run reads it again without a new batch."""
    from rmboost.llm.batch import READ_CHUNK
    from rmboost.llm.batch_command import CommandBatchTransport
    from rmboost.llm.cache import RequestCache

    results = CommandBatchTransport.results
    n, cut = 2 * READ_CHUNK, READ_CHUNK + READ_CHUNK // 2

    async def breaking_off(self: CommandBatchTransport, record: Any) -> Any:
        read = 0
        async for obj in results(self, record):
            if read == cut:
                raise OSError("the result file went away")
            read += 1
            yield obj

    monkeypatch.setattr(CommandBatchTransport, "results", breaking_off)
    cache, work, count = tmp_path / "c.sqlite", tmp_path / "work", tmp_path / "runs.txt"
    with pytest.raises(OSError, match="went away"):
        run(ask_in_one_batch(cache, work, n, count))
    assert len(RequestCache(cache)) == cut

    monkeypatch.setattr(CommandBatchTransport, "results", results)
    answers, summary = run(ask_in_one_batch(cache, work, n, count))
    assert len(answers) == n and sum(a.cached for a in answers) == cut
    assert summary["batches_created"] == 0 and summary["batches_attached"] == 1
    assert count.read_text().count("\n") == 1


def test_a_resumed_round_waits_while_the_job_reads_past_finished_prompts(tmp_path: Path):
    """Long stretches of finished prompts between the few still to do: the job hands the event
    loop a turn every SCAN_CHUNK rows it skips, and the round does not take those quiet turns for
    the end of the round; it holds every prompt still to do."""
    import io

    from rich.console import Console

    from rmboost.data.job_index import SCAN_CHUNK

    n = 16 * SCAN_CHUNK
    todo = {0, n // 2, n - 1}  # 8 * SCAN_CHUNK finished rows between two of them
    prompts = write_prompts(tmp_path / "prompts.jsonl", n)
    out = tmp_path / "out" / "pairs.jsonl"
    out.parent.mkdir()
    with out.open("w") as fh:
        for i in range(n):
            if i not in todo:
                fh.write(json.dumps({"id": f"p{i}", "prompt": "p", "chosen": "c", "rejected": "r", "label": "worse"})
                         + "\n")
    opts = BatchOptions(enabled=True, transport="command", command=command(), poll_interval=0.02,
                        workdir=tmp_path / "work")
    cfg = GenerateConfig(task="qa_feedback", input=str(prompts), output=out, backend=BackendOptions(model=MODEL),
                         cache=tmp_path / "c.sqlite", show_progress=False, batch=opts, labels="worse")
    text = io.StringIO()
    summary = run(run_generate(cfg, Console(file=text, width=200)))
    assert "batch round 1: 3 requests" in text.getvalue(), text.getvalue()
    assert summary.resumed == n - 3 and summary.pairs_total + sum(summary.failures.values()) == n
