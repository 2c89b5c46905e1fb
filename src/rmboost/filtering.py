"""`rmboost filter`: keep a pair only when the judge, in both orders, agrees with its label
(the paper's optional quality check, Appendix B). Removed pairs go to a side file with verdicts.

The job, like generate's: take the output's lock (one writer per output, data/output_lock.py),
check every pair in one streaming pass (a bad row stops the job before any call, naming its
file and line), then stream the pairs through a window of judgements: at most `width` in flight
(the concurrency; in batch mode --batch-rows or every pair, so that a round holds them all) and
at most twice that read and not yet written. Kept and removed pairs are written in input order
as they finish, to temporary files renamed into place at the end: a crash leaves no half file
under either name, and a re-run answers what was already judged from the request cache. The
kept pairs are JSONL or Parquet, after the output's name (Parquet is written at the end from
the staged rows, streamed); the removed ones go to `<stem>.filtered.jsonl`, JSONL like every
side file. The closing summary, with tokens and cost, goes to `<name>.summary.json`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from rmboost.data.inputs import InputError, iter_located_rows
from rmboost.data.messages import inputs_row, response_text
from rmboost.data.output_lock import check_not_written, hold_output, lock_path
from rmboost.data.pairs import (
    StagedRows,
    check_output_name,
    input_written_over,
    sidecar,
    write_summary,
)
from rmboost.llm.accounting import estimate_cost
from rmboost.llm.batch import BatchOptions, BatchRunner
from rmboost.llm.batch_command import command_backend
from rmboost.llm.cache import RequestCache
from rmboost.methods.common import StepFailed
from rmboost.methods.judge import Judge, JudgeOptions, open_judge
from rmboost.progress import JobProgress
from rmboost.tasks import TaskSpec, load_task

Judged = tuple[dict[str, Any], str]  # (the pair with its verdict, "kept" / "removed" / "no verdict")


@dataclass
class FilterSummary:
    output: str
    removed_file: str
    task: str
    model: str
    pairs: int  # in the input
    kept: int
    removed: int  # the judge preferred `rejected`, tied or contradicted itself
    failed: int  # the judge gave no usable verdict; listed in the removed file, counted apart
    failures: dict[str, int]  # the failed ones by reason
    judge_usage: dict[str, Any]
    cost_usd: dict[str, float] | None
    llm_calls: int
    cache_hits: int
    wall_seconds: float
    batch: dict[str, Any] | None = None  # batch mode: rounds, batches, time waited

    @property
    def rate(self) -> float | None:
        """removed / judged; None when no pair got a verdict (as generate's summary)."""
        judged = self.kept + self.removed
        return self.removed / judged if judged else None

    def to_json(self) -> str:
        rate = self.rate
        return json.dumps({**asdict(self), "filter_rate": round(rate, 4) if rate is not None else None}, indent=2)


def judged_pair(where: str, index: int, pair: dict[str, Any], task: TaskSpec) -> tuple[dict[str, Any], str, str]:
    """What the judge is shown of a pair: its task inputs, and chosen and rejected as text.

    A pair without an input the task needs is refused (a judge shown no passages would still
    decide the label)."""
    for name in ("chosen", "rejected"):
        if pair.get(name) is None:
            raise InputError(f"{where}: missing field {name!r}")
    row = inputs_row(pair, index, where)
    if missing := task.missing_fields(row):
        raise InputError(f"{where} (id {row['id']}): 'inputs' has no {', '.join(repr(m) for m in missing)}, "
                         f"needed by task {task.name!r}")
    return row, response_text(pair["chosen"], where, "chosen"), response_text(pair["rejected"], where, "rejected")


def check_pairs(path: str | Path, task: TaskSpec) -> int:
    """Check every pair as the judge will need it, in one streaming pass; returns how many there are."""
    count = 0
    for count, (where, pair) in enumerate(iter_located_rows(path), 1):
        judged_pair(where, count - 1, pair, task)
    return count


def check_not_in_place(pairs_path: Path, output: Path) -> None:
    """Refuse to write over the input: a second run would find only the kept pairs and write an
    empty removed file over the only copy of the removed ones."""
    if input_written_over((output, sidecar(output, "filtered"), sidecar(output, "summary")), [pairs_path]):
        raise InputError(f"{pairs_path} is the input: filter writes the kept pairs and the removed ones to "
                         "new files (choose another --output)")


async def run_filter(
    pairs_path: str | Path,
    output: str | Path,
    task_name: str,
    judge_opts: JudgeOptions,
    *,
    seed: int = 0,
    cache_path: Path | None = None,
    concurrency: int = 1,
    judge_backend: Any = None,
    batch: BatchOptions | None = None,
    console: Console | None = None,
    show_progress: bool = True,
    price_in: float | None = None,
    price_out: float | None = None,
) -> FilterSummary:
    """Filter one pair file. While another job writes the same output this one stops with
    OutputBusy (a ValueError naming that job) before it reads a row or calls anyone."""
    started = time.monotonic()
    task = load_task(task_name)
    batch = batch if batch is not None and batch.enabled else None
    if batch is not None and cache_path is None:
        raise ValueError("--batch needs the request cache: answers and batch state live there")
    if batch is not None and batch.transport == "command":
        judge_backend = judge_backend or command_backend(judge_opts.connection())
    console = console or Console(stderr=True)
    out = Path(output)
    check_output_name(out)
    check_not_in_place(Path(pairs_path), out)
    with hold_output(out):
        if lock_path(Path(pairs_path)).resolve() != lock_path(out).resolve():  # (else held just above)
            check_not_written(Path(pairs_path), advice="filter it once that job has finished")
        total = check_pairs(pairs_path, task)
        cache = RequestCache(cache_path) if cache_path else None
        kept, removed = StagedRows(out), StagedRows(sidecar(out, "filtered"))
        written: Counter[str] = Counter()  # the pairs written so far, by outcome (the removed file holds two)
        runner = None
        try:
            async with open_judge(judge_opts, task, seed, cache, concurrency, backend=judge_backend) as judge:
                if batch is not None:
                    assert cache is not None
                    runner = BatchRunner(cache, batch, judge_opts.max_attempts,
                                         report=lambda m: console.print(m, highlight=False))
                    runner.attach(judge.ctx.llm, judge_opts.connection())

                shown = (lambda: written_line(written),
                         getattr(judge.ctx.llm.backend, "load_status", None), runner.status_line if runner else None)
                progress = JobProgress(total=total, usage=judge.ctx.llm.usage, console=console,
                                       enabled=show_progress, status=[s for s in shown if s])
                if runner is not None:
                    runner.on_update = progress.refresh
                width = max(1, (batch.rows or total) if batch is not None else concurrency)
                try:
                    with progress:
                        await _judge_all(judge, pairs_path, task, total, width, progress, kept, removed, written)
                finally:
                    if runner is not None:
                        await runner.aclose()
            kept.prepare()  # the slow part, and the one that can fail (a Parquet column clash), for both
            removed.prepare()
            removed.publish()  # then two renames: the old and new files never stand side by side for long
            kept.publish()
        except BaseException:
            kept.discard()
            removed.discard()
            raise
        finally:
            if cache is not None:
                cache.close()
        usage = judge.ctx.llm.usage
        summary = FilterSummary(
            output=str(out), removed_file=str(removed.path), task=task.name, model=judge.ctx.llm.backend.model,
            pairs=total, kept=written["kept"], removed=written["removed"], failed=written["no verdict"],
            failures=dict(progress.failures), judge_usage=usage.as_dict(),
            cost_usd=estimate_cost([usage.as_dict()], price_in, price_out, batch),
            llm_calls=usage.total("calls"), cache_hits=usage.total("cache_hits"),
            wall_seconds=round(time.monotonic() - started, 2),
            batch=runner.summary() if runner is not None else None,
        )
        write_summary(out, summary.to_json())
    return summary


def written_line(written: Counter[str]) -> str:
    """The progress line's counts, in the summary's terms: kept, removed by the judge, no verdict."""
    return f"written: kept {written['kept']}, removed {written['removed']}, no verdict {written['no verdict']}"


async def _judge_all(
    judge: Judge, pairs_path: str | Path, task: TaskSpec, total: int, width: int, progress: JobProgress,
    kept: StagedRows, removed: StagedRows, written: Counter[str],
) -> None:
    """Judge the `total` pairs the checking pass counted as they stream in, `width` at a time,
    and write each in input order.

    The window holds the pairs read and not yet written (at most 2 x width): when it is full,
    the oldest is awaited and written before the next pair is read. A file that changed length
    since the checking pass stops the job (its answers stay in the cache).
    """
    semaphore = asyncio.Semaphore(width)

    async def one(index: int, where: str, pair: dict[str, Any]) -> Judged:
        row, chosen, rejected = judged_pair(where, index, pair, task)
        async with semaphore:
            try:
                verdict = await judge.compare(row, chosen, rejected, step="filter")
            except StepFailed as fail:
                progress.advance(failed_reason=fail.reason)
                return {**pair, "filter": {"winner": None, "reason": fail.reason, "attempts": fail.attempts}}, "no verdict"
        progress.advance()
        return {**pair, "filter": verdict.as_record()}, "kept" if verdict.winner == "a" else "removed"

    def write(judged: Judged) -> None:
        record, outcome = judged
        (kept if outcome == "kept" else removed).write(record)
        written[outcome] += 1

    window: deque[asyncio.Task[Judged]] = deque()
    rows = iter_located_rows(pairs_path)
    try:
        read = 0
        for index, (where, pair) in enumerate(itertools.islice(rows, total)):
            read = index + 1
            window.append(asyncio.create_task(one(index, where, pair)))
            if len(window) >= 2 * width:
                write(await window.popleft())
        while window:
            write(await window.popleft())
        if read < total or next(rows, None) is not None:
            raise InputError(f"{pairs_path} changed while it was being filtered ({total} pairs when checked); "
                             "is another program still writing it? Run again once it is complete")
    except BaseException:
        for task in window:
            task.cancel()
        await asyncio.gather(*window, return_exceptions=True)
        raise
