"""The pieces behind the openai backend's behaviour under load, each on its own (no clock waits:
the breaker and the replica pool take a fake clock)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run

from rmboost.llm.cache import RequestCache, messages_json, request_blob, request_key
from rmboost.llm.chat_format import chat_body, chat_body_json
from rmboost.llm.flow import AdaptiveLimit, CircuitBreaker
from rmboost.llm.http import HTTPClient, TransportError
from rmboost.llm.openai_compat import OpenAIBackend
from rmboost.llm.replicas import ReplicaPool
from rmboost.llm.types import Completion, FatalLLMError, SamplingParams


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- adaptive limit


def test_a_burst_of_overload_halves_the_limit_once_then_successes_raise_it():
    async def go() -> None:
        limit = AdaptiveLimit(64)
        epochs = [await limit.acquire() for _ in range(64)]
        assert limit.in_flight == 64
        for epoch in epochs:  # all 64 answered 429: one burst, one halving
            limit.overload(epoch)
            limit.release()
        assert (limit.limit, limit.decreases) == (32, 1)
        # A retry sent under the new limit and refused again halves it again.
        limit.overload(await limit.acquire())
        limit.release()
        assert limit.limit == 16
        # Successes while the limit is in use climb back by one each, up to the ceiling.
        while limit.limit < 64:
            held = [await limit.acquire() for _ in range(limit.limit)]
            for _ in held:
                limit.success()
                limit.release()
        assert limit.limit == 64 and limit.lowest == 16
        limit.success()
        assert limit.limit == 64, "never above --concurrency"

    run(go())


def test_the_limit_never_drops_below_its_floor_and_waiters_get_freed_slots():
    async def go() -> list[str]:
        limit = AdaptiveLimit(4, floor=2)
        for _ in range(5):
            limit.overload(await limit.acquire())
            limit.release()
        assert limit.limit == 2
        order: list[str] = []
        first, second = await limit.acquire(), await limit.acquire()

        async def third() -> None:
            await limit.acquire()
            order.append("third got a slot")

        task = asyncio.create_task(third())
        await asyncio.sleep(0)
        assert not order, "two in flight at a limit of two: the third waits"
        order.append("released")
        limit.release()
        await task
        assert limit.in_flight == 2 and (first, second) == (5, 5)
        return order

    assert run(go()) == ["released", "third got a slot"]


def test_a_cancelled_waiter_does_not_leak_its_slot():
    async def go() -> int:
        limit = AdaptiveLimit(1)
        await limit.acquire()
        waiter = asyncio.create_task(limit.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        limit.release()
        await limit.acquire()  # would hang if the cancelled waiter had kept a slot
        return limit.in_flight

    assert run(go()) == 1


# --------------------------------------------------------------------------- circuit breaker


def test_breaker_opens_after_n_failed_requests_in_a_row_and_stays_open():
    breaker = CircuitBreaker("http://x/v1", failures=3, seconds=0)
    breaker.request_failed("http_500")
    breaker.request_failed("http_500")
    breaker.succeeded()  # a success resets the count
    breaker.request_failed("http_500")
    breaker.request_failed("http_500")
    with pytest.raises(FatalLLMError) as err:
        breaker.request_failed("http_503")
    message = str(err.value)
    assert "http://x/v1" in message and "3 requests in a row" in message and "http_503" in message
    assert "\n" not in message
    with pytest.raises(FatalLLMError):
        breaker.raise_if_open()  # every later request stops too


def test_breaker_opens_when_every_attempt_failed_for_the_configured_seconds():
    clock = Clock()
    breaker = CircuitBreaker("http://x/v1", failures=0, seconds=120, clock=clock)
    breaker.attempt_failed("timeout")
    clock.now += 119
    breaker.attempt_failed("timeout")
    breaker.raise_if_open()  # 119 s: still closed
    breaker.succeeded()
    clock.now += 10
    breaker.attempt_failed("timeout")  # a new stretch starts here
    clock.now += 119
    breaker.attempt_failed("timeout")
    clock.now += 1
    with pytest.raises(FatalLLMError) as err:
        breaker.attempt_failed("timeout")
    assert "for 120 s" in str(err.value) and "--breaker-seconds 120" in str(err.value)


def test_breaker_conditions_can_be_switched_off():
    def fail_for_hours(breaker: CircuitBreaker, clock: Clock) -> None:
        for _ in range(1000):
            breaker.request_failed("http_500")
            breaker.attempt_failed("http_500")
            clock.now += 10

    on_clock, off_clock = Clock(), Clock()
    on = CircuitBreaker("u", failures=50, seconds=120, clock=on_clock)
    with pytest.raises(FatalLLMError):  # the same failures trip a breaker that is on...
        fail_for_hours(on, on_clock)
    with pytest.raises(FatalLLMError):  # ... which stays open
        on.raise_if_open()
    off = CircuitBreaker("u", failures=0, seconds=0, clock=off_clock)
    fail_for_hours(off, off_clock)
    off.raise_if_open()  # ... and not one that is off


# --------------------------------------------------------------------------- replicas


def test_attempts_go_to_the_least_loaded_replica():
    pool = ReplicaPool(["http://a/v1", "http://b/v1/", "http://c/v1"])
    picked = [pool.pick() for _ in range(6)]
    assert sorted(r.base_url for r in picked) == sorted(["http://a/v1", "http://b/v1", "http://c/v1"] * 2)
    b = next(r for r in pool.replicas if r.base_url == "http://b/v1")
    pool.done(b, "ok")
    pool.done(b, "ok")
    assert pool.pick() is b and pool.pick() is b  # b had none in flight, the others two each


def test_a_dead_replica_is_taken_out_then_tried_again_on_probation():
    clock = Clock()
    pool = ReplicaPool(["http://a/v1", "http://b/v1"], cooldown=2.0, clock=clock)
    a, b = pool.replicas
    first = pool.pick()
    pool.done(first, "connection_error")  # refused: out at once
    assert pool.up() == 1
    survivor = b if first is a else a
    assert all(pool.pick() is survivor for _ in range(5))
    clock.now += 2.0  # cool-down over: back, one attempt at a time
    probe = pool.pick()
    assert probe is first and first.probation
    assert pool.pick() is survivor, "on probation: no second attempt before the first succeeds"
    pool.done(probe, "timeout")  # failed on probation: out again, for twice as long
    assert first.down_until == clock.now + 4.0
    clock.now += 4.0
    probe = pool.pick()
    assert probe is first
    pool.done(probe, "ok")
    assert not first.probation and first.failures == 0


def test_timeouts_take_a_replica_out_only_after_several_in_a_row_and_429_never():
    clock = Clock()
    pool = ReplicaPool(["http://a/v1", "http://b/v1"], eject_after=3, clock=clock)
    a = pool.replicas[0]
    for outcome in ("rate_limited",) * 10 + ("timeout", "timeout"):
        a.in_flight += 1
        pool.done(a, outcome)
    assert pool.up() == 2
    a.in_flight += 1
    pool.done(a, "server_error")
    assert pool.up() == 1


# --------------------------------------------------------------------------- cache identity and keys


def test_single_url_cache_keys_are_unchanged_and_replica_keys_ignore_the_replica(monkeypatch):
    one = OpenAIBackend("http://n1:8000/v1/", "m")
    assert one.identity() == {"backend": "openai", "base_url": "http://n1:8000/v1", "model": "m"}
    two = OpenAIBackend(["http://n1:8000/v1", "http://n2:8000/v1"], "m")
    swapped = OpenAIBackend(["http://n2:8000/v1", "http://n1:8000/v1/"], "m")
    assert two.identity() == swapped.identity() != one.identity()
    named = [OpenAIBackend(u, "m", cache_identity="prod-7b").identity() for u in ("http://n1:8000/v1", ["http://a/v1", "http://b/v1"])]
    assert named[0] == named[1] == {"backend": "openai", "deployment": "prod-7b", "model": "m"}
    monkeypatch.setenv("RMBOOST_TEST_KEY_X", "sk-secret-123")
    keyed = OpenAIBackend("http://n1:8000/v1", "m", api_key_env="RMBOOST_TEST_KEY_X")
    assert "sk-secret-123" not in json.dumps(keyed.identity())


def test_request_keys_are_byte_for_byte_what_they_always_were():
    """Existing caches must still hit: the key is sha256 of the same JSON as before the rewrite."""
    identity = {"backend": "openai", "base_url": "http://x/v1", "model": "m"}
    messages = [{"role": "system", "content": 'é "q" \n\t\x01 \u2028 😀 \\ </x>'}, {"role": "user", "content": "hi"}]
    for params in (SamplingParams(), SamplingParams(temperature=1e-7, logprobs=5, stop=("</a>",), seed=3)):
        before = json.dumps(
            {"backend": identity, "messages": messages, "params": params.as_dict(), "sample_index": 2},
            sort_keys=True, ensure_ascii=False, separators=(",", ":"),
        )  # fmt: skip
        assert request_blob(identity, messages, params, 2) == before
        assert request_key(identity, messages, params, 2) == hashlib.sha256(before.encode()).hexdigest()
        sent = chat_body_json("m", messages, params)  # the online body: the batch body, messages as keyed
        assert json.loads(sent) == chat_body("m", messages, params)
        assert f'"messages":{messages_json(messages)},'.encode() in sent and messages_json(messages) in before


# --------------------------------------------------------------------------- cache: one commit per tick


def test_answers_of_one_tick_are_committed_together_and_before_store_returns(tmp_path: Path):
    cache = RequestCache(tmp_path / "c.sqlite")
    commits: list[str] = []
    cache._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    reader = sqlite3.connect(tmp_path / "c.sqlite")

    def answer(i: int) -> Completion:
        return Completion(text=f"a{i}", tokens_in=1, tokens_out=1, model="m")

    async def go() -> list[int]:
        seen = []

        async def one(i: int) -> None:
            await cache.store(f"k{i}", {"i": i}, answer(i))
            # Committed when store returns: another connection (another process) sees the row.
            seen.append(reader.execute("SELECT COUNT(*) FROM requests WHERE key = ?", (f"k{i}",)).fetchone()[0])

        await asyncio.gather(*(one(i) for i in range(50)))
        return seen

    assert run(go()) == [1] * 50
    assert len(commits) == 1, "fifty answers in one tick: one transaction"
    cache.put("k-sync", {"i": -1}, answer(-1))
    assert len(commits) == 2 and len(cache) == 51
    cache.close()


# --------------------------------------------------------------------------- the HTTP client


async def _serve(handler) -> tuple[asyncio.AbstractServer, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/x"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
    return await reader.readexactly(length)


def test_http_client_reads_chunked_answers_and_reuses_the_connection():
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for _ in range(3):
            body = await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b'{"echo":', body, b"}"):
                writer.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
            writer.write(b"0\r\nX-Trailer: 1\r\n\r\n")
            await writer.drain()
        writer.close()

    async def go() -> list[dict]:
        server, url = await _serve(handler)
        client = HTTPClient({"Content-Type": "application/json"}, timeout=10)
        try:
            return [json.loads((await client.request("POST", url, b'"%d"' % i)).body) for i in range(3)]
        finally:
            await client.close()
            server.close()

    assert run(go()) == [{"echo": "0"}, {"echo": "1"}, {"echo": "2"}]
    assert connections == 1, "keep-alive: three requests, one connection"


def test_http_client_resends_on_a_fresh_connection_when_an_idle_one_was_closed():
    answered = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await _read_request(reader)
        answered += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # closes every connection after one answer, without saying so

    async def go() -> list[bytes]:
        server, url = await _serve(handler)
        client = HTTPClient({}, timeout=10)
        try:
            return [(await client.request("POST", url, b"{}")).body for _ in range(3)]
        finally:
            await client.close()
            server.close()

    assert run(go()) == [b"ok"] * 3
    assert answered == 3


def test_http_client_reports_refused_connections_and_timeouts():
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    async def go() -> tuple[str, str]:
        server, url = await _serve(slow)
        client = HTTPClient({}, timeout=0.2)
        try:
            with pytest.raises(TransportError) as timeout:
                await client.request("POST", url, b"{}")
            server.close()
            await server.wait_closed()
            with pytest.raises(TransportError) as refused:
                await client.request("POST", url, b"{}")
            return timeout.value.kind, refused.value.kind
        finally:
            await client.close()

    assert run(go()) == ("timeout", "connection_error")


def test_the_open_file_limit_is_raised_for_the_concurrency_or_refused_in_one_line():
    """Sockets count against `ulimit -n` (often 1024): a child process with a hard limit of 600
    gets its soft limit raised for 300 in flight, and a clear refusal for 1000."""
    code = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (100, 600))\n"
        "from rmboost.llm.openai_compat import OpenAIBackend\n"
        "OpenAIBackend('http://127.0.0.1:9/v1', 'm', max_in_flight=300)\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
        "try:\n"
        "    OpenAIBackend('http://127.0.0.1:9/v1', 'm', max_in_flight=1000)\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    soft, refusal = result.stdout.strip().splitlines()
    assert int(soft) >= 300 + 256
    assert "1000 requests in flight" in refusal and "at most 600" in refusal and "--concurrency" in refusal


def test_http_client_undoes_a_gzip_encoding_nobody_asked_for():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        body = gzip.compress(b'{"ok": true}')
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    async def go() -> bytes:
        server, url = await _serve(handler)
        client = HTTPClient({}, timeout=10)
        try:
            return (await client.request("POST", url, b"{}")).body
        finally:
            await client.close()
            server.close()

    assert run(go()) == b'{"ok": true}'


def test_retry_after_is_read_in_every_form_both_clients_meet():
    from email.utils import formatdate

    from rmboost.llm.ratelimit import backoff_delay, retry_after_seconds

    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_seconds({"retry-after": "7"}) == 7.0
    assert 50 < retry_after_seconds({"retry-after": formatdate(time.time() + 60, usegmt=True)}) <= 60
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None
    assert backoff_delay(3, 500.0, base=1.0, cap=60.0) == 60.0  # the server's wait, capped
    assert 0 <= backoff_delay(3, None, base=1.0, cap=60.0) <= 8.0  # full jitter up to base * 2**attempt
