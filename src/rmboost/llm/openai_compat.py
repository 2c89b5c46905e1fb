"""Any OpenAI-compatible chat endpoint: OpenAI, vLLM, llama.cpp server, Ollama, ...

HTTP goes through rmboost.llm.http (no SDK): keep-alive connections in a pool with no cap of
its own, so what is in flight is decided by --concurrency and the adaptive limit
(rmboost.llm.flow), never silently by the pool. Several base URLs are replicas of one model
(rmboost.llm.replicas). Retries use exponential backoff with full jitter on 429, 408/409,
5xx, timeouts and dropped connections, honouring Retry-After; a circuit breaker stops the job
when the endpoint fails everything. The API key is read from an environment variable and kept
out of identities (hence the cache), logs and error messages (server text is redacted too).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rmboost.llm.chat_format import chat_body_json, completion_from_body
from rmboost.llm.flow import AdaptiveLimit, CircuitBreaker
from rmboost.llm.http import HTTPClient, TransportError, ensure_open_files
from rmboost.llm.ratelimit import RateLimiter, backoff_delay, retry_after_seconds
from rmboost.llm.replicas import Replica, ReplicaPool
from rmboost.llm.types import Completion, FatalLLMError, LLMError, Message, SamplingParams

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
OVERLOAD = ("rate_limited", "timeout", "unavailable")  # these halve the adaptive limit
RETRIED_STATUS = (408, 409, 429)  # and every 5xx


@dataclass
class Reply:
    """What one HTTP attempt produced: a status and body, or a transport failure."""

    outcome: str  # ok, rate_limited, unavailable, server_error, timeout, connection_error, auth, not_found, client_error
    status: int = 0
    raw: bytes = b""
    retry_after: float | None = None
    detail: str = ""


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        base_url: str | Sequence[str],
        model: str,
        *,
        api_key_env: str = DEFAULT_KEY_ENV,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        max_in_flight: int | None = None,
        breaker_failures: int = 50,
        breaker_seconds: float = 120.0,
        cache_identity: str | None = None,
    ):
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self.base_urls = list(dict.fromkeys(u.rstrip("/") for u in urls))
        if not self.base_urls or not all(self.base_urls):
            raise ValueError("the openai backend needs --base-url")
        self.base_url = self.base_urls[0] if len(self.base_urls) == 1 else ", ".join(self.base_urls)
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.cache_identity = cache_identity
        self._rpm = RateLimiter(requests_per_minute) if requests_per_minute else None
        self._tpm = RateLimiter(tokens_per_minute) if tokens_per_minute else None
        # None: no adaptive gate here; the caller's own limit is all there is.
        self.limit = AdaptiveLimit(max_in_flight) if max_in_flight else None
        if max_in_flight:
            ensure_open_files(max_in_flight)
        self.breaker = CircuitBreaker(self.base_url, breaker_failures, breaker_seconds)
        self.pool = ReplicaPool(self.base_urls)
        self._key = os.environ.get(api_key_env) or ""
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "rmboost"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        self._http = HTTPClient(headers, timeout)

    # ------------------------------------------------------------------ identity and status

    def identity(self) -> dict[str, Any]:
        """Part of every cache key. One URL: as always (existing caches still hit). Several
        replicas: the sorted set, so the replica that answered does not matter. A named
        deployment (--cache-identity) replaces the URLs altogether."""
        if self.cache_identity:
            return {"backend": self.name, "deployment": self.cache_identity, "model": self.model}
        if len(self.base_urls) == 1:
            return {"backend": self.name, "base_url": self.base_urls[0], "model": self.model}
        return {"backend": self.name, "base_urls": sorted(self.base_urls), "model": self.model}

    def load_status(self) -> str:
        """For the progress line: the adaptive limit, and replicas in service."""
        parts = []
        if self.limit is not None:
            parts.append(f"in flight {self.limit.in_flight}, limit {self.limit.limit}/{self.limit.ceiling}")
        if len(self.pool.replicas) > 1:
            parts.append(f"replicas up {self.pool.up()}/{len(self.pool.replicas)}")
        return " | ".join(parts)

    # ------------------------------------------------------------------ HTTP

    async def _exchange(self, method: str, url: str, body: bytes = b"") -> Reply:
        try:
            response = await self._http.request(method, url, body)
        except TransportError as exc:
            return Reply(exc.kind, detail=exc.detail)
        if response.status < 400:
            return Reply("ok", response.status, response.body)
        status = response.status
        return Reply(_status_outcome(status), status, response.body, retry_after_seconds(response.headers))

    # ------------------------------------------------------------------ check

    async def check(self) -> None:
        """Reach every replica once: fail fast on a wrong URL, a rejected key or an unknown model."""
        await asyncio.gather(*(self._check_one(r) for r in self.pool.replicas))

    async def _check_one(self, replica: Replica) -> None:
        reply = await self._exchange("GET", f"{replica.base_url}/models")
        if reply.outcome in ("timeout", "connection_error", "tls_error"):
            raise FatalLLMError(f"cannot reach the endpoint {replica.base_url} ({reply.detail})")
        if reply.outcome == "auth":
            raise FatalLLMError(self._auth_message(replica.base_url))
        if reply.outcome != "ok":
            return  # some servers have no /models; the first request will tell
        try:
            served = [m["id"] for m in json.loads(reply.raw)["data"]]
        except (ValueError, KeyError, TypeError):
            return
        if served and self.model not in served:
            shown = ", ".join(served[:10]) + (" ..." if len(served) > 10 else "")
            raise FatalLLMError(
                f"model {self.model!r} is not served at {replica.base_url} (it serves: {self._redact(shown)})"
            )

    def _auth_message(self, url: str) -> str:
        source = f"${self.api_key_env}" if self._key else f"no ${self.api_key_env} set"
        return f"the endpoint {url} rejected the API key ({source})"

    # ------------------------------------------------------------------ completions

    async def complete(self, messages: list[Message], params: SamplingParams) -> Completion:
        # Tokens are budgeted once per request (a 429 is not billed); requests per attempt below.
        if self._tpm:
            estimate = sum(len(m["content"]) for m in messages) / 4 + params.max_tokens
            await self._tpm.acquire(estimate)
        body = chat_body_json(self.model, messages, params)  # the same body a batch file carries
        attempt = 0
        while True:
            self.breaker.raise_if_open()
            if self._rpm:
                await self._rpm.acquire(1)  # a retry is a request too: the server counts it
            epoch = await self.limit.acquire() if self.limit else 0
            replica = self.pool.pick()
            outcome, bad = "cancelled", None
            try:
                reply = await self._exchange("POST", replica.chat_url, body)
                outcome = reply.outcome
                if outcome == "ok":
                    try:
                        completion = self._to_completion(reply.raw, messages, params)
                    except LLMError as exc:
                        outcome, bad = "bad_response", exc
                    else:
                        if self.limit:
                            self.limit.success()
            finally:
                self.pool.done(replica, outcome)
                if self.limit:
                    self.limit.release()
            if outcome == "ok":
                self.breaker.succeeded()
                return completion
            delay = self._after_failure(reply, outcome, bad, epoch, attempt, replica.base_url)
            await asyncio.sleep(delay)
            attempt += 1

    def _after_failure(
        self, reply: Reply, outcome: str, bad: LLMError | None, epoch: int, attempt: int, url: str
    ) -> float:
        """Raise what ends this request (or the job); else return how long to wait before a retry."""
        if outcome == "auth":
            raise FatalLLMError(self._auth_message(url))
        if outcome == "tls_error":  # the same certificate would be rejected again
            raise FatalLLMError(f"cannot reach the endpoint {url} ({reply.detail})")
        if outcome == "not_found":
            raise FatalLLMError(
                f"HTTP 404 from {url}: it serves no model {self.model!r}, or the URL "
                "is not the API root (most servers want it to end in /v1)"
            )
        if outcome == "client_error":  # 400, 422, ...: this request is wrong, not the endpoint
            raise LLMError(f"http_{reply.status}: {self._redact(_error_text(reply.raw))}")
        reason = _reason(reply) if bad is None else "bad_response"
        if outcome in OVERLOAD and self.limit:
            self.limit.overload(epoch)
        self.breaker.attempt_failed(reason)
        if bad is not None:  # a garbled answer would come back garbled: not retried
            self.breaker.request_failed(reason)
            raise LLMError(self._redact(str(bad)))
        if attempt >= self.max_retries:
            self.breaker.request_failed(reason)
            # A refused or dropped connection means the endpoint is gone: stop the job
            # (finished pairs are kept). A slow or busy answer is this request's failure only.
            if outcome == "connection_error":
                raise FatalLLMError(f"lost the endpoint {self.base_url} after {attempt + 1} tries ({reply.detail})")
            raise LLMError(f"{reason} after {attempt + 1} tries")
        if reply.retry_after is None and outcome == "connection_error" and self.pool.up() > 0 and len(self.pool.replicas) > 1:
            return 0.0  # that replica is out; another one takes the request at once
        return backoff_delay(attempt, reply.retry_after, self.backoff_base, self.backoff_cap)

    def _to_completion(self, raw: bytes, messages: list[Message], params: SamplingParams) -> Completion:
        try:
            return completion_from_body(json.loads(raw), messages, params, self.model)
        except LLMError:
            raise
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise LLMError(f"bad_response: not an OpenAI chat completion ({_snippet(raw)})") from exc

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "<redacted>") if self._key else text

    async def aclose(self) -> None:
        await self._http.close()


def _status_outcome(status: int) -> str:
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status == 429:
        return "rate_limited"
    if status == 503:
        return "unavailable"
    if status >= 500 or status in RETRIED_STATUS:
        return "server_error"
    return "client_error"


def _reason(reply: Reply) -> str:
    if reply.outcome == "rate_limited":
        return "rate_limited (HTTP 429)"
    if reply.status:
        return f"http_{reply.status}"
    return reply.outcome  # timeout, connection_error


def _snippet(raw: bytes, limit: int = 200) -> str:
    return " ".join(raw[:limit].decode("utf-8", "replace").split()) or "empty body"


def _error_text(raw: bytes) -> str:
    """The server's own error message (OpenAI style {"error": {"message": ...}}), on one line."""
    try:
        data = json.loads(raw)
        error = data.get("error") if isinstance(data, dict) else None
        message = error.get("message") if isinstance(error, dict) else (error or data.get("detail"))
        text = str(message) if message else raw.decode("utf-8", "replace")
    except (ValueError, AttributeError):
        text = raw.decode("utf-8", "replace")
    return " ".join(text.split())[:300]


