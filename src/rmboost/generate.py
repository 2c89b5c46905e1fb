"""`rmboost generate`: prompts in, preference pairs out, resumable and accounted for.

The job: read and validate every input row, fix the labels, skip ids already in the output,
then run the method over the rest with a pool of async workers. Pairs stream to the output,
unusable answers to the failures file, and the closing summary to `<name>.summary.json`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from rmboost.backends import BackendOptions, make_backend
from rmboost.data import qa_feedback
from rmboost.data.inputs import InputError, apply_field_map, read_rows
from rmboost.data.pairs import (
    FailureLog,
    PairWriter,
    read_jsonl_tolerant,
    sidecar,
    to_conversational,
)
from rmboost.llm import LLM, Backend, SamplingParams
from rmboost.llm.cache import RequestCache
from rmboost.methods.common import MethodContext, StepFailed
from rmboost.methods.judge import Judge, JudgeOptions, make_judge
from rmboost.methods.rlaif import rlaif_pair
from rmboost.methods.rlcd import rlcd_pair
from rmboost.methods.rmboost import assign_labels, rmboost_pair
from rmboost.methods.west_of_n import judge_scorer, rm_scorer, west_of_n_pair
from rmboost.progress import JobProgress
from rmboost.prompts import ASPECT_MODES, Label
from rmboost.tasks import TaskSpec, load_task

# Every method: (ctx, row, pre-assigned label) -> pair row, or StepFailed. Only RMBoost uses the label.
METHODS = {"rmboost": rmboost_pair, "rlaif": rlaif_pair, "rlcd": rlcd_pair, "west-of-n": west_of_n_pair}


def default_cache_path() -> Path:
    """One content-addressed cache per user: sharing it across jobs is safe and saves calls."""
    if env := os.environ.get("RMBOOST_CACHE"):
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "rmboost" / "llm-cache.sqlite"


@dataclass
class GenerateConfig:
    task: str
    input: str
    output: Path
    method: str = "rmboost"
    fields: dict[str, str] = field(default_factory=dict)
    id_field: str = "id"
    split: str = "train"
    input_format: str = "auto"  # "auto" | "rows" | "qa_feedback"
    limit: int | None = None
    seed: int = 0
    shard: tuple[int, int] | None = None  # (k, N), 1-based k
    conversational: bool = False
    backend: BackendOptions = field(default_factory=BackendOptions)
    concurrency: int = 1
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    cache: Path | None = None  # None: default_cache_path()
    use_cache: bool = True
    aspect_mode: str = "model-selects"
    aspects_k: int = 2
    y1_from: str | None = None
    labels: str = "balanced"  # rmboost: "balanced", or every y2 "worse" / "better" than y1
    max_attempts: int = 3
    prefill: bool | None = None  # start answers inside <response>; None: on for llamacpp only
    judge: JudgeOptions = field(default_factory=JudgeOptions)  # rlaif, west-of-n's judge scorer, --filter
    n: int = 8  # west-of-n pool size
    scorer: str = "judge"  # west-of-n: "judge" or "rm:PATH"
    filter: bool = False  # keep a pair only if the judge agrees with its label in both orders
    price_in: float | None = None  # per million input tokens, for the cost estimate
    price_out: float | None = None
    show_progress: bool = True


@dataclass
class GenerateSummary:
    output: str
    failures_file: str
    method: str
    task: str
    model: str
    prompts: int  # in this job (after --limit and --shard)
    resumed: int  # pairs already in the output before this run
    pairs_written: int  # pairs added by this run
    pairs_total: int  # pairs in the output now
    failures: dict[str, int]
    failures_by_step: dict[str, int]
    filtered: int  # pairs the judge filter removed in this run
    filter_rate: float | None  # removed / judged, in this run
    usage: dict[str, Any]
    judge_usage: dict[str, Any]
    cost_usd: dict[str, float] | None
    llm_calls: int
    cache_hits: int
    wall_seconds: float
    labels: dict[str, int]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def parse_shard(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    try:
        kk, nn = int(k), int(n)
    except ValueError:
        kk = nn = 0
    if not sep or nn < 1 or not 1 <= kk <= nn:
        raise ValueError(f"--shard {text!r}: expected k/N with 1 <= k <= N, e.g. 1/4")
    return kk, nn


def load_prompt_rows(cfg: GenerateConfig) -> list[dict[str, Any]]:
    """Rows with ids, from a generic file or the QA-Feedback release."""
    source = str(cfg.input)
    fmt = cfg.input_format
    if fmt == "auto":
        path = Path(source)
        is_qaf = path.name == "dev_feedback.json" or (path.is_dir() and (path / "dev_feedback.json").is_file())
        fmt = "qa_feedback" if is_qaf else "rows"
    if fmt == "qa_feedback":
        rows = qa_feedback.load_prompts(source)
    elif fmt == "rows":
        rows = read_rows(source, split=cfg.split)
    else:
        raise InputError(f"unknown input format {fmt!r} (use auto, rows or qa_feedback)")
    return apply_field_map(rows, cfg.fields, id_field=cfg.id_field, source=source)


def validate_rows(rows: list[dict[str, Any]], cfg: GenerateConfig, task: TaskSpec) -> None:
    """Fail before any call if a row lacks a field the task needs: name the row and the field."""
    for row in rows:
        missing = task.missing_fields(row)
        if cfg.y1_from and row.get(cfg.y1_from) in (None, ""):
            missing.append(cfg.y1_from)
        if missing:
            hint = "" if cfg.fields else " (map your columns with --field TASK_FIELD=COLUMN)"
            raise InputError(
                f"{cfg.input}, row {row['_index']} (id {row['id']}): missing field "
                f"{', '.join(repr(m) for m in missing)} needed by task {task.name!r}{hint}"
            )


def fixed_labels(ids: list[str], mode: str, seed: int) -> dict[str, Label]:
    """The labels, fixed before any call: balanced and seeded, or one label for every row."""
    if mode == "balanced":
        return assign_labels(ids, seed)
    if mode in ("better", "worse"):
        return dict.fromkeys(ids, mode)
    raise ValueError(f"unknown label mode {mode!r} (use balanced, worse or better)")


def needs_judge(cfg: GenerateConfig) -> bool:
    return cfg.method == "rlaif" or cfg.filter or (cfg.method == "west-of-n" and cfg.scorer == "judge")


def estimate_cost(usages: list[dict[str, Any]], price_in: float | None, price_out: float | None) -> dict[str, float] | None:
    """Dollars for the job's tokens: all of them (`total`) and those paid in this run (`this_run`)."""
    if price_in is None and price_out is None:
        return None
    pin, pout = (price_in or 0.0) / 1e6, (price_out or 0.0) / 1e6
    steps = [u for usage in usages for u in usage.values()]
    paid = sum(u["tokens_in"] for u in steps) * pin + sum(u["tokens_out"] for u in steps) * pout
    cached = sum(u["cached_tokens_in"] for u in steps) * pin + sum(u["cached_tokens_out"] for u in steps) * pout
    return {"total": round(paid + cached, 6), "this_run": round(paid, 6)}


async def run_generate(
    cfg: GenerateConfig, console: Console | None = None, backend: Backend | None = None,
    judge_backend: Backend | None = None,
) -> GenerateSummary:
    """Run one generation job; `backend`/`judge_backend` override the options (tests, library use)."""
    console = console or Console(stderr=True)
    started = time.monotonic()
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r} (available: {', '.join(METHODS)})")
    if cfg.aspect_mode not in ASPECT_MODES:
        raise ValueError(f"unknown aspect mode {cfg.aspect_mode!r} (use {', '.join(ASPECT_MODES)})")
    task = load_task(cfg.task)
    rows = load_prompt_rows(cfg)
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    validate_rows(rows, cfg, task)
    labels = fixed_labels([r["id"] for r in rows], cfg.labels, cfg.seed)
    if cfg.shard:
        k, n = cfg.shard
        rows = [r for i, r in enumerate(rows) if i % n == k - 1]

    output = Path(cfg.output)
    writer = PairWriter(output)
    failures = FailureLog(sidecar(output, "failures"))
    removed = FailureLog(sidecar(output, "filtered"))
    finished = writer.done_ids | _ids_in(removed.path)  # a filtered pair is a finished decision
    resumed = len(writer.done_ids & {r["id"] for r in rows})
    todo = [r for r in rows if r["id"] not in finished]

    backend = backend or make_backend(cfg.backend, concurrency=cfg.concurrency)
    cache = RequestCache(cfg.cache or default_cache_path()) if cfg.use_cache else None
    llm = LLM(backend, cache, max_concurrency=cfg.concurrency)
    judge: Judge | None = None
    if needs_judge(cfg):
        judge_opts = cfg.judge if cfg.judge.backend is not None else replace(cfg.judge, backend=cfg.backend)
        judge = make_judge(judge_opts, task, cfg.seed, cache, cfg.concurrency, backend=judge_backend)
    options: dict[str, Any] = {
        "aspect_mode": cfg.aspect_mode,
        "aspects_k": cfg.aspects_k,
        "y1_from": cfg.y1_from,
        "prefill": cfg.prefill if cfg.prefill is not None else backend.name == "llamacpp",
        "judge": judge,
        "n": cfg.n,
    }
    if cfg.method == "west-of-n":
        options["scorer"] = _make_scorer(cfg, task, judge)
    ctx = MethodContext(
        llm=llm,
        task=task,
        params=SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens),
        seed=cfg.seed,
        max_attempts=cfg.max_attempts,
        options=options,
    )
    make_pair = METHODS[cfg.method]
    failed_steps: Counter[str] = Counter()
    run_stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    written = judged = 0
    progress = JobProgress(total=len(todo), usage=llm.usage, console=console, enabled=cfg.show_progress,
                           status=getattr(backend, "load_status", None))
    try:
        if todo:
            await backend.check()
            if judge is not None:
                await judge.ctx.llm.backend.check()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for row in todo:
            queue.put_nowait(row)

        async def one(row: dict[str, Any]) -> None:
            nonlocal written, judged
            try:
                pair = await make_pair(ctx, row, labels[row["id"]])
                if cfg.filter:
                    assert judge is not None
                    judged += 1
                    verdict = await judge.compare(row, pair["chosen"], pair["rejected"], step="filter")
                    if verdict.winner != "a":
                        removed.write({**pair, "filter": verdict.as_record(), "run": run_stamp})
                        progress.advance(failed_reason="filtered")
                        return
                    pair["filter"] = verdict.as_record()
            except StepFailed as fail:
                failures.write(
                    {"id": row["id"], "method": cfg.method, "step": fail.step, "reason": fail.reason,
                     "raw": fail.raw, "attempts": fail.attempts, "run": run_stamp}
                )
                failed_steps[fail.step] += 1
                progress.advance(failed_reason=fail.reason)
                return
            writer.write(to_conversational(pair) if cfg.conversational else pair)
            written += 1
            progress.advance()

        async def worker() -> None:
            while not queue.empty():
                await one(queue.get_nowait())

        with progress:
            workers = [asyncio.create_task(worker()) for _ in range(max(1, cfg.concurrency))]
            try:
                await asyncio.gather(*workers)
            except BaseException:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                raise
        writer.finalize(order=[r["id"] for r in rows])
    finally:
        writer.close()
        failures.close()
        removed.close()
        await backend.aclose()
        if judge is not None:
            await judge.ctx.llm.backend.aclose()
        if cache is not None:
            cache.close()

    usage = llm.usage
    judge_usage = judge.ctx.llm.usage.as_dict() if judge is not None else {}
    filtered = progress.failures.pop("filtered", 0)
    summary = GenerateSummary(
        output=str(output),
        failures_file=str(failures.path),
        method=cfg.method,
        task=task.name,
        model=backend.model,
        prompts=len(rows),
        resumed=resumed,
        pairs_written=written,
        pairs_total=len(writer.rows),
        failures=dict(progress.failures),
        failures_by_step=dict(failed_steps),
        filtered=filtered,
        filter_rate=round(filtered / judged, 4) if judged else None,
        usage=usage.as_dict(),
        judge_usage=judge_usage,
        cost_usd=estimate_cost([usage.as_dict(), judge_usage], cfg.price_in, cfg.price_out),
        llm_calls=usage.total("calls") + (judge.ctx.llm.usage.total("calls") if judge else 0),
        cache_hits=usage.total("cache_hits") + (judge.ctx.llm.usage.total("cache_hits") if judge else 0),
        wall_seconds=round(time.monotonic() - started, 2),
        labels=dict(Counter(r.get("label") for r in writer.rows.values() if r.get("label"))),
    )
    sidecar(output, "summary").write_text(summary.to_json() + "\n", encoding="utf-8")
    return summary


def _ids_in(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {r["id"] for r in read_jsonl_tolerant(path)[0]}


def _make_scorer(cfg: GenerateConfig, task: TaskSpec, judge: Judge | None) -> Any:
    if cfg.scorer == "judge":
        assert judge is not None
        return judge_scorer(judge)
    if cfg.scorer.startswith("rm:"):
        from rmboost.rm.score import RewardScorer

        return rm_scorer(RewardScorer(cfg.scorer[3:]), task)
    raise ValueError(f"unknown scorer {cfg.scorer!r} (use judge or rm:PATH)")
