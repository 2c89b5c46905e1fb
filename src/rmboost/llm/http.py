"""A small HTTP/1.1 client for JSON APIs: keep-alive connections, no pool cap, one deadline per request.

Why not aiohttp for every request: at hundreds of requests a second the client's own CPU is what
limits a job, and this client spends about a fifth of aiohttp's CPU per request (0.08 vs 0.45 ms
against the same loopback server; benchmarks/bench_client.py measures the whole job). It speaks
what OpenAI-compatible servers answer: a status line, headers, and a body sized by
Content-Length, by chunked transfer coding, or by the server closing the connection; http and
https, the server's certificate always verified against the system's CAs (SSL_CERT_FILE or
SSL_CERT_DIR name others, e.g. a private CA). A request whose URL the environment sends through a proxy (HTTPS_PROXY, HTTP_PROXY,
NO_PROXY) goes through aiohttp, which knows proxies.

Every connection is kept open for the next request unless the server says otherwise; the pool
has no size limit, so the caller's concurrency limit is the only one. A kept connection that the
server had closed while idle is detected on reuse (nothing came back on it) and the request is
sent once more on a new connection: a server closes idle connections without reading them.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

MAX_HEAD = 1 << 16


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


class TransportError(Exception):
    """No HTTP answer: `kind` is "timeout", "connection_error" or "tls_error" (the server's
    certificate was rejected: not worth a retry); `detail` names what happened."""

    def __init__(self, kind: str, detail: str, *, stale: bool = False):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.stale = stale  # the connection died before a byte of the answer came back


UNTRUSTED_ISSUER = (18, 19, 20, 21)  # OpenSSL: self-signed, or no trusted CA signed it


def connect_failure(exc: BaseException) -> TransportError:
    """What a failed connect means: a rejected certificate says why and what to do."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = "; trust its CA with SSL_CERT_FILE=/path/to/ca.pem" if exc.verify_code in UNTRUSTED_ISSUER else ""
        return TransportError("tls_error", f"TLS certificate rejected: {exc.verify_message}{hint}")
    return TransportError("connection_error", type(exc).__name__)


@dataclass
class _Target:
    key: tuple[str, str, int]
    host: str
    port: int
    ssl: ssl.SSLContext | None
    path: str
    host_header: str
    proxied: bool


class _Connection(asyncio.Protocol):
    """One keep-alive connection: sends a request, parses one answer at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.mode = "length"  # length | chunked | close
        self.remaining = 0
        self.chunk_left: int | None = None
        self.chunks: list[bytes] = []
        self.keep_alive = True
        self.got_bytes = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.status is not None and self.mode == "close":
            self._finish(bytes(self.buffer))
            return
        detail = "ServerDisconnected" if not self.got_bytes else "IncompleteResponse"
        waiter.set_exception(TransportError("connection_error", detail, stale=not self.got_bytes))

    def exchange(self, data: bytes, method: str) -> asyncio.Future[Response]:
        self._reset()
        self.method = method
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():  # bytes nobody asked for: unusable
            self.close()
            return
        self.got_bytes = True
        self.buffer += data
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            self.close()
            if not self.waiter.done():
                self.waiter.set_exception(TransportError("connection_error", f"BadResponse ({exc})"))

    def _parse(self) -> None:
        buf = self.buffer
        while self.status is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise ValueError("headers too large")
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[: end + 4]
            version, _, rest = lines[0].partition(" ")
            status = int(rest[:3])
            if 100 <= status < 200:
                continue  # an interim answer (100 Continue): the real one follows
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            self.status, self.headers = status, headers
            connection = headers.get("connection", "").lower()
            self.keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
            if self.method == "HEAD" or status in (204, 304):
                self.remaining = 0
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                self.mode = "chunked"
            elif "content-length" in headers:
                self.remaining = int(headers["content-length"])
            else:
                self.mode, self.keep_alive = "close", False
        if self.mode == "length":
            if len(buf) >= self.remaining:
                body = bytes(buf[: self.remaining])
                del buf[: self.remaining]
                self._finish(body)
        elif self.mode == "chunked":
            self._parse_chunks()

    def _parse_chunks(self) -> None:
        buf = self.buffer
        while True:
            if self.chunk_left is None:
                line_end = buf.find(b"\r\n")
                if line_end < 0:
                    return
                size = int(bytes(buf[:line_end]).split(b";", 1)[0], 16)
                del buf[: line_end + 2]
                if size == 0:
                    self.chunk_left = -1  # the last chunk: trailers, then an empty line
                else:
                    self.chunk_left = size
            if self.chunk_left == -1:
                if buf.startswith(b"\r\n"):
                    del buf[:2]
                else:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        return
                    del buf[: end + 4]
                self._finish(b"".join(self.chunks))
                return
            if len(buf) < self.chunk_left + 2:
                return
            self.chunks.append(bytes(buf[: self.chunk_left]))
            del buf[: self.chunk_left + 2]
            self.chunk_left = None

    def _finish(self, body: bytes) -> None:
        if self.buffer:  # more bytes than one answer: do not trust this connection again
            self.keep_alive = False
        assert self.waiter is not None and self.status is not None
        if not self.waiter.done():
            self.waiter.set_result(Response(self.status, self.headers, body))


def ensure_open_files(connections: int) -> None:
    """Let the process hold `connections` sockets: raise the soft open-file limit toward the hard
    one if needed (it is often 1024), or say plainly that the OS will not allow that many."""
    try:
        import resource
    except ImportError:  # not on POSIX: nothing to check
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = connections + 256  # the cache, outputs, the interpreter's own files
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ValueError(
            f"{connections} requests in flight need about {needed} open files, but this process may "
            f"open at most {hard} (ulimit -n); lower --concurrency or raise the limit"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _decoded(response: Response) -> Response:
    """Undo a Content-Encoding the server applied although none was asked for."""
    encoding = response.headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "deflate"):
        try:
            body = zlib.decompress(response.body, 47)  # 47: gzip or zlib header, detected
        except zlib.error as exc:
            raise TransportError("connection_error", f"BadResponse ({encoding}: {exc})") from None
        return response._replace(body=body)
    return response


class HTTPClient:
    """Requests with default headers (the API key among them: never logged) and a timeout."""

    def __init__(self, headers: Mapping[str, str], timeout: float):
        self.timeout = timeout
        self._headers = dict(headers)
        self._block = "".join(f"{k}: {v}\r\n" for k, v in self._headers.items()).encode("latin-1")
        self._targets: dict[str, _Target] = {}
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aiohttp: Any = None  # an aiohttp.ClientSession, made for the first proxied request

    async def request(self, method: str, url: str, body: bytes = b"") -> Response:
        """One request; raises TransportError for a timeout or a connection that failed."""
        target = self._targets.get(url) or self._target(url)
        if target.proxied:
            return await self._via_aiohttp(method, url, body)
        head = f"{method} {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\n".encode("latin-1") + self._block
        if body or method != "GET":
            head += b"Content-Length: %d\r\n" % len(body)
        data = head + b"\r\n" + body
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    conn, reused = await self._connect(target)
                    try:
                        response = await conn.exchange(data, method)
                    except TransportError as exc:
                        conn.close()
                        if exc.stale and reused:
                            continue  # closed by the server while idle: send it on a new one
                        raise
                    except BaseException:
                        conn.close()  # cancelled or timed out mid-answer: its state is unknown
                        raise
                    if conn.keep_alive and not conn.closed:
                        self._idle.setdefault(target.key, []).append(conn)
                    else:
                        conn.close()
                    return _decoded(response)
        except TimeoutError:
            raise TransportError("timeout", "timeout") from None

    async def _connect(self, target: _Target) -> tuple[_Connection, bool]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections belong to the loop that made them
            self._idle.clear()
            self._loop = loop
        idle = self._idle.get(target.key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn, True
        try:
            _, conn = await loop.create_connection(
                _Connection, target.host, target.port, ssl=target.ssl,
                server_hostname=target.host if target.ssl else None,
            )  # fmt: skip
        except OSError as exc:  # refused, unreachable, TLS failures (ssl.SSLError is an OSError)
            raise connect_failure(exc) from None
        return conn, False

    def _target(self, url: str) -> _Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        if parts.port:
            shown += f":{parts.port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if tls and self._ssl is None:
            self._ssl = ssl.create_default_context()  # verifies certificate and host name
        proxies = urllib.request.getproxies()
        proxied = parts.scheme in proxies and not urllib.request.proxy_bypass(parts.netloc)
        target = _Target((parts.scheme, host, port), host, port, self._ssl if tls else None, path, shown, proxied)
        self._targets[url] = target
        return target

    async def _via_aiohttp(self, method: str, url: str, body: bytes) -> Response:
        import aiohttp

        if self._aiohttp is None:
            self._aiohttp = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),  # no cap: the caller's limit rules
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers=self._headers,
                trust_env=True,  # the proxy settings of the environment
            )
        try:
            async with self._aiohttp.request(method, url, data=body or None) as response:
                raw = await response.read()
                headers = {k.lower(): v for k, v in response.headers.items()}
                return Response(response.status, headers, raw)
        except TimeoutError:
            raise TransportError("timeout", "timeout") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise connect_failure(exc.certificate_error) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise TransportError("connection_error", type(exc).__name__) from None

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        if self._aiohttp is not None:
            await self._aiohttp.close()
            self._aiohttp = None
