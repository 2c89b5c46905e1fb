"""LLM access: backends, the request cache and the client that ties them together."""

from rmboost.llm.client import LLM, Usage
from rmboost.llm.types import (
    Backend,
    Completion,
    FatalLLMError,
    LLMError,
    Message,
    SamplingParams,
)

__all__ = [
    "LLM",
    "Backend",
    "Completion",
    "FatalLLMError",
    "LLMError",
    "Message",
    "SamplingParams",
    "Usage",
]
