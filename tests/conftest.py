"""Shared fixtures. Tests never touch the network: model hubs are switched off here."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rmboost.llm.types import Completion, LLMError, Message, SamplingParams

SHARED = Path(__file__).resolve().parents[2] / "shared"
QA_FEEDBACK = SHARED / "data" / "qa_feedback"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own default cache, so no test sees another's answers."""
    monkeypatch.setenv("RMBOOST_CACHE", str(tmp_path_factory.mktemp("cache") / "llm.sqlite"))


@pytest.fixture
def qa_feedback_dir() -> Path:
    if not (QA_FEEDBACK / "dev_feedback.json").is_file():
        pytest.fail(f"QA-Feedback data expected at {QA_FEEDBACK} (../shared beside the checkout)")
    return QA_FEEDBACK


class ScriptedBackend:
    """A fake backend for parsing and control-flow tests: answers come from a function."""

    name = "scripted"

    def __init__(self, answer: Callable[[list[Message], SamplingParams], str], model: str = "scripted"):
        self.answer = answer
        self.model = model
        self.calls: list[tuple[list[Message], SamplingParams]] = []

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model}

    async def check(self) -> None:
        return None

    async def complete(self, messages: list[Message], params: SamplingParams) -> Completion:
        self.calls.append((messages, params))
        text = self.answer(messages, params)
        if isinstance(text, Exception):
            raise text
        return Completion(
            text=text, tokens_in=len(messages[-1]["content"].split()), tokens_out=len(text.split()), model=self.model
        )

    async def aclose(self) -> None:
        return None


@pytest.fixture
def scripted() -> type[ScriptedBackend]:
    return ScriptedBackend


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


__all__ = ["LLMError", "ScriptedBackend", "read_jsonl", "run"]
