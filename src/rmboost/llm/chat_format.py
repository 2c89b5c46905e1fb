"""The chat completion request and response as JSON, one mapping for every way rmboost sends one.

The online OpenAI-compatible backend and batch files (OpenAI's Batch API, vLLM's `run_batch`)
send the same body for the same request (the online backend as bytes, `chat_body_json`) and
read the same fields back, so an answer is the same
Completion (and the same cache entry) whichever way it came.
"""

from __future__ import annotations

import json
from typing import Any

from rmboost.llm.cache import messages_json
from rmboost.llm.types import Completion, LLMError, Message, SamplingParams


def prefill_of(messages: list[Message]) -> str:
    """A final assistant message is a prefill: the model continues it, the answer starts with it."""
    return messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""


def chat_body(model: str, messages: list[Message], params: SamplingParams) -> dict[str, Any]:
    """The chat completion request for one rmboost request."""
    return {"model": model, "messages": messages, **_sampling_fields(messages, params)}


def chat_body_json(model: str, messages: list[Message], params: SamplingParams) -> bytes:
    """`chat_body` as compact UTF-8 JSON, for the online backend: the messages are the canonical
    JSON the cache key is hashed from (`cache.messages_json`, serialised once per request)."""
    rest = json.dumps(_sampling_fields(messages, params), ensure_ascii=False, separators=(",", ":"))
    head = json.dumps(model, ensure_ascii=False)
    return f'{{"model":{head},"messages":{messages_json(messages)},{rest[1:]}'.encode()


def _sampling_fields(messages: list[Message], params: SamplingParams) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
    }
    if params.seed is not None:
        fields["seed"] = params.seed
    if params.logprobs:
        fields.update(logprobs=True, top_logprobs=params.logprobs)
    if params.stop:
        fields["stop"] = list(params.stop)
    if prefill_of(messages):  # the plain OpenAI API cannot continue it; vLLM-based servers can
        fields.update(continue_final_message=True, add_generation_prompt=False)
    return fields


def completion_from_body(
    body: dict[str, Any], messages: list[Message], params: SamplingParams, model: str
) -> Completion:
    """A Completion from a chat completion response body to the request (`messages`, `params`).

    Raises LLMError when the body has no choice to read.
    """
    choices = body.get("choices") or []
    if not choices:
        raise LLMError("empty_choices: the endpoint returned no choices")
    choice = choices[0]
    usage = body.get("usage") or {}
    message = choice.get("message") or {}
    logprobs = None
    if params.logprobs and isinstance(choice.get("logprobs"), dict):
        logprobs = choice["logprobs"].get("content") or None
    return Completion(
        text=prefill_of(messages) + (message.get("content") or ""),
        tokens_in=int(usage.get("prompt_tokens") or 0),
        tokens_out=int(usage.get("completion_tokens") or 0),
        model=body.get("model") or model,
        finish_reason=choice.get("finish_reason"),
        logprobs=logprobs,
    )


def completion_body(
    text: str, model: str, *, tokens_in: int, tokens_out: int, id: str = "chatcmpl-0",
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What an OpenAI-compatible server answers (`completion_from_body` reads it back): for the
    loopback servers of tests and benchmarks."""
    return {
        "id": id, "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                     "logprobs": {"content": logprobs} if logprobs else None}],
        "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out},
    }
