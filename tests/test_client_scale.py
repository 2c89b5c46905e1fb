"""The openai backend at scale and under failure, against the fast fake server in its own process
(benchmarks/fake_openai_server.py). Every assertion reads counts (the server's own counters, the
client's limit, the files), never a clock."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sqlite3
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
from conftest import read_jsonl, run
from servers import FAKE_MODEL, fake_openai_server, free_port, key_in_files
from typer.testing import CliRunner

from rmboost.cli import app
from rmboost.llm import FatalLLMError, LLMError, SamplingParams
from rmboost.llm.openai_compat import OpenAIBackend
from rmboost.methods.judge import p_first_from_logprobs

pytestmark = pytest.mark.server

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "rmboost" / "data" / "samples" / "qa_feedback.jsonl"
KEY_ENV = "RMBOOST_TEST_FAKE_KEY"


def prompts(path: Path, n: int) -> Path:
    """n QA-Feedback prompts (the shipped samples, made unique), one JSON object a line."""
    rows = [json.loads(line) for line in SAMPLES.read_text("utf-8").splitlines() if line.strip()]
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            row = dict(rows[i % len(rows)], id=f"p{i:04d}")
            row["question"] += f" (case {i})"
            fh.write(json.dumps(row) + "\n")
    return path


def generate(urls: list[str], tmp: Path, *extra: str, inputs: Path, output: Path | None = None, progress: bool = False):
    output = output or tmp / "out" / "pairs.jsonl"
    args = ["generate", "--backend", "openai", "--model", FAKE_MODEL, "--api-key-env", KEY_ENV,
            "--input", str(inputs), "--output", str(output), "--cache", str(tmp / "cache.sqlite"),
            "--progress" if progress else "--no-progress", *extra]  # fmt: skip
    for url in urls:
        args += ["--base-url", url]
    return CliRunner().invoke(app, args)


def summary_of(output: Path) -> dict:
    return json.loads(output.with_name("pairs.summary.json").read_text("utf-8"))


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------- throughput guard rail


def test_requests_in_flight_really_reach_the_concurrency(tmp_path: Path):
    """512 prompts at --concurrency 512: the server holds every answer until 512 requests are in
    flight at once (it gives up after 120 s), so only a client that really has 512 in flight can
    make its counter read 512: no pool cap, no hidden semaphore, no clock in the assertion."""
    inputs = prompts(tmp_path / "p.jsonl", 512)
    with fake_openai_server("--latency", "0", "--hold-until", "512", "--hold-timeout", "120") as server:
        result = generate([server.base_url], tmp_path, "--concurrency", "512", inputs=inputs)
        stats = server.stats()
    assert result.exit_code == 0, result.output
    assert stats["max_in_flight"] == 512
    assert stats["requests"] == 1024 and stats["errors"] == 0  # y1 and y2 for each prompt
    output = tmp_path / "out" / "pairs.jsonl"
    assert len(read_jsonl(output)) == 512
    assert summary_of(output)["llm_calls"] == 1024


# --------------------------------------------------------------------------- adaptive concurrency


def test_a_429_burst_lowers_the_in_flight_limit_and_successes_bring_it_back():
    """The first 300 requests the server sees are 429s (Retry-After: 0). 64 workers keep sending:
    the limit halves (once per burst, not once per 429) and climbs back to 64 as answers come."""
    with fake_openai_server("--latency", "0.02", "--burst-429", "1", "300", "--retry-after", "0") as server:
        backend = OpenAIBackend(server.base_url, FAKE_MODEL, max_in_flight=64, max_retries=50,
                                backoff_base=0.001, api_key_env=KEY_ENV)  # fmt: skip
        statuses: list[str] = []

        async def worker(w: int) -> None:
            for i in range(12):
                messages = [{"role": "user", "content": f"worker {w} request {i}"}]
                await backend.complete(messages, SamplingParams(max_tokens=8))
                statuses.append(backend.load_status())

        async def go() -> None:
            try:
                await asyncio.gather(*(worker(w) for w in range(64)))
            finally:
                await backend.aclose()

        run(go())
        stats = server.stats()
    limit = backend.limit
    assert limit is not None
    assert stats["errors"] == 300 and stats["answered"] == 64 * 12
    assert limit.decreases >= 1 and limit.lowest <= 32, "the burst must lower the limit"
    assert limit.decreases < 300, "one halving per burst generation, not one per 429"
    assert limit.limit == 64, "successes must bring the limit back to --concurrency"
    assert any(f"limit {n}/64" in s for s in statuses for n in range(1, 33)), "the progress line shows the lowered limit"
    assert statuses[-1].endswith("limit 64/64")


# --------------------------------------------------------------------------- circuit breaker


def test_the_breaker_stops_a_failing_job_with_one_line_and_keeps_finished_pairs(tmp_path: Path):
    """Four answers (two pairs), then HTTP 500 for ever. After three failed requests in a row
    the job stops: exit 2, one error line, the two pairs on disk, no request after that."""
    inputs = prompts(tmp_path / "p.jsonl", 20)
    with fake_openai_server("--latency", "0", "--fail-after", "4") as server:
        result = generate([server.base_url], tmp_path, "--concurrency", "1", "--max-retries", "0",
                          "--breaker-failures", "3", "--breaker-seconds", "0", inputs=inputs)  # fmt: skip
        stats = server.stats()
    assert result.exit_code == 2, result.output
    errors = error_lines(result.output)
    assert len(errors) == 1, result.output
    assert "3 requests in a row failed" in errors[0] and server.base_url in errors[0] and "http_500" in errors[0]
    assert "re-run to resume" in errors[0]
    pairs = read_jsonl(tmp_path / "out" / "pairs.jsonl")
    assert [p["id"] for p in pairs] == ["p0000", "p0001"]
    assert stats["requests"] == 4 + 3, "nothing is sent once the breaker is open"
    assert "Traceback" not in result.output


def test_the_breaker_also_stops_after_seconds_of_nothing_but_failures(tmp_path: Path):
    inputs = prompts(tmp_path / "p.jsonl", 4)
    with fake_openai_server("--latency", "0", "--fail-after", "0", "--error-status", "503") as server:
        result = generate([server.base_url], tmp_path, "--max-retries", "100", "--breaker-failures", "0",
                          "--breaker-seconds", "1", inputs=inputs)  # fmt: skip
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result.output)
    assert "every request failed for" in line and "--breaker-seconds 1" in line and "http_503" in line


# --------------------------------------------------------------------------- replicas


def test_a_replica_that_dies_mid_job_loses_and_duplicates_no_pair(tmp_path: Path):
    """Two replicas; one exits at once (connections reset, answers lost) when its 15th request
    arrives. Every prompt still becomes exactly one pair, none twice, no failure."""
    inputs = prompts(tmp_path / "p.jsonl", 30)
    with fake_openai_server("--latency", "0.05", "--die-after", "15") as a, fake_openai_server("--latency", "0.05") as b:
        result = generate([a.base_url, b.base_url], tmp_path, "--concurrency", "6", inputs=inputs, progress=True)
        assert a.process.wait(timeout=30) == 3, "replica A must have died"
        b_stats = b.stats()
    assert result.exit_code == 0, result.output
    output = tmp_path / "out" / "pairs.jsonl"
    ids = [p["id"] for p in read_jsonl(output)]
    assert sorted(ids) == [f"p{i:04d}" for i in range(30)], "no pair lost, none twice"
    first = summary_of(output)
    assert first["pairs_written"] == 30 and not first["failures"]
    assert b_stats["answered"] >= 60 - 14, "B took over what A could not answer"
    progress_lines = [line for line in result.output.splitlines() if " finished | " in line]
    assert progress_lines and "limit 6/6" in progress_lines[-1] and "replicas up" in progress_lines[-1]


def test_replica_order_and_cache_identity_keep_cache_hits(tmp_path: Path):
    inputs = prompts(tmp_path / "p.jsonl", 6)
    with fake_openai_server("--latency", "0") as a, fake_openai_server("--latency", "0") as b:
        first = generate([a.base_url, b.base_url], tmp_path, "--concurrency", "3", inputs=inputs)
        swapped = generate([b.base_url, a.base_url], tmp_path, inputs=inputs, output=tmp_path / "swap" / "pairs.jsonl")
        named = generate([a.base_url, b.base_url], tmp_path, "--cache-identity", "fake-deploy", inputs=inputs,
                         output=tmp_path / "named" / "pairs.jsonl")  # fmt: skip
        named_one = generate([b.base_url], tmp_path, "--cache-identity", "fake-deploy", inputs=inputs,
                             output=tmp_path / "named1" / "pairs.jsonl")  # fmt: skip
    for result in (first, swapped, named, named_one):
        assert result.exit_code == 0, result.output
    assert summary_of(tmp_path / "out" / "pairs.jsonl")["llm_calls"] == 12
    assert summary_of(tmp_path / "swap" / "pairs.jsonl")["llm_calls"] == 0
    assert (tmp_path / "swap" / "pairs.jsonl").read_bytes() == (tmp_path / "out" / "pairs.jsonl").read_bytes()
    assert summary_of(tmp_path / "named" / "pairs.jsonl")["llm_calls"] == 12  # a new identity: new keys
    assert summary_of(tmp_path / "named1" / "pairs.jsonl")["llm_calls"] == 0  # same name, one replica: hits


# --------------------------------------------------------------------------- the key stays secret


def test_the_api_key_is_in_no_file_output_or_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    key = f"sk-fake-{secrets.token_hex(16)}"
    monkeypatch.setenv(KEY_ENV, key)
    inputs = prompts(tmp_path / "p.jsonl", 4)
    with fake_openai_server("--latency", "0", "--api-key", key) as server:
        ok = generate([server.base_url], tmp_path, "--concurrency", "2", inputs=inputs)
        # A server that repeats the Authorization header in a 400 message: redacted.
        backend = OpenAIBackend(server.base_url, FAKE_MODEL, api_key_env=KEY_ENV)

        async def bad_request() -> None:
            try:
                await backend.complete([{"role": "user", "content": "FAKE_BAD_REQUEST"}], SamplingParams())
            finally:
                await backend.aclose()

        with pytest.raises(LLMError) as err:
            run(bad_request())
        monkeypatch.setenv(KEY_ENV, "sk-wrong-" + key[-8:])
        rejected = generate([server.base_url], tmp_path, inputs=inputs, output=tmp_path / "r" / "pairs.jsonl")
    assert ok.exit_code == 0 and key not in ok.output
    assert "<redacted>" in str(err.value) and key not in "".join(traceback.format_exception(err.value))
    assert rejected.exit_code == 2 and f"${KEY_ENV}" in rejected.output and key[-8:] not in rejected.output
    assert len(read_jsonl(tmp_path / "out" / "pairs.jsonl")) == 4
    assert key_in_files(tmp_path, key) == []


# --------------------------------------------------------------------------- log-probabilities


def test_logprobs_come_back_in_the_shape_the_judge_reads():
    with fake_openai_server("--latency", "0") as server:
        backend = OpenAIBackend(server.base_url, FAKE_MODEL, api_key_env=KEY_ENV)

        async def go():
            try:
                return await backend.complete([{"role": "user", "content": "A or B?"}], SamplingParams(max_tokens=1, logprobs=5))
            finally:
                await backend.aclose()

        completion = run(go())
    assert completion.logprobs and completion.logprobs[0]["token"] == "first"
    assert p_first_from_logprobs(completion.logprobs) == pytest.approx(0.7 / 0.9)


# --------------------------------------------------------------------------- kill -9


def test_kill_9_mid_job_keeps_every_answer_a_pair_used_and_resume_pays_nothing_twice(tmp_path: Path):
    """Answers are committed once per event-loop tick, and a request returns only after its row
    is committed. So after kill -9: every finished pair's answers are in the cache; the resumed
    job asks only for what is in neither the output nor the cache."""
    n, output, cache = 40, tmp_path / "out" / "pairs.jsonl", tmp_path / "cache.sqlite"
    inputs = prompts(tmp_path / "p.jsonl", n)
    with fake_openai_server("--latency", "0.1") as server:
        cmd = [sys.executable, "-m", "rmboost.cli", "generate", "--backend", "openai", "--base-url", server.base_url,
               "--model", FAKE_MODEL, "--api-key-env", KEY_ENV, "--input", str(inputs), "--output", str(output),
               "--cache", str(cache), "--concurrency", "8", "--no-progress"]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while len(_finished_lines(output)) < 10:  # waits for progress; asserts nothing about time
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=30)
        answered_before = server.stats()["answered"]
        done = [json.loads(line) for line in _finished_lines(output)]
        with sqlite3.connect(cache) as db:
            cached = {row[0] for row in db.execute("SELECT key FROM requests")}
        assert done and all(set(p["request_ids"]) <= cached for p in done), "a pair built on an unsaved answer"
        assert len(done) < n, "killed too late to test anything"
        assert answered_before - len(cached) <= 8, "lost more than the answers in flight"

        resumed = generate([server.base_url], tmp_path, "--concurrency", "8", inputs=inputs)
        total_answered = server.stats()["answered"]
    assert resumed.exit_code == 0, resumed.output
    s = summary_of(output)
    assert s["resumed"] == len(done) and s["pairs_total"] == n
    reusable = len(cached) - 2 * len(done)  # answers of prompts that had no pair yet
    assert s["cache_hits"] == reusable
    assert s["llm_calls"] == 2 * (n - len(done)) - reusable, "an answer in the cache was paid again"
    assert total_answered - answered_before == s["llm_calls"]
    assert sorted(p["id"] for p in read_jsonl(output)) == [f"p{i:04d}" for i in range(n)]


def _finished_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text("utf-8").splitlines(keepends=True) if line.endswith("\n")]


def test_a_proxy_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch):
    """HTTP_PROXY names the fake server; the endpoint's host does not exist. The request can
    only be answered if it went through the proxy (the fake server answers absolute URIs)."""
    with fake_openai_server("--latency", "0") as proxy:
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        backend = OpenAIBackend("http://rmboost-no-such-host.invalid:8000/v1", FAKE_MODEL, api_key_env=KEY_ENV)

        async def go():
            try:
                await backend.check()
                return await backend.complete([{"role": "user", "content": "via the proxy"}], SamplingParams())
            finally:
                await backend.aclose()

        completion = run(go())
        stats = proxy.stats()
    assert completion.text.startswith("<response>Answer ")
    assert stats["answered"] == 1


UVICORN_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def models(request):
    return JSONResponse({"object": "list", "data": [{"id": "uvicorn-model"}]})

async def chat(request):
    body = await request.json()
    text = "<response>" + body["messages"][-1]["content"][::-1] + "</response>"
    return JSONResponse({"model": "uvicorn-model", "choices": [{"message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})

app = Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), timeout_keep_alive=1, log_level="warning")
"""


def test_the_http_client_against_uvicorn_which_closes_idle_connections(tmp_path: Path):
    """The server stack vLLM and llama_cpp.server run on. uvicorn closes a connection idle for
    more than a second (here): the next request must not fail on the closed connection (a new
    one is opened, or the request is sent again on one), nor count as a failure."""
    port = free_port()
    app = tmp_path / "app.py"
    app.write_text(UVICORN_APP, "utf-8")
    proc = subprocess.Popen([sys.executable, str(app), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "uvicorn-model", api_key_env=KEY_ENV, max_retries=0)

    async def go() -> list[str]:
        for _ in range(200):  # until uvicorn listens (a refused connection is instant)
            try:
                await backend.check()
                break
            except FatalLLMError:
                await asyncio.sleep(0.1)
        texts = [(await backend.complete([{"role": "user", "content": f"abc{i}"}], SamplingParams())).text
                 for i in range(3)]  # fmt: skip
        await asyncio.sleep(2.5)  # longer than uvicorn's keep-alive: it closes the idle connection
        texts.append((await backend.complete([{"role": "user", "content": "after idle"}], SamplingParams())).text)
        await backend.aclose()
        return texts

    try:
        texts = run(go())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert texts == ["<response>0cba</response>", "<response>1cba</response>", "<response>2cba</response>",
                     "<response>eldi retfa</response>"]  # fmt: skip
    assert backend.breaker.raise_if_open() is None and backend.pool.replicas[0].failures == 0


def test_an_unknown_model_or_an_unreachable_replica_is_one_line_before_any_request(tmp_path: Path):
    inputs = prompts(tmp_path / "p.jsonl", 2)
    with fake_openai_server("--latency", "0") as server:
        wrong = CliRunner().invoke(app, ["generate", "--backend", "openai", "--base-url", server.base_url,
                                         "--model", "no-such-model", "--input", str(inputs), "--no-progress",
                                         "--output", str(tmp_path / "w" / "pairs.jsonl")])  # fmt: skip
        dead = f"http://127.0.0.1:{free_port()}/v1"
        partly = generate([server.base_url, dead], tmp_path, inputs=inputs)
        stats = server.stats()
    assert wrong.exit_code == 2 and error_lines(wrong.output) == [
        f"error: model 'no-such-model' is not served at {server.base_url} (it serves: {FAKE_MODEL})"
    ]
    assert partly.exit_code == 2
    (line,) = error_lines(partly.output)
    assert f"cannot reach the endpoint {dead}" in line
    assert stats["requests"] == 0, "nothing is sent before every replica answered the check"


def test_a_resumed_job_prints_the_whole_jobs_tokens_and_cost(tmp_path: Path):
    """The repro: the same command twice on one output. The second run pays nothing, and still
    shows (and saves) the whole job's tokens and cost, not $0 and an empty usage."""
    inputs = prompts(tmp_path / "p.jsonl", 2)
    prices = ("--max-tokens", "200", "--price-in", "0.4", "--price-out", "1.6")
    with fake_openai_server("--latency", "0") as server:
        first = generate([server.base_url], tmp_path, *prices, inputs=inputs)
        first_summary = summary_of(tmp_path / "out" / "pairs.jsonl")
        again = generate([server.base_url], tmp_path, *prices, inputs=inputs)
    assert first.exit_code == 0 and again.exit_code == 0, again.output
    cost = re.compile(r"estimated cost, whole job: \$(\d+\.\d+) \(paid in this run: \$(\d+\.\d+)\)")
    tokens = re.compile(r"tokens, whole job: in ([\d,]+) out ([\d,]+) \| this run: in ([\d,]+) out (\d[\d,]*\d|\d),")
    (paid_first,), (paid_again,) = cost.findall(first.output), cost.findall(again.output)
    assert float(paid_first[0]) > 0 and paid_again == (paid_first[0], "0.0000")
    (t_first,), (t_again,) = tokens.findall(first.output), tokens.findall(again.output)
    assert t_again[:2] == t_first[:2] and t_again[2:] == ("0", "0") and t_first[:2] == t_first[2:]
    saved = summary_of(tmp_path / "out" / "pairs.jsonl")
    assert saved["usage"] == {} and saved["job"]["usage"] == first_summary["job"]["usage"] != {}
    assert saved["cost_usd"] == {"total": first_summary["cost_usd"]["total"], "this_run": 0}
