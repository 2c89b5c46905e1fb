"""A fast OpenAI-compatible chat server for loopback benchmarks and tests (run as its own process).

    python benchmarks/fake_openai_server.py --port 0 --latency 1.0
    # prints "listening http://127.0.0.1:PORT/v1" on its first line, then serves until killed

Plain asyncio (one protocol object per connection, HTTP/1.1 keep-alive, no framework), so
that the server is never what a benchmark measures: it does not parse the request JSON, and
answers after `--latency` seconds with a timer, not a task. Its own CPU per request is in
/stats; benchmarks/bench_client.py reports it as the server's ceiling.

Every answer is unique to its request (a hash of the body) and wrapped in <response> tags,
with usage counts (prompt tokens = body bytes / 4, completion tokens = answer chars / 4) and,
when the request asks for them, log-probabilities whose first token is "first".

Endpoints: GET /v1/models, POST /v1/chat/completions, GET /stats (counters, max requests in
flight, CPU seconds), POST /reset (zero the counters and the scenario below).

Scenarios, counted in chat requests since start (or /reset), for tests of failure handling:
  --error-rate P     answer --error-status (500) to a random fraction P of requests
  --burst-429 A N    answer 429 (with Retry-After: --retry-after) to requests A .. A+N-1
  --fail-after N     answer --error-status to every request after N successful answers
  --die-after N      exit at once (no answer, connections reset) when request N arrives
  --hold-until N     hold the first answers until N requests are in flight at once, then
                     answer them all (a check that a client really reaches N in flight that
                     needs no clock; gives up holding after --hold-timeout seconds)
  --api-key KEY      demand "Authorization: Bearer KEY" (401 otherwise)
It also answers requests sent to it as an HTTP proxy (absolute URIs), for proxy tests.
A request whose body contains FAKE_BAD_REQUEST gets a 400 whose message repeats the
Authorization header it was sent, as careless servers do (tests check the client redacts it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import random
import sys
import time
from typing import Any

from rmboost.llm.chat_format import completion_body

FILLER = (
    "The passages answer the question in part. The first names the event and its date, the "
    "second adds who took part, and the third explains why it mattered. A complete answer "
    "covers each of these points, cites the passage it relies on, and says plainly what the "
    "passages leave open instead of guessing."
)


class Scenario:
    """What to answer, request by request; and the counters /stats reports."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed)
        self.reset()

    def reset(self) -> None:
        self.requests = 0  # chat requests received
        self.answered = 0  # 200s sent
        self.errors = 0  # non-200s sent
        self.in_flight = 0
        self.max_in_flight = 0
        self.cpu0 = time.process_time()
        self.wall0 = time.monotonic()

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "answered": self.answered,
            "errors": self.errors,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "cpu_s": round(time.process_time() - self.cpu0, 4),
            "wall_s": round(time.monotonic() - self.wall0, 4),
        }

    def status_for(self, n: int) -> int:
        a = self.args
        if a.burst_429 and a.burst_429[0] <= n < a.burst_429[0] + a.burst_429[1]:
            return 429
        if a.fail_after is not None and self.answered >= a.fail_after:
            return a.error_status
        if a.error_rate and self.rng.random() < a.error_rate:
            return a.error_status
        return 200


def completion_json(body: bytes, model: str, answer_chars: int) -> bytes:
    digest = hashlib.blake2b(body, digest_size=8).hexdigest()
    text = f"<response>Answer {digest}. {FILLER[: max(0, answer_chars - 40)]}</response>"
    logprobs = None
    if b'"logprobs": true' in body or b'"logprobs":true' in body:
        top = [{"token": "first", "logprob": math.log(0.7), "bytes": None},
               {"token": "second", "logprob": math.log(0.2), "bytes": None}]
        logprobs = [{**top[0], "top_logprobs": top}]
    reply = completion_body(text, model, tokens_in=len(body) // 4, tokens_out=len(text) // 4,
                            id=f"chatcmpl-{digest}", logprobs=logprobs)
    return json.dumps(reply).encode()


def error_json(status: int, message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "fake", "code": status}}).encode()


REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


class Connection(asyncio.Protocol):
    def __init__(self, server: FakeServer):
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            method, path, _ = lines[0].split(b" ", 2)
            length, auth = 0, b""
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"authorization":
                    auth = value.strip()
            if len(buf) < end + 4 + length:
                return
            body = bytes(buf[end + 4 : end + 4 + length])
            del buf[: end + 4 + length]
            self.server.handle(self, method, path, auth, body)

    def send(self, status: int, payload: bytes, headers: bytes = b"") -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n"
        ).encode()
        self.transport.write(head + headers + b"\r\n" + payload)


class FakeServer:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.scenario = Scenario(args)
        self.loop = asyncio.get_running_loop()
        self.models = json.dumps({"object": "list", "data": [{"id": args.model, "object": "model"}]}).encode()
        self.expected_auth = f"Bearer {args.api_key}".encode() if args.api_key else None
        self.holding: list[tuple[Connection, bytes]] | None = [] if args.hold_until else None
        if args.hold_until:
            self.loop.call_later(args.hold_timeout, self.release_held)

    def handle(self, conn: Connection, method: bytes, path: bytes, auth: bytes, body: bytes) -> None:
        path = path.split(b"?", 1)[0].rstrip(b"/")
        if path.startswith(b"http"):  # an absolute URI, as sent to a proxy: this server is one
            path = b"/" + path.split(b"/", 3)[-1]
        if path == b"/stats":
            conn.send(200, json.dumps(self.scenario.stats()).encode())
        elif path == b"/reset" and method == b"POST":
            self.scenario.reset()
            conn.send(200, b"{}")
        elif self.expected_auth is not None and auth != self.expected_auth:
            conn.send(401, error_json(401, "Incorrect API key provided."))
        elif path.endswith(b"/models"):
            conn.send(200, self.models)
        elif path.endswith(b"/chat/completions") and method == b"POST":
            self.chat(conn, auth, body)
        else:
            conn.send(404, error_json(404, f"no route {path.decode(errors='replace')}"))

    def chat(self, conn: Connection, auth: bytes, body: bytes) -> None:
        s, a = self.scenario, self.args
        s.requests += 1
        if a.die_after is not None and s.requests >= a.die_after:
            os._exit(3)
        if b"FAKE_BAD_REQUEST" in body:
            s.errors += 1
            conn.send(400, error_json(400, f"bad request (sent with authorization {auth.decode(errors='replace')})"))
            return
        status = s.status_for(s.requests)
        if status != 200:
            s.errors += 1
            headers = f"Retry-After: {a.retry_after:g}\r\n".encode() if status == 429 else b""
            conn.send(status, error_json(status, f"fake HTTP {status}"), headers)
            return
        s.answered += 1
        s.in_flight += 1
        s.max_in_flight = max(s.max_in_flight, s.in_flight)
        payload = completion_json(body, a.model, a.answer_chars)
        if self.holding is not None:
            self.holding.append((conn, payload))
            if s.in_flight >= a.hold_until:
                self.release_held()
        elif a.latency > 0:
            self.loop.call_later(a.latency, self.finish, conn, payload)
        else:
            self.finish(conn, payload)

    def release_held(self) -> None:
        held, self.holding = self.holding or [], None
        for conn, payload in held:
            self.finish(conn, payload)

    def finish(self, conn: Connection, payload: bytes) -> None:
        self.scenario.in_flight -= 1
        conn.send(200, payload)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed on the first line)")
    p.add_argument("--latency", type=float, default=1.0, help="seconds before each successful answer")
    p.add_argument("--model", default="fake-model")
    p.add_argument("--answer-chars", type=int, default=400, help="length of each answer")
    p.add_argument("--api-key", default=None)
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--error-status", type=int, default=500)
    p.add_argument("--burst-429", type=int, nargs=2, metavar=("FIRST", "COUNT"), default=None)
    p.add_argument("--retry-after", type=float, default=0.0, help="Retry-After seconds sent with a 429")
    p.add_argument("--fail-after", type=int, default=None)
    p.add_argument("--die-after", type=int, default=None)
    p.add_argument("--hold-until", type=int, default=None)
    p.add_argument("--hold-timeout", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server = FakeServer(args)
    listener = await loop.create_server(lambda: Connection(server), args.host, args.port, backlog=4096)
    port = listener.sockets[0].getsockname()[1]
    print(f"listening http://{args.host}:{port}/v1", flush=True)
    async with listener:
        await listener.serve_forever()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
