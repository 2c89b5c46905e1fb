"""The `openai` backend against real HTTP servers on loopback, never a mock of the SDK.

A real `llama_cpp.server` (the embedded SmolLM2-135M-Instruct GGUF, started once per session)
checks completions, token usage, seeds, `check()`, API keys and a whole `rmboost generate` run.
A scripted `http.server` (tests/servers.py) produces what a model server will not do on demand:
429 with Retry-After, 5xx, dropped connections and answers slower than the timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import read_jsonl, run
from servers import (
    SCRIPTED_MODEL,
    SCRIPTED_TEXT,
    SCRIPTED_USAGE,
    LlamaServer,
    ScriptedServer,
    drop,
    free_port,
    key_in_files,
    llama_server,
    ok,
    sleep,
    status,
)
from typer.testing import CliRunner

from rmboost.cli import app
from rmboost.llm import Completion, FatalLLMError, LLMError, SamplingParams
from rmboost.llm.llamacpp import embedded_gguf_path
from rmboost.llm.openai_compat import OpenAIBackend
from rmboost.llm.ratelimit import RateLimiter

KEY_ENV = "RMBOOST_TEST_API_KEY"  # the variable the backend reads the key from in these tests
UNSET_ENV = "RMBOOST_TEST_NO_SUCH_KEY"
HELLO = [{"role": "user", "content": "Name three colours."}]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """One real llama_cpp.server for the session, guarded by a random API key.

    One server (one model load) serves every test; the key makes each of them exercise auth,
    and lets the rejected-key tests run against the same process. Beyond the defaults:
    one thread, for prompts too (the machine is shared, and llama.cpp threads that compete
    with other processes for the cores slow everyone down); no logits for every prompt token
    (nothing here asks for logprobs); and the server's RAM prompt cache, so that a retried
    prompt is not evaluated again after another prompt was served in between
    (`--concurrency 2` interleaves the two prompts of the end-to-end run).
    """
    with llama_server(
        embedded_gguf_path(),
        alias="smollm2",
        n_ctx=8192,
        api_key=f"sk-test-{secrets.token_hex(16)}",
        n_threads=1,
        n_threads_batch=1,
        extra_args=("--logits_all", "False", "--cache", "True", "--cache_size", str(512 << 20)),
        log_dir=tmp_path_factory.mktemp("llama-server"),
    ) as server:
        yield server


@pytest.fixture
def keyed(llama: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> LlamaServer:
    """The server, with its key in $RMBOOST_TEST_API_KEY as a user would set it."""
    assert llama.api_key
    monkeypatch.setenv(KEY_ENV, llama.api_key)
    return llama


def backend_for(server: LlamaServer, model: str | None = None, **kwargs: object) -> OpenAIBackend:
    return OpenAIBackend(server.base_url, model or server.model, api_key_env=KEY_ENV, **kwargs)  # type: ignore[arg-type]


def scripted_backend(server: ScriptedServer, **kwargs: object) -> OpenAIBackend:
    """Tiny backoff so that retries are fast unless the server's Retry-After says otherwise."""
    options: dict[str, object] = {"api_key_env": UNSET_ENV, "backoff_base": 0.01, "backoff_cap": 5.0}
    options.update(kwargs)
    return OpenAIBackend(server.base_url, SCRIPTED_MODEL, **options)  # type: ignore[arg-type]


async def _complete(
    backend: OpenAIBackend, params: SamplingParams, messages: list[dict[str, str]] = HELLO
) -> Completion:
    try:
        return await backend.complete(messages, params)
    finally:
        await backend.aclose()


async def _check(backend: OpenAIBackend) -> None:
    try:
        await backend.check()
    finally:
        await backend.aclose()


# --------------------------------------------------------------------------- real server


@pytest.mark.server
@pytest.mark.llm
def test_complete_returns_text_and_real_token_usage(keyed: LlamaServer):
    params = SamplingParams(temperature=0.7, max_tokens=16, seed=1)
    completion = run(_complete(backend_for(keyed), params))
    assert completion.text.strip()
    assert completion.model == "smollm2"
    # The server's own tokenizer counts: the chat-templated prompt is far more than 0 tokens,
    # and the answer stops at max_tokens or earlier.
    assert completion.tokens_in > len(HELLO[0]["content"].split())
    assert 0 < completion.tokens_out <= 16
    assert completion.finish_reason in ("stop", "length")
    assert not completion.cached


@pytest.mark.server
@pytest.mark.llm
def test_seed_and_temperature_are_honoured(keyed: LlamaServer):
    """What llama_cpp.server really guarantees about seeds.

    The same seed repeats exactly while the prompt sits in the server's KV cache. The very first
    request for a prompt can differ from the repeats: it evaluates the whole prompt in one batch,
    a repeat only re-evaluates the last prompt token, and the logits differ in the last bits.
    So the first request is a warm-up here, not an assertion.
    """

    async def texts(requests: list[SamplingParams]) -> list[str]:
        backend = backend_for(keyed)
        try:
            return [(await backend.complete(HELLO, p)).text for p in requests]
        finally:
            await backend.aclose()

    def p(temperature: float, seed: int) -> SamplingParams:
        return SamplingParams(temperature=temperature, top_p=1.0, max_tokens=24, seed=seed)

    _, first, again, *other_seeds = run(texts([p(1.0, 7), p(1.0, 7), p(1.0, 7), p(1.0, 1), p(1.0, 2), p(1.0, 3)]))
    assert first == again, "the same seed must give the same answer"
    assert len({first, *other_seeds}) > 1, "different seeds at temperature 1 must not all agree"
    greedy = run(texts([p(0.0, 1), p(0.0, 2), p(0.0, 3)]))
    assert len(set(greedy)) == 1, "at temperature 0 the seed must not matter"


@pytest.mark.server
@pytest.mark.llm
def test_check_passes_for_the_served_model(keyed: LlamaServer):
    # check() compares the name with the server's listing; it passes silently when there is no
    # listing at all, so first make sure the listing exists and names the alias.
    listing = httpx.get(f"{keyed.base_url}/models", headers={"Authorization": f"Bearer {keyed.api_key}"}, timeout=30)
    assert listing.status_code == 200 and keyed.model in [m["id"] for m in listing.json()["data"]]
    assert run(_check(backend_for(keyed))) is None


@pytest.mark.server
@pytest.mark.llm
def test_check_names_a_wrong_model_and_what_is_served(keyed: LlamaServer):
    wrong = backend_for(keyed, model="gpt-4o-nonexistent")
    with pytest.raises(FatalLLMError) as err:
        run(_check(wrong))
    message = str(err.value)
    assert "'gpt-4o-nonexistent'" in message
    assert "smollm2" in message and keyed.base_url in message
    # Why check() matters: llama_cpp.server quietly answers an unknown model name with its
    # default model, so without it a typo would produce a whole dataset from the wrong model.
    answered = run(_complete(backend_for(keyed, model="gpt-4o-nonexistent"), SamplingParams(max_tokens=4, seed=1)))
    assert answered.tokens_out > 0


def test_check_fails_fast_on_an_unreachable_endpoint():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nobody listens there
    backend = OpenAIBackend(url, "smollm2", api_key_env=UNSET_ENV, timeout=30)
    started = time.monotonic()
    with pytest.raises(FatalLLMError) as err:
        run(_check(backend))
    assert url in str(err.value)
    assert time.monotonic() - started < 5, "a refused connection must not wait for the timeout"


def _assert_no_secret(exc: BaseException, *secrets_: str) -> None:
    """Not in the message, nor anywhere in the printed traceback chain."""
    printed = "".join(traceback.format_exception(exc))
    for secret in secrets_:
        assert secret not in str(exc)
        assert secret not in printed


@pytest.mark.server
@pytest.mark.llm
def test_a_rejected_key_names_the_variable_never_the_key(llama: LlamaServer, monkeypatch: pytest.MonkeyPatch):
    assert llama.api_key
    wrong_key = f"sk-wrong-{secrets.token_hex(16)}"
    monkeypatch.setenv(KEY_ENV, wrong_key)
    with pytest.raises(FatalLLMError) as err:
        run(_check(backend_for(llama)))
    assert f"${KEY_ENV}" in str(err.value) and "rejected the API key" in str(err.value)
    _assert_no_secret(err.value, wrong_key, llama.api_key)
    # A request (not only check()) with the wrong key stops the job the same way.
    with pytest.raises(FatalLLMError) as err:
        run(_complete(backend_for(llama), SamplingParams(max_tokens=4)))
    assert f"${KEY_ENV}" in str(err.value)
    _assert_no_secret(err.value, wrong_key, llama.api_key)


@pytest.mark.server
@pytest.mark.llm
def test_a_missing_key_says_the_variable_is_not_set(llama: LlamaServer, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(FatalLLMError) as err:
        run(_check(backend_for(llama)))
    assert f"no ${KEY_ENV} set" in str(err.value)


@pytest.mark.server
def test_a_server_that_cannot_start_is_reported_with_its_own_log(tmp_path: Path):
    """The fixture's failure mode: a clear error carrying the server's output, not a hang."""
    missing = tmp_path / "missing.gguf"
    with pytest.raises(RuntimeError) as err, llama_server(missing, startup_timeout=60, log_dir=tmp_path):
        pytest.fail("the server cannot have started without a model")
    assert "exited with code" in str(err.value)
    assert f"Model path does not exist: {missing}" in str(err.value)


# --------------------------------------------------------------------------- end to end (CLI)


def _generate(server: LlamaServer, output: Path, cache: Path) -> dict:
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--backend", "openai",
            "--base-url", server.base_url,
            "--model", server.model,
            "--api-key-env", KEY_ENV,
            "--input", "sample:qa_feedback",
            "--limit", "2",
            "--max-tokens", "64",
            "--concurrency", "2",
            # The server answers one request at a time: on a busy machine the second prompt's
            # request can queue behind the first for longer than the default 120 s.
            "--timeout", "600",
            "--cache", str(cache),
            "--output", str(output),
            "--no-progress",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert server.api_key and server.api_key not in result.output
    return json.loads(output.with_name(output.name.split(".")[0] + ".summary.json").read_text("utf-8"))


@pytest.mark.server
@pytest.mark.llm
@pytest.mark.slow
def test_generate_end_to_end_then_replays_from_the_cache(keyed: LlamaServer, tmp_path: Path):
    """Two prompts through the CLI; then the same command again costs zero LLM calls.

    No --prefill: llama_cpp.server ignores `continue_final_message` and always opens a fresh
    assistant turn, so it cannot continue a prefilled "<response>". SmolLM2-135M often forgets
    the tags, hence either outcome per prompt: a pair, or a failures row with its reason.
    """
    output, cache = tmp_path / "run" / "pairs.jsonl", tmp_path / "run" / "cache.sqlite"
    first = _generate(keyed, output, cache)
    assert first["prompts"] == 2 and first["model"] == "smollm2"
    assert first["llm_calls"] > 0 and first["cache_hits"] == 0
    assert sum(u["tokens_in"] for u in first["usage"].values()) > 0
    assert sum(u["tokens_out"] for u in first["usage"].values()) > 0

    pairs = read_jsonl(output)
    failures = read_jsonl(output.with_name("pairs.failures.jsonl"))
    pair_ids = [p["id"] for p in pairs]
    failed_ids = {f["id"] for f in failures}
    assert len(pair_ids) == len(set(pair_ids)) == first["pairs_written"]
    assert not set(pair_ids) & failed_ids
    assert len(pair_ids) + len(failed_ids) == 2, "every prompt is a pair or a failure, nothing else"
    for pair in pairs:
        assert pair["chosen"].strip() and pair["rejected"].strip() and pair["chosen"] != pair["rejected"]
        assert pair["label"] in ("better", "worse") and pair["model"] == "smollm2"
        assert pair["tokens_in"] > 0 and pair["tokens_out"] > 0
    for failure in failures:
        assert failure["step"] in ("y1", "y2") and failure["reason"]
        assert failure["attempts"], "a failure keeps what each attempt returned"
    assert sum(first["failures"].values()) == len(failed_ids)

    before = output.read_bytes()
    second = _generate(keyed, output, cache)
    assert second["llm_calls"] == 0, "the same command again must be answered from the cache"
    assert second["resumed"] == len(pair_ids) and second["pairs_written"] == 0
    assert output.read_bytes() == before

    # A fresh output with the same cache replays every answer, not just the finished pairs.
    fresh = tmp_path / "replay" / "pairs.jsonl"
    third = _generate(keyed, fresh, cache)
    assert third["llm_calls"] == 0 and third["cache_hits"] == first["llm_calls"]
    assert fresh.read_bytes() == before

    # The key went over the wire on every request, yet is stored nowhere.
    assert keyed.api_key
    assert key_in_files(tmp_path, keyed.api_key) == []
    assert cache.stat().st_size > 0 and any(tmp_path.rglob("*.jsonl"))


# --------------------------------------------------------------------------- retries (scripted)

FAST = SamplingParams(max_tokens=8)


def test_retry_after_is_honoured_then_the_answer_arrives():
    script = [status(429, Retry_After="1"), status(503, retry_after_ms="300"), status(500), ok()]
    with ScriptedServer(script) as server:
        started = time.monotonic()
        completion = run(_complete(scripted_backend(server, max_retries=3), FAST))
        elapsed = time.monotonic() - started
    assert server.attempts == 4
    assert completion.text == SCRIPTED_TEXT
    assert (completion.tokens_in, completion.tokens_out) == (
        SCRIPTED_USAGE["prompt_tokens"],
        SCRIPTED_USAGE["completion_tokens"],
    )
    gaps = server.gaps()
    assert gaps[0] >= 1.0, f"Retry-After: 1 was not honoured ({gaps[0]:.3f}s)"
    assert gaps[1] >= 0.3, f"retry-after-ms: 300 was not honoured ({gaps[1]:.3f}s)"
    assert gaps[2] < 1.0, "without Retry-After the (tiny) exponential backoff applies"
    assert elapsed >= 1.3


def test_retry_after_is_capped_by_backoff_cap():
    with ScriptedServer([status(429, Retry_After="30"), ok()]) as server:
        started = time.monotonic()
        run(_complete(scripted_backend(server, backoff_cap=0.2), FAST))
    assert server.attempts == 2
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("code", "reason"), [(429, "rate_limited (HTTP 429)"), (500, "http_500"), (502, "http_502")]
)
def test_persistent_429_or_5xx_fails_this_request_only_after_max_retries(code: int, reason: str):
    busy = ScriptedServer(default=status(code, retry_after_ms="10"))
    with busy as server, pytest.raises(LLMError) as err:
        run(_complete(scripted_backend(server, max_retries=2), FAST))
    assert not isinstance(err.value, FatalLLMError), "a busy server must not stop the whole job"
    assert str(err.value) == f"{reason} after 3 tries"
    assert server.attempts == 3


def test_a_client_error_is_not_retried():
    with ScriptedServer(default=status(400)) as server, pytest.raises(LLMError) as err:
        run(_complete(scripted_backend(server, max_retries=4), FAST))
    assert not isinstance(err.value, FatalLLMError)
    assert str(err.value).startswith("http_400: ")
    assert server.attempts == 1


def test_a_dropped_connection_is_retried():
    with ScriptedServer([drop(), drop(), ok()]) as server:
        completion = run(_complete(scripted_backend(server, max_retries=3), FAST))
    assert completion.text == SCRIPTED_TEXT
    assert server.attempts == 3


def test_a_connection_lost_for_good_stops_the_job():
    with ScriptedServer(default=drop()) as server, pytest.raises(FatalLLMError) as err:
        run(_complete(scripted_backend(server, max_retries=2), FAST))
    assert server.base_url in str(err.value) and "after 3 tries" in str(err.value)
    assert server.attempts == 3


def test_a_request_slower_than_the_timeout_is_retried():
    with ScriptedServer([sleep(1.5), ok()]) as server:
        started = time.monotonic()
        completion = run(_complete(scripted_backend(server, timeout=0.3, max_retries=2), FAST))
        elapsed = time.monotonic() - started
    assert completion.text == SCRIPTED_TEXT
    assert server.attempts == 2
    assert 0.3 <= elapsed < 1.5, "the client must give up at its timeout, not wait for the server"


def test_a_request_that_always_times_out_fails_after_max_retries():
    with ScriptedServer(default=sleep(1.0)) as server:
        started = time.monotonic()
        with pytest.raises(LLMError) as err:
            run(_complete(scripted_backend(server, timeout=0.3, max_retries=1), FAST))
        elapsed = time.monotonic() - started
    assert server.attempts == 2
    assert elapsed >= 0.6
    # A timeout that outlasts every retry fails this request only (a failures.jsonl row);
    # the job goes on.
    assert not isinstance(err.value, FatalLLMError)
    assert str(err.value).startswith("timeout") and "after 2 tries" in str(err.value)


# --------------------------------------------------------------------------- rate limits


def test_rate_limiter_rejects_a_non_positive_rate():
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_rate_limiter_bursts_one_minute_then_paces():
    """600/min: a full minute's worth passes at once, then 10 units take one second."""

    async def go() -> tuple[float, float]:
        limiter = RateLimiter(600)
        t0 = time.monotonic()
        await limiter.acquire(600)
        burst = time.monotonic() - t0
        await limiter.acquire(10)
        return burst, time.monotonic() - t0

    burst, paced = run(go())
    assert burst < 0.1
    assert 0.95 <= paced < 1.6


def test_rate_limiter_serves_concurrent_waiters_at_the_rate():
    """1200/min = 20/s: after the burst, four waiters of 5 units finish about 0.25 s apart."""

    async def go() -> list[float]:
        limiter = RateLimiter(1200)
        await limiter.acquire(1200)
        t0 = time.monotonic()

        async def one() -> float:
            await limiter.acquire(5)
            return time.monotonic() - t0

        return sorted(await asyncio.gather(*(one() for _ in range(4))))

    done = run(go())
    assert done[0] >= 0.24 and done[-1] >= 0.99
    assert done[-1] < 1.6
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(done))


def test_rate_limiter_lets_a_request_larger_than_a_minute_through():
    """A request above the per-minute budget waits for a full bucket, not forever:
    600/min with 10 units spent refills in one second, then 10,000 units pass."""

    async def go() -> float:
        limiter = RateLimiter(600)
        await limiter.acquire(10)
        t0 = time.monotonic()
        await limiter.acquire(10_000)
        return time.monotonic() - t0

    assert 0.95 <= run(go()) < 1.6


def test_tokens_per_minute_limit_uses_the_request_estimate():
    """6000 tokens/min = 100/s. A request promising more than a minute's tokens empties the
    bucket; the next one (about 50 tokens: max_tokens plus a quarter of the characters)
    must wait about half a second before it reaches the server."""
    with ScriptedServer() as server:
        backend = scripted_backend(server, tokens_per_minute=6000)

        async def go() -> None:
            try:
                await backend.complete([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=100_000))
                await backend.complete([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=50))
            finally:
                await backend.aclose()

        run(go())
    assert server.attempts == 2
    assert 0.45 <= server.gaps()[0] < 2.0


def test_requests_per_minute_counts_every_attempt_retries_included():
    """60/min = 1/s with a 60-request burst. 31 requests that each need one retry are 62 HTTP
    requests, which cannot all be sent before (62 - 60) / 1 = 2 seconds have passed."""
    script = [step for _ in range(31) for step in (status(500), ok())]
    with ScriptedServer(script) as server:
        backend = scripted_backend(server, requests_per_minute=60, backoff_base=0.001)

        async def go() -> None:
            try:
                for _ in range(31):
                    await backend.complete(HELLO, FAST)
            finally:
                await backend.aclose()

        started = time.monotonic()
        run(go())
        elapsed = time.monotonic() - started
    assert server.attempts == 62
    assert elapsed >= 1.95, f"62 requests in {elapsed:.2f}s exceed 60/min with a 60 burst"
