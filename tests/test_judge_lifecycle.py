"""The judge's lifecycle (methods.judge.open_judge): checked before any work, closed on any exit."""

from __future__ import annotations

import asyncio

import pytest

from rmboost.llm.types import FatalLLMError
from rmboost.methods.judge import JudgeOptions, open_judge
from rmboost.tasks import load_task


class Recording:
    """A judge backend that records its lifecycle; `fail_check` makes the endpoint check fail."""

    name = "scripted"
    model = "judge"

    def __init__(self, fail_check: bool = False):
        self.fail_check = fail_check
        self.events: list[str] = []

    def identity(self):
        return {"backend": self.name, "model": self.model}

    async def check(self):
        self.events.append("check")
        if self.fail_check:
            raise FatalLLMError("cannot reach the judge")

    async def complete(self, messages, params):
        raise AssertionError("no request is expected")

    async def aclose(self):
        self.events.append("close")


def _open(backend: Recording):
    return open_judge(JudgeOptions(), load_task("qa_feedback"), 0, None, backend=backend)


def test_the_judge_is_checked_first_and_closed_after_the_work():
    backend = Recording()

    async def job():
        async with _open(backend) as judge:
            backend.events.append("work")
            return judge.usage()

    usage = asyncio.run(job())
    assert backend.events == ["check", "work", "close"]
    assert usage == {}


def test_a_failed_check_stops_before_any_work_and_still_closes():
    backend = Recording(fail_check=True)

    async def job():
        async with _open(backend):
            backend.events.append("work")

    with pytest.raises(FatalLLMError, match="cannot reach the judge"):
        asyncio.run(job())
    assert backend.events == ["check", "close"]


def test_an_error_during_the_work_closes_the_judge():
    backend = Recording()

    async def job():
        async with _open(backend):
            raise ValueError("bad pair row")

    with pytest.raises(ValueError, match="bad pair row"):
        asyncio.run(job())
    assert backend.events == ["check", "close"]
