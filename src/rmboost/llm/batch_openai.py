"""Batches through the Files + Batches endpoints of an OpenAI-compatible API.

Upload the input file (`POST /files`, purpose `batch`), create the batch (`POST /batches` with
the chat endpoint and a completion window), poll it (`GET /batches/{id}`), then stream its output
and error files (`GET /files/{id}/content`). 429, 5xx and dropped connections are retried with
backoff; a rejected key or any other refusal stops the job with one line. The API key is read
from the environment for each request and never recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from rmboost.llm.batch_format import CHAT_ENDPOINT
from rmboost.llm.batch_store import BatchRecord, BatchStore, Poll
from rmboost.llm.ratelimit import backoff_delay, retry_after_seconds
from rmboost.llm.types import FatalLLMError

SEARCH_PAGES = 50  # how far back a restarted job looks for a batch it may have created


class OpenAIBatchTransport:
    name = "openai"
    max_poll_delay = math.inf

    def __init__(
        self,
        base_url: str,
        workdir: Path,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        completion_window: str = "24h",
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.workdir = workdir
        self.api_key_env = api_key_env
        self.completion_window = completion_window
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.timeout = timeout
        self._http: httpx.AsyncClient | None = None

    @property
    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout)
        return self._http

    def target(self) -> dict[str, Any]:
        return {"transport": self.name, "base_url": self.base_url}

    # ------------------------------------------------------------------ the batch's life

    async def submit(self, record: BatchRecord, store: BatchStore, write_input: Callable[[Path], int]) -> None:
        created = None
        if record.state == "new":
            self.workdir.mkdir(parents=True, exist_ok=True)
            path = self.workdir / f"{record.id}.jsonl"
            write_input(path)
            try:
                upload = await self._call(
                    "POST", "/files", what="uploading a batch file",
                    make=lambda: {"data": {"purpose": "batch"},
                                  "files": {"file": (path.name, path.open("rb"), "application/jsonl")}},
                )
            finally:
                path.unlink(missing_ok=True)
            record.input_file = str(upload.json()["id"])
            record.state = "uploaded"
            store.update(record.id, input_file=record.input_file, state="uploaded")
        else:  # uploaded by an earlier run that stopped before it learnt the batch's id
            created = await self._find(record)
        if created is None:
            body = {"input_file_id": record.input_file, "endpoint": CHAT_ENDPOINT,
                    "completion_window": self.completion_window, "metadata": {"rmboost_batch": record.id}}
            created = (await self._call("POST", "/batches", what="creating a batch", make=lambda: {"json": body})).json()
        record.remote_id, record.status, record.state = str(created["id"]), created.get("status"), "submitted"
        store.update(record.id, remote_id=record.remote_id, status=record.status, state="submitted")

    async def _find(self, record: BatchRecord) -> dict[str, Any] | None:
        """The batch made from this record's input file, if an earlier run created it."""
        after = None
        for _ in range(SEARCH_PAGES):
            params = {"limit": 100, **({"after": after} if after else {})}
            page = (await self._call("GET", "/batches", what="listing batches", make=lambda p=params: {"params": p})).json()
            items = page.get("data") or []
            for item in items:
                if item.get("input_file_id") == record.input_file:
                    return item
            older = [i for i in items if (i.get("created_at") or math.inf) < record.created - 3600]
            if not page.get("has_more") or not items or older:
                return None
            after = items[-1]["id"]
        return None

    async def poll(self, record: BatchRecord) -> Poll:
        batch = (await self._call("GET", f"/batches/{record.remote_id}", what="checking a batch")).json()
        status = str(batch.get("status") or "unknown")
        counts = {k: int(v or 0) for k, v in (batch.get("request_counts") or {}).items()}
        info = {"output_file_id": batch.get("output_file_id"), "error_file_id": batch.get("error_file_id")}
        problem = None
        if status == "failed":
            errors = (batch.get("errors") or {}).get("data") or []
            detail = "; ".join(f"{e.get('code') or 'error'}: {e.get('message')}" for e in errors[:3]) or "no reason given"
            problem = f"batch {record.remote_id} at {self.base_url} failed ({detail})"
        return Poll(status, counts, info, problem)

    async def results(self, record: BatchRecord) -> AsyncIterator[dict[str, Any]]:
        for name in ("output_file_id", "error_file_id"):
            file_id = record.info.get(name)
            if file_id:
                async for line in self._lines(str(file_id)):
                    yield line

    async def _lines(self, file_id: str) -> AsyncIterator[dict[str, Any]]:
        url = f"{self.base_url}/files/{file_id}/content"
        for attempt in range(self.max_retries + 1):
            try:
                async with self._client.stream("GET", url, headers=self._headers()) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        self._check(response, f"downloading batch results {file_id}")
                    async for text in response.aiter_lines():
                        if text.strip():
                            yield json.loads(text)
                return
            except (httpx.TransportError, _Retry) as exc:  # lines already read are read again: harmless
                if attempt >= self.max_retries:
                    raise FatalLLMError(f"cannot download batch results {file_id} from {self.base_url} ({exc})") from exc
                await asyncio.sleep(self._delay(attempt, None))

    async def cleanup(self, record: BatchRecord) -> None:
        for file_id in (record.input_file, record.info.get("output_file_id"), record.info.get("error_file_id")):
            if file_id:  # storage hygiene only; the answers are in the cache
                with contextlib.suppress(httpx.HTTPError):
                    await self._client.delete(f"{self.base_url}/files/{file_id}", headers=self._headers())

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    # ------------------------------------------------------------------ HTTP with retries

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def _call(
        self, method: str, path: str, *, what: str, make: Callable[[], dict[str, Any]] | None = None
    ) -> httpx.Response:
        url = f"{self.base_url}{path}"
        for attempt in range(self.max_retries + 1):
            try:
                response = await self._client.request(method, url, headers=self._headers(), **(make() if make else {}))
                self._check(response, what)
                return response
            except (httpx.TransportError, _Retry) as exc:
                if attempt >= self.max_retries:
                    detail = exc.reason if isinstance(exc, _Retry) else type(exc).__name__
                    raise FatalLLMError(f"{what} at {self.base_url} failed after {attempt + 1} tries ({detail})") from exc
                await asyncio.sleep(self._delay(attempt, getattr(exc, "retry_after", None)))
        raise AssertionError("unreachable")

    def _check(self, response: httpx.Response, what: str) -> None:
        code = response.status_code
        if code < 400:
            return
        if code in (401, 403):
            source = f"${self.api_key_env}" if os.environ.get(self.api_key_env) else f"no ${self.api_key_env} set"
            raise FatalLLMError(f"the endpoint {self.base_url} rejected the API key ({source}) while {what}")
        if code == 429 or code >= 500:
            raise _Retry(f"HTTP {code}", retry_after_seconds(response.headers))
        if code == 404 and response.request.url.path.rstrip("/").endswith(("/files", "/batches")):
            raise FatalLLMError(
                f"HTTP 404 from {self.base_url} while {what}: this endpoint has no batch API "
                "(it needs the Files and Batches endpoints; vLLM's server has none, use --batch-transport command)"
            )
        raise FatalLLMError(f"HTTP {code} from {self.base_url} while {what}: {_message(response)}")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        return backoff_delay(attempt, retry_after, self.backoff_base, self.backoff_cap)


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        text = error.get("message") if isinstance(error, dict) else json.dumps(body)
    except (ValueError, AttributeError):
        text = response.text
    return " ".join(str(text).split())[:300]


