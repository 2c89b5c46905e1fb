"""`rmboost filter`: keep a pair only when the judge, in both orders, agrees with its label
(the paper's optional quality check, Appendix B). Removed pairs go to a side file with verdicts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmboost.data.inputs import read_rows
from rmboost.data.messages import inputs_row, response_text
from rmboost.data.pairs import atomic_write_jsonl, sidecar
from rmboost.llm.batch import BatchOptions, BatchRunner
from rmboost.llm.batch_command import command_backend
from rmboost.llm.cache import RequestCache
from rmboost.methods.common import StepFailed
from rmboost.methods.judge import JudgeOptions, open_judge
from rmboost.tasks import load_task


@dataclass
class FilterSummary:
    kept: int
    removed: int
    failed: int  # the judge gave no usable verdict; kept out of both files' counts, listed in removed
    output: str
    removed_file: str
    judge_usage: dict[str, Any]
    batch: dict[str, Any] | None = None  # batch mode: rounds, batches, time waited

    @property
    def rate(self) -> float:
        judged = self.kept + self.removed
        return self.removed / judged if judged else 0.0


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
    report: Callable[[str], None] | None = None,
) -> FilterSummary:
    pairs = read_rows(pairs_path)
    rows = [inputs_row(p, i, str(pairs_path)) for i, p in enumerate(pairs)]
    texts = [
        (response_text(p.get("chosen"), f"{pairs_path}, row {i}", "chosen"),
         response_text(p.get("rejected"), f"{pairs_path}, row {i}", "rejected"))
        for i, p in enumerate(pairs)
    ]
    task = load_task(task_name)
    if batch is not None and not batch.enabled:
        batch = None
    if batch is not None and cache_path is None:
        raise ValueError("--batch needs the request cache: answers and batch state live there")
    if batch is not None and batch.transport == "command":
        judge_backend = judge_backend or command_backend(judge_opts.connection())
    cache = RequestCache(cache_path) if cache_path else None
    kept: list[dict[str, Any]] = []
    removed: list[dict[str, Any]] = []
    failed = 0
    runner = None
    # Batch mode: every pair in flight (or --batch-rows of them), so that a round holds them all.
    width = (batch.rows or len(pairs)) if batch is not None else concurrency
    semaphore = asyncio.Semaphore(max(1, width))
    try:
        async with open_judge(judge_opts, task, seed, cache, concurrency, backend=judge_backend) as judge:
            if batch is not None:
                assert cache is not None
                runner = BatchRunner(cache, batch, judge_opts.max_attempts, report=report)
                runner.attach(judge.ctx.llm, judge_opts.connection())

            async def one(pair: dict[str, Any], row: dict[str, Any], chosen: str, rejected: str) -> None:
                nonlocal failed
                async with semaphore:
                    try:
                        verdict = await judge.compare(row, chosen, rejected, step="filter")
                    except StepFailed as fail:
                        failed += 1
                        removed.append({**pair, "filter": {"winner": None, "reason": fail.reason,
                                                           "attempts": fail.attempts}})
                        return
                record = {**pair, "filter": verdict.as_record()}
                (kept if verdict.winner == "a" else removed).append(record)

            try:
                await asyncio.gather(*(one(p, r, *t) for p, r, t in zip(pairs, rows, texts, strict=True)))
            finally:
                if runner is not None:
                    await runner.aclose()
    finally:
        if cache is not None:
            cache.close()
    order = {p.get("id"): i for i, p in enumerate(pairs)}
    kept.sort(key=lambda r: order.get(r.get("id"), 0))
    removed.sort(key=lambda r: order.get(r.get("id"), 0))
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out, kept)
    removed_path = sidecar(out, "filtered")
    atomic_write_jsonl(removed_path, removed)
    return FilterSummary(
        kept=len(kept), removed=len(removed) - failed, failed=failed, output=str(out),
        removed_file=str(removed_path), judge_usage=judge.usage(),
        batch=runner.summary() if runner is not None else None,
    )
