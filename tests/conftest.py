"""Shared fixtures and the test lanes. Tests never touch the network: model hubs are switched off here.

Lanes: a test that costs more than a unit test carries a cost marker (declared in pyproject.toml):
`llm`, `train`, `browser`, `server`, `slow`. Every test without one is marked `fast` here, so
`pytest -m fast` is the fast lane. A test that loads the embedded model in this process without
the `llm` marker fails (see `_guard_llm`).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import asyncio
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rmboost.llm.types import Completion, LLMError, Message, SamplingParams

SHARED = Path(__file__).resolve().parents[2] / "shared"
QA_FEEDBACK = SHARED / "data" / "qa_feedback"


COST_MARKERS = ("llm", "train", "browser", "server", "slow")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        costly = [m for m in COST_MARKERS if item.get_closest_marker(m)]
        if not costly:
            item.add_marker(pytest.mark.fast)
        elif item.get_closest_marker("fast"):
            raise pytest.UsageError(f"{item.nodeid}: marked fast and {', '.join(costly)}")


# --------------------------------------------------------------------------- the llm guard

_LLM_LOADS: dict[str, int] = {}  # test id -> embedded-model loads in this process while it ran
_RUNNING: list[pytest.Item] = []


def _guard_llm() -> None:
    """Count every llama.cpp model load against the test that is running (fixtures included)."""
    try:
        from llama_cpp import Llama
    except ImportError:  # the setup is incomplete; the tests that need it say so themselves
        return
    original = Llama.__init__

    @functools.wraps(original)
    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        if _RUNNING:
            _LLM_LOADS[_RUNNING[-1].nodeid] = _LLM_LOADS.get(_RUNNING[-1].nodeid, 0) + 1
        original(self, *args, **kwargs)

    Llama.__init__ = counted  # type: ignore[method-assign]


_guard_llm()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _RUNNING.append(item)
    try:
        yield
    finally:
        _RUNNING.pop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.passed and _LLM_LOADS.get(item.nodeid) and not item.get_closest_marker("llm"):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} loaded the embedded model (llama.cpp) without the `llm` marker; "
                           "mark it @pytest.mark.llm (or give it a scripted backend)")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own default cache, so no test sees another's answers."""
    monkeypatch.setenv("RMBOOST_CACHE", str(tmp_path_factory.mktemp("cache") / "llm.sqlite"))


@pytest.fixture
def qa_feedback_dir() -> Path:
    if not (QA_FEEDBACK / "dev_feedback.json").is_file():
        pytest.fail(f"QA-Feedback data expected at {QA_FEEDBACK} (../shared beside the checkout)")
    return QA_FEEDBACK


class TrainingStarted(Exception):
    """Raised where a trainer would start its device state (see `stop_at_training_start`)."""


@pytest.fixture
def stop_at_training_start(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The training harness's TrainingRun replaced by one that records its config and raises
    TrainingStarted: a test sees whether a trainer got past its data checks, with no torch,
    accelerate or model loaded (the trainers load their models after it)."""
    started: list[Any] = []

    def start(cfg: Any, console: Any = None) -> None:
        started.append(cfg)
        raise TrainingStarted

    monkeypatch.setattr("rmboost.training.TrainingRun", start)
    return started


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


__all__ = ["LLMError", "ScriptedBackend", "TrainingStarted", "read_jsonl", "run"]
