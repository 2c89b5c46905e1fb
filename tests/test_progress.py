"""The progress log line (no terminal): never `nan`, and an ETA only when there is one to give."""

from __future__ import annotations

from io import StringIO

from rich.console import Console

from rmboost.llm.client import Usage
from rmboost.progress import JobProgress


def log_line(total: int, done: int = 0, failed: int = 0) -> str:
    shown = StringIO()
    progress = JobProgress(total=total, usage=Usage(), console=Console(file=shown, width=300), log_every=1e9)
    with progress:
        for _ in range(done):
            progress.advance()
        for _ in range(failed):
            progress.advance(failed_reason="no_tag")
    return shown.getvalue()  # the line __exit__ logs


def test_a_job_with_nothing_to_do_shows_no_eta():
    line = log_line(total=0)  # a finished job run again
    assert "pairs: 0 done, 0/0 finished" in line
    assert "nan" not in line.lower() and "ETA" not in line


def test_before_anything_finished_the_eta_is_unknown_not_nan():
    line = log_line(total=5)
    assert "pairs: 0 done, 0/5 finished" in line
    assert "ETA unknown" in line and "nan" not in line.lower()


def test_a_job_part_done_estimates_the_rest_and_a_done_one_shows_none():
    part = log_line(total=10, done=2, failed=1)
    assert "pairs: 2 done, 3/10 finished" in part and ", ETA " in part and "ETA unknown" not in part
    assert "nan" not in part.lower()
    done = log_line(total=3, done=3)
    assert "3/3 finished" in done and "ETA" not in done
