"""Real HTTP servers on loopback for testing (and benchmarking) the OpenAI-compatible backend.

Two kinds, both bound to 127.0.0.1 only and always stopped by their context manager:

* `llama_server`: `python -m llama_cpp.server` with a GGUF model in a child process: a real
  OpenAI-compatible endpoint, so the backend is tested against what it will meet, not a mock.
* `ScriptedServer`: a tiny threaded `http.server` answering chat requests from a script
  (429 with Retry-After, 5xx, dropped connections, slow answers, then a valid completion), for
  the failure paths a real model server cannot be made to produce on demand; with `reply`, a
  fast stand-in model whose answers depend on the request (the experiment's kill/resume test);
  with `tls`, over https.
* `fake_openai_server`: benchmarks/fake_openai_server.py in its own process, the fast server the
  client benchmark uses: hundreds of requests in flight, 429 bursts, failing or dying on cue.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from rmboost.llm.chat_format import completion_body

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it; tiny race until it is bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- llama_cpp.server


@dataclass
class LlamaServer:
    """A running `llama_cpp.server`: where to reach it and the key it demands (if any)."""

    base_url: str  # http://127.0.0.1:PORT/v1
    model: str  # the alias requests must name
    api_key: str | None
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        return _tail(self.log_path, chars)


def _tail(path: Path, chars: int) -> str:
    try:
        return path.read_text("utf-8", errors="replace")[-chars:]
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


def _die_with_parent() -> None:
    """Linux: SIGTERM the server if the test process dies without running its teardown."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def llama_server(
    model_path: str | Path,
    *,
    alias: str = "smollm2",
    n_ctx: int = 8192,
    api_key: str | None = None,
    n_threads: int | None = None,
    n_threads_batch: int | None = None,
    extra_args: tuple[str, ...] = (),
    startup_timeout: float = 180.0,
    log_dir: Path | None = None,
) -> Iterator[LlamaServer]:
    """Start `python -m llama_cpp.server` on a free loopback port; stop it on exit.

    Waits until `/v1/models` answers 200. If the process exits or the timeout passes first,
    raises RuntimeError with the server's own log (stdout and stderr), which says why.
    Logs go to a file rather than a pipe: uvicorn logs every request, and an unread pipe
    would fill up and block the server.
    """
    port = free_port()
    base_url = f"http://{LOOPBACK}:{port}/v1"
    owned_dir = None if log_dir else tempfile.TemporaryDirectory(prefix="llama-server-")
    log_path = Path(log_dir or owned_dir.name) / f"llama-server-{port}.log"  # type: ignore[union-attr]
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--host", LOOPBACK,
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--model_alias", alias,
    ]  # fmt: skip
    if n_threads:
        cmd += ["--n_threads", str(n_threads)]
    if n_threads_batch:  # prompt evaluation; the server's default is every core
        cmd += ["--n_threads_batch", str(n_threads_batch)]
    if api_key:
        cmd += ["--api_key", api_key]
    cmd += list(extra_args)
    log = log_path.open("wb")
    process = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    server = LlamaServer(base_url, alias, api_key, process, log_path)
    try:
        _wait_until_ready(server, startup_timeout)
        yield server
    finally:
        _stop(process)
        log.close()
        if owned_dir is not None:
            owned_dir.cleanup()


def _wait_until_ready(server: LlamaServer, timeout: float) -> None:
    headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if (code := server.process.poll()) is not None:
            raise RuntimeError(
                f"llama_cpp.server exited with code {code} before answering; its log:\n{server.log_tail()}"
            )
        try:
            response = httpx.get(f"{server.base_url}/models", headers=headers, timeout=2.0)
            if response.status_code == 200:
                return
            last_error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last_error = type(exc).__name__
        time.sleep(0.2)
    raise RuntimeError(
        f"llama_cpp.server at {server.base_url} did not answer /v1/models within {timeout:.0f}s "
        f"(last: {last_error}); its log:\n{server.log_tail()}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


# --------------------------------------------------------------------------- scripted server


@dataclass(frozen=True)
class Step:
    """What the scripted server does with one request."""

    kind: str  # "ok" | "status" | "drop" | "sleep"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def ok() -> Step:
    """Answer with a valid chat completion."""
    return Step("ok")


def status(code: int, **headers: str) -> Step:
    """Answer with an error status (and headers, e.g. Retry-After) and an OpenAI-style error body."""
    return Step("status", status=code, headers={k.replace("_", "-"): v for k, v in headers.items()})


def drop() -> Step:
    """Read the request, then close the connection without a byte of response."""
    return Step("drop")


def sleep(seconds: float) -> Step:
    """Answer correctly, but only after `seconds` (longer than the client's timeout)."""
    return Step("sleep", seconds=seconds)


SCRIPTED_MODEL = "scripted-model"
SCRIPTED_TEXT = "<response>scripted answer</response>"
SCRIPTED_USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}


def chat_completion_body(text: str = SCRIPTED_TEXT) -> dict[str, Any]:
    return completion_body(text, SCRIPTED_MODEL, tokens_in=SCRIPTED_USAGE["prompt_tokens"],
                           tokens_out=SCRIPTED_USAGE["completion_tokens"], id="chatcmpl-scripted")


@dataclass
class Received:
    at: float  # time.monotonic() when the request arrived
    path: str
    body: dict[str, Any]


class ScriptedServer:
    """Answers POSTs in order from `script`, then with `default`; records every request.

    GET /v1/models lists SCRIPTED_MODEL. HTTP/1.0, so every request is its own connection and a
    dropped one cannot be mistaken for a stale keep-alive connection.
    """

    def __init__(
        self,
        script: list[Step] | None = None,
        default: Step | None = None,
        reply: Callable[[dict[str, Any]], str] | None = None,
        tls: ssl.SSLContext | None = None,
    ):
        self.script = list(script or [])
        self.default = default or ok()
        self.reply = reply  # the answer text from the request body (default: SCRIPTED_TEXT); may block
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), self._handler_class())
        self._httpd.request_queue_size = 128
        if tls is not None:  # https: the handshake runs as each connection is accepted
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.port = int(self._httpd.server_address[1])
        self.base_url = f"{'https' if tls else 'http'}://{LOOPBACK}:{self.port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()  # joins handler threads (a sleeping one included)
        self._thread.join(timeout=10)

    @property
    def attempts(self) -> int:
        """Chat requests received."""
        return sum(1 for r in self.received if r.path.endswith("/chat/completions"))

    def gaps(self) -> list[float]:
        """Seconds between consecutive chat requests."""
        times = [r.at for r in self.received if r.path.endswith("/chat/completions")]
        return [b - a for a, b in itertools.pairwise(times)]

    def _next_step(self, received: Received) -> Step:
        with self._lock:
            self.received.append(received)
            return self.script.pop(0) if self.script else self.default

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                return

            def _send_json(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode("utf-8")
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    listing = {"object": "list", "data": [{"id": SCRIPTED_MODEL, "object": "model"}]}
                    self._send_json(200, listing)
                else:
                    self._send_json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                step = server._next_step(Received(time.monotonic(), self.path, body))
                if step.kind == "drop":
                    self.close_connection = True
                    return
                if step.kind == "status":
                    error = {"error": {"message": f"scripted HTTP {step.status}", "type": "scripted"}}
                    self._send_json(step.status, error, step.headers)
                    return
                if step.kind == "sleep":
                    time.sleep(step.seconds)
                text = server.reply(body) if server.reply else SCRIPTED_TEXT
                with contextlib.suppress(OSError):  # the client may have given up (timeout, kill)
                    self._send_json(200, chat_completion_body(text))

        return Handler


# --------------------------------------------------------------------------- fast fake server

FAKE_SERVER = Path(__file__).resolve().parents[1] / "benchmarks" / "fake_openai_server.py"
FAKE_MODEL = "fake-model"


@dataclass
class FakeServer:
    """benchmarks/fake_openai_server.py running in its own process."""

    base_url: str  # http://127.0.0.1:PORT/v1
    process: subprocess.Popen[str]
    port: int

    def stats(self) -> dict[str, Any]:
        """The server's own counters: requests, answered, errors, max_in_flight, cpu_s."""
        return httpx.get(f"http://{LOOPBACK}:{self.port}/stats", timeout=30, trust_env=False).json()


@contextlib.contextmanager
def fake_openai_server(*args: str, port: int = 0) -> Iterator[FakeServer]:
    """Start the fake server with its command-line options (see its docstring); stop it on exit."""
    cmd = [sys.executable, str(FAKE_SERVER), "--port", str(port), "--model", FAKE_MODEL, *args]
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors, text=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )  # fmt: skip
        try:
            line = process.stdout.readline() if process.stdout else ""
            if not line.startswith("listening "):
                process.wait(timeout=10)
                errors.seek(0)
                raise RuntimeError(f"the fake server did not start ({line!r}): {errors.read()[-2000:]}")
            base_url = line.split()[1]
            yield FakeServer(base_url, process, int(base_url.rsplit(":", 1)[1].split("/")[0]))
        finally:
            _stop(process)  # type: ignore[arg-type]
            if process.stdout:
                process.stdout.close()


def key_in_files(root: Path, secret: str) -> list[Path]:
    """Every file under `root` whose bytes contain `secret` (binary files such as SQLite included)."""
    needle = secret.encode("utf-8")
    return [p for p in sorted(root.rglob("*")) if p.is_file() and needle in p.read_bytes()]


__all__ = [
    "FAKE_MODEL",
    "LOOPBACK",
    "SCRIPTED_MODEL",
    "SCRIPTED_TEXT",
    "SCRIPTED_USAGE",
    "FakeServer",
    "LlamaServer",
    "ScriptedServer",
    "Step",
    "drop",
    "fake_openai_server",
    "free_port",
    "key_in_files",
    "llama_server",
    "ok",
    "sleep",
    "status",
]
