"""The chat completion request and response as JSON, one mapping for every way rmboost sends one.

The online OpenAI-compatible backend and batch files (OpenAI's Batch API, vLLM's `run_batch`)
send the same body for the same request and read the same fields back, so an answer is the same
Completion (and the same cache entry) whichever way it came.
"""

from __future__ import annotations

from typing import Any

from rmboost.llm.types import Completion, LLMError, Message, SamplingParams

# Body fields beyond OpenAI's schema (the SDK sends them as extra_body): vLLM's prefill switches.
CONTINUE_FIELDS = ("continue_final_message", "add_generation_prompt")


def prefill_of(messages: list[Message]) -> str:
    """A final assistant message is a prefill: the model continues it, the answer starts with it."""
    return messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""


def chat_body(model: str, messages: list[Message], params: SamplingParams) -> dict[str, Any]:
    """The chat completion request for one rmboost request."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    if params.logprobs:
        body.update(logprobs=True, top_logprobs=params.logprobs)
    if params.stop:
        body["stop"] = list(params.stop)
    if prefill_of(messages):  # the plain OpenAI API cannot continue it; vLLM-based servers can
        body.update(continue_final_message=True, add_generation_prompt=False)
    return body


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
