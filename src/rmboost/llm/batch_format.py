"""The batch file format shared by OpenAI's Batch API and vLLM's `run_batch`.

Input: one JSON object per line, `{"custom_id", "method": "POST", "url": "/v1/chat/completions",
"body": <a chat completion request>}`. Output and error files: one object per line,
`{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null, "error": ... | null}`.
rmboost's `custom_id` is the request's cache key, so a result maps back to its request on its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rmboost.llm.chat_format import chat_body
from rmboost.llm.types import SamplingParams

CHAT_ENDPOINT = "/v1/chat/completions"

# Per-request error codes that a later batch may well answer (the provider's, then HTTP statuses).
RETRYABLE_CODES = {"batch_expired", "batch_cancelled", "request_timeout", "rate_limit_exceeded",
                   "server_error", "batch_unfinished"}


def request_line(custom_id: str, body: dict[str, Any]) -> str:
    line = {"custom_id": custom_id, "method": "POST", "url": CHAT_ENDPOINT, "body": body}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"


def params_of(record: dict[str, Any]) -> SamplingParams:
    """The sampling parameters of a request as the cache records it."""
    return SamplingParams(**{**record["params"], "stop": tuple(record["params"].get("stop") or ())})


def line_for_record(key: str, record: dict[str, Any]) -> str:
    """The input line for a request as the cache records it (backend identity, messages, params)."""
    return request_line(key, chat_body(record["backend"]["model"], record["messages"], params_of(record)))


@dataclass
class LineResult:
    """One line of an output or error file."""

    key: str
    body: dict[str, Any] | None  # the chat completion, when the request succeeded
    reason: str = ""  # why not: a provider error code or http_<status>
    message: str = ""
    retryable: bool = False


def parse_result_line(obj: dict[str, Any]) -> LineResult:
    """Read a result line; tolerant of vLLM's older files, where `response` is the body itself."""
    key = str(obj.get("custom_id") or "")
    response = obj.get("response") or None
    error = obj.get("error")
    status, body = 0, None
    if isinstance(response, dict):
        if "choices" in response:  # vLLM before the status_code/body envelope
            status, body = 200, response
        else:
            status, body = int(response.get("status_code") or 0), response.get("body")
    if status == 200 and isinstance(body, dict) and body.get("choices") and not error:
        return LineResult(key, body)
    code, message = _error_of(error, body)
    reason = code or (f"http_{status}" if status else "batch_error")
    retryable = code in RETRYABLE_CODES or status in (408, 409, 429) or status >= 500
    return LineResult(key, None, reason, message, retryable)


def _error_of(error: Any, body: Any) -> tuple[str, str]:
    """(code, message) from the forms providers use: {code, message}, {"error": {...}}, or a string."""
    for candidate in (error, body):
        if isinstance(candidate, dict) and isinstance(candidate.get("error"), dict):
            candidate = candidate["error"]
        if isinstance(candidate, dict) and (candidate.get("message") or candidate.get("code")):
            code = candidate.get("code")
            return (str(code) if isinstance(code, str) else ""), " ".join(str(candidate.get("message", "")).split())[:300]
        if isinstance(candidate, str) and candidate:
            return "", " ".join(candidate.split())[:300]
    return "", ""
