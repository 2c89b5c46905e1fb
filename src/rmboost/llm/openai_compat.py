"""Any OpenAI-compatible chat endpoint: OpenAI, vLLM, llama.cpp server, Ollama, ...

Retries with exponential backoff and full jitter on 429, 5xx, timeouts and dropped
connections, honouring Retry-After. The API key is read from an environment variable and kept
out of identities (hence the cache), logs and error messages.
"""

from __future__ import annotations

import asyncio
import os
import random
from email.utils import parsedate_to_datetime
from typing import Any

import openai

from rmboost.llm.chat_format import CONTINUE_FIELDS, chat_body, completion_from_body
from rmboost.llm.ratelimit import RateLimiter
from rmboost.llm.types import Completion, FatalLLMError, LLMError, Message, SamplingParams

DEFAULT_KEY_ENV = "OPENAI_API_KEY"


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = DEFAULT_KEY_ENV,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._rpm = RateLimiter(requests_per_minute) if requests_per_minute else None
        self._tpm = RateLimiter(tokens_per_minute) if tokens_per_minute else None
        # Local servers ignore the key; the OpenAI SDK insists on a non-empty one.
        key = os.environ.get(api_key_env) or "not-needed"
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=key, max_retries=0, timeout=timeout
        )

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "base_url": self.base_url, "model": self.model}

    async def check(self) -> None:
        """Reach the endpoint once: fail fast on a wrong URL, a rejected key or an unknown model."""
        try:
            listing = await self._client.models.list()
        except openai.AuthenticationError as exc:
            raise FatalLLMError(self._auth_message()) from exc
        except openai.PermissionDeniedError as exc:
            raise FatalLLMError(self._auth_message()) from exc
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise FatalLLMError(f"cannot reach the endpoint {self.base_url} ({type(exc).__name__})") from exc
        except openai.APIStatusError:
            return  # some servers have no /models; the first request will tell
        served = [m.id for m in listing.data]
        if served and self.model not in served:
            shown = ", ".join(served[:10]) + (" ..." if len(served) > 10 else "")
            raise FatalLLMError(f"model {self.model!r} is not served at {self.base_url} (it serves: {shown})")

    def _auth_message(self) -> str:
        source = f"${self.api_key_env}" if os.environ.get(self.api_key_env) else f"no ${self.api_key_env} set"
        return f"the endpoint {self.base_url} rejected the API key ({source})"

    async def complete(self, messages: list[Message], params: SamplingParams) -> Completion:
        # Tokens are budgeted once per request (a 429 is not billed); requests per attempt below.
        if self._tpm:
            estimate = sum(len(m["content"]) for m in messages) / 4 + params.max_tokens
            await self._tpm.acquire(estimate)
        # The same body a batch file carries. A final assistant message is a prefill: servers built
        # on vLLM continue it when asked (extra fields); the plain OpenAI API cannot, which is why
        # prefill is off by default for this backend.
        kwargs = chat_body(self.model, messages, params)
        if extra := {k: kwargs.pop(k) for k in CONTINUE_FIELDS if k in kwargs}:
            kwargs["extra_body"] = extra
        attempt = 0
        while True:
            if self._rpm:
                await self._rpm.acquire(1)  # a retry is a request too: the server counts it
            try:
                response = await self._client.chat.completions.create(**kwargs)
                return completion_from_body(response.model_dump(), messages, params, self.model)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise FatalLLMError(self._auth_message()) from exc
            except openai.NotFoundError as exc:
                raise FatalLLMError(
                    f"HTTP 404 from {self.base_url}: it serves no model {self.model!r}, or the URL "
                    "is not the API root (most servers want it to end in /v1)"
                ) from exc
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as exc:
                # APITimeoutError is a subclass of APIConnectionError.
                if attempt >= self.max_retries:
                    # A refused or dropped connection means the endpoint is gone: stop the job
                    # (finished pairs are kept). A slow answer is this request's failure only.
                    if isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError):
                        raise FatalLLMError(
                            f"lost the endpoint {self.base_url} after {attempt + 1} tries ({type(exc).__name__})"
                        ) from exc
                    raise LLMError(f"{_reason(exc)} after {attempt + 1} tries") from exc
                await asyncio.sleep(self._delay(attempt, exc))
                attempt += 1
            except openai.APIStatusError as exc:  # 400, 422, ...: this request is wrong, not the job
                raise LLMError(f"http_{exc.status_code}: {_short(exc)}") from exc

    def _delay(self, attempt: int, exc: Exception) -> float:
        retry_after = _retry_after(exc)
        if retry_after is not None:
            return min(retry_after, self.backoff_cap)
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))

    async def aclose(self) -> None:
        await self._client.close()


def _reason(exc: Exception) -> str:
    if isinstance(exc, openai.RateLimitError):
        return "rate_limited (HTTP 429)"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection_error"
    if isinstance(exc, openai.APIStatusError):
        return f"http_{exc.status_code}"
    return type(exc).__name__


def _short(exc: openai.APIStatusError) -> str:
    message = getattr(exc, "message", "") or str(exc)
    return " ".join(message.split())[:300]


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    if response is None:
        return None
    headers = response.headers
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            import time

            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
