"""`rmboost generate`: prompts in, preference pairs out, resumable and accounted for.

The job: take the output's lock (one writer per output, data/output_lock.py), read and
validate every input row in one streaming pass (job_inputs.py), skip ids already in the output,
then stream the rest to a pool of async workers. Labels are fixed per input position before any
call. Pairs stream to the output, unusable answers to the failures file, and the closing summary
to `<name>.summary.json`. Memory does not grow with the job: the rows in flight are held, ids
and offsets go to the job's on-disk index (data/job_index.py). Nothing is created under the
output's name before the endpoint check passes.

The summary reports this run's usage and the whole job's (`job`: every run, as an uninterrupted
run would have counted it). A run that found the job untouched counts the job itself; a resumed
run recounts the whole job by replaying it from the request cache through a cache-only backend
(no request leaves; the cache holds every answer any run paid for, kill -9 included), except
when it had nothing to do and the previous summary describes the output as it found it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from rmboost.backends import BackendOptions, make_backend
from rmboost.data.job_index import JobIndex, in_chunks
from rmboost.data.messages import to_conversational
from rmboost.data.output_lock import hold_output
from rmboost.data.pairs import (
    FailureLog,
    NotTheOutput,
    PairWriter,
    check_output_name,
    input_written_over,
    iter_jsonl_tolerant,
    sidecar,
    write_summary,
)
from rmboost.job_inputs import PromptSource, index_inputs, todo_rows
from rmboost.llm import LLM, Backend, SamplingParams
from rmboost.llm.accounting import add_steps, estimate_cost, job_steps, usage_totals
from rmboost.llm.batch import BatchOptions, BatchRunner
from rmboost.llm.batch_command import command_backend
from rmboost.llm.cache import RequestCache, default_cache_path
from rmboost.llm.replay import CacheOnly
from rmboost.methods.common import MethodContext, MethodSettings, StepFailed
from rmboost.methods.judge import Judge, JudgeOptions, make_judge
from rmboost.methods.rlaif import rlaif_pair
from rmboost.methods.rlcd import rlcd_pair
from rmboost.methods.rmboost import balanced_label, rmboost_pair
from rmboost.methods.west_of_n import judge_scorer, rm_scorer, west_of_n_pair
from rmboost.options import at_least, group, nucleus_mass, option, pick, reuse, validate
from rmboost.progress import JobProgress
from rmboost.prompts import Label
from rmboost.tasks import TaskSpec, load_task

# Every method: (ctx, row, pre-assigned label) -> pair row, or StepFailed. Only RMBoost uses the label.
METHODS = {"rmboost": rmboost_pair, "rlaif": rlaif_pair, "rlcd": rlcd_pair, "west-of-n": west_of_n_pair}


LABEL_MODES = ("balanced", "worse", "better")


def _scorer(value: str) -> str | None:
    return None if value == "judge" or value.startswith("rm:") else f"{value!r}: use judge or rm:PATH"


@dataclass(kw_only=True)
class GenerateConfig:
    """One generation job: `rmboost generate`'s flags, in this order; an experiment's settings."""

    output: Path = option(flags=("--output", "-o"), help="Pairs file (.jsonl or .parquet).")
    task: str = option("qa_feedback", help="Built-in task name or a task YAML path.")
    method: str = option("rmboost", choices=tuple(METHODS), help="Generation method.")
    input: str = reuse(PromptSource, "input")
    fields: dict[str, str] = reuse(PromptSource, "fields")
    id_field: str = reuse(PromptSource, "id_field")
    split: str = reuse(PromptSource, "split")
    input_format: str = reuse(PromptSource, "input_format")
    limit: int | None = reuse(PromptSource, "limit")
    seed: int = option(0, help="Seeds labels, aspects and every request.")
    shard: tuple[int, int] | None = option(  # (k, N), 1-based k
        None, cli_type=str | None, parse=lambda text: parse_shard(text),
        help="Run shard k of N (k/N, 1-based); merge with `rmboost merge`.",
    )
    conversational: bool = option(False, help="Write prompt/chosen/rejected as chat message lists.")
    backend: BackendOptions = group(BackendOptions)
    concurrency: int = option(1, check=at_least(1), help="Requests in flight at once.")
    temperature: float = option(0.7)
    top_p: float = option(0.95, check=nucleus_mass)
    max_tokens: int = option(512, help="Per response.")
    aspect_mode: str = reuse(MethodSettings, "aspect_mode")
    aspects_k: int = reuse(MethodSettings, "aspects_k")
    y1_from: str | None = reuse(MethodSettings, "y1_from")
    labels: str = option(
        "balanced", choices=LABEL_MODES, noun="label mode",
        help="rmboost: balanced (half better, half worse), worse (y2 always worse: y1 is chosen, "
        "the +SFT-Response variant) or better.",
    )
    max_attempts: int = option(3, help="Samples per step before a prompt goes to failures.")
    prefill: bool | None = option(
        None, flags=("--prefill/--no-prefill",),
        help="Start each answer inside <response> (default: on for llamacpp; for openai only servers "
        "that continue a final assistant message, e.g. vLLM).",
    )
    cache: Path | None = option(None, help="Request cache (SQLite); default ~/.cache/rmboost/llm-cache.sqlite.")
    use_cache: bool = option(True, flags=("--no-cache",), cli_type=bool, cli_default=False,
                             parse=lambda no_cache: not no_cache, help="Neither read nor write the cache.")
    show_progress: bool = option(True, flags=("--progress/--no-progress",), help="Show live progress.")
    n: int = reuse(MethodSettings, "n")
    scorer: str = option("judge", check=_scorer,
                         help="west-of-n: judge (1-10 rating) or rm:PATH (a train-rm checkpoint).")
    filter: bool = option(False, flags=("--filter",),
                          help="Keep a pair only if the judge agrees with its label in both orders.")
    judge: JudgeOptions = group(JudgeOptions, prefix="judge_")  # rlaif, west-of-n's judge scorer, --filter
    price_in: float | None = option(None, help="Price per million input tokens (cost estimate).")
    price_out: float | None = option(None, help="Price per million output tokens (cost estimate).")
    batch: BatchOptions = group(BatchOptions, prefix="batch_")  # rounds of batches (rmboost.llm.batch)


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
    usage: dict[str, Any]  # this run's, per step: paid and cached apart
    judge_usage: dict[str, Any]
    cost_usd: dict[str, float] | None  # total: the whole job's tokens (all runs); this_run: paid in this run
    llm_calls: int
    cache_hits: int
    wall_seconds: float
    labels: dict[str, int]
    batch: dict[str, Any] | None = None  # batch mode: rounds, batches created / re-attached, time waited
    job: dict[str, Any] | None = None  # the whole job, all runs: see `whole_job`

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


def label_for(position: int, mode: str, seed: int) -> Label:
    """The label of the row at an input position, fixed before any call: balanced and seeded, or one for all."""
    if mode == "balanced":
        return balanced_label(position, seed)
    if mode in ("better", "worse"):
        return mode  # type: ignore[return-value]
    raise ValueError(f"unknown label mode {mode!r} (use balanced, worse or better)")


def fixed_labels(ids: list[str], mode: str, seed: int) -> dict[str, Label]:
    """`label_for` of every row of a job, by id."""
    return {row_id: label_for(position, mode, seed) for position, row_id in enumerate(ids)}


def needs_judge(cfg: GenerateConfig) -> bool:
    return cfg.method == "rlaif" or cfg.filter or (cfg.method == "west-of-n" and cfg.scorer == "judge")


async def run_generate(
    cfg: GenerateConfig, console: Console | None = None, backend: Backend | None = None,
    judge_backend: Backend | None = None,
) -> GenerateSummary:
    """Run one generation job; `backend`/`judge_backend` override the options (tests, library use).

    The output's lock comes first: while another job writes the same output, this one stops
    with OutputBusy (a ValueError naming that job) before it reads a row or calls anyone.
    """
    started = time.monotonic()
    validate(cfg)  # the declared choices and checks, for callers that did not come through the CLI
    if cfg.batch.enabled and not cfg.use_cache:
        raise ValueError("--batch needs the request cache (drop --no-cache): answers and batch state live there")
    task = load_task(cfg.task)
    output = Path(cfg.output)
    check_output_name(output)
    if input_written_over([output], [cfg.input]):  # its rows would count as finished pairs
        raise NotTheOutput(f"--output {output} is the input file: write the pairs to another file")
    console = console or Console(stderr=True)
    made = [d for d in (output.parent, *output.parent.parents) if not d.exists()]  # deepest first
    try:
        with hold_output(output):
            index = JobIndex()
            try:
                summary, filtered_before = await _run_job(cfg, task, index, console, backend, judge_backend, started)
            finally:
                index.close()
            summary.job = await whole_job(cfg, summary, filtered_before, backend, judge_backend, console)
            summary.cost_usd = _job_cost(cfg, summary)
            summary.wall_seconds = round(time.monotonic() - started, 2)
            write_summary(output, summary.to_json())
            return summary
    except BaseException:
        for folder in made:  # the folders this run made, if it left nothing in them
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


async def _run_job(
    cfg: GenerateConfig, task: TaskSpec, index: JobIndex, console: Console, backend: Backend | None,
    judge_backend: Backend | None, started: float,
) -> tuple[GenerateSummary, int]:
    """This run's summary, and how many pairs the filter had removed before it."""
    source, shard = pick(PromptSource, cfg), cfg.shard or (1, 1)
    # The passes over the input and the output read every row, handing the event loop a turn
    # every few thousand (a million-row resume keeps Ctrl-C and the progress line responsive).
    await index_inputs(source, task, cfg.y1_from, index)
    output = Path(cfg.output)
    writer = PairWriter(output, index, scan=False)
    failures = FailureLog(sidecar(output, "failures"))
    removed = FailureLog(sidecar(output, "filtered"))
    filtered_before = 0
    try:
        await writer.scan()
        if removed.path.exists():  # a filtered pair is a finished decision
            async for ids in in_chunks(row["id"] for _, _, row in iter_jsonl_tolerant(removed.path)):
                index.add_settled(ids)
                filtered_before += len(ids)
    except BaseException:
        writer.close()
        raise
    prompts = index.count_inputs(shard)
    resumed = index.count_inputs(shard, "paired")
    todo = index.count_inputs(shard, "todo")

    batch = cfg.batch.enabled
    backend, judge_backend = job_backends(cfg, backend, judge_backend)
    cache = RequestCache(cfg.cache or default_cache_path()) if cfg.use_cache else None
    llm = LLM(backend, cache, max_concurrency=cfg.concurrency)
    judge: Judge | None = None
    if needs_judge(cfg):
        judge = make_judge(cfg.judge, task, cfg.seed, cache, cfg.concurrency, backend=judge_backend,
                           generator=cfg.backend)
    runner = None
    if batch:
        assert cache is not None
        runner = BatchRunner(cache, cfg.batch, cfg.max_attempts, report=lambda m: console.print(m, highlight=False))
        runner.attach(llm, cfg.backend)
        if judge is not None:
            runner.attach(judge.ctx.llm, cfg.judge.connection(cfg.backend))
    ctx = MethodContext(
        llm=llm,
        task=task,
        params=SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens),
        seed=cfg.seed,
        max_attempts=cfg.max_attempts,
        settings=pick(MethodSettings, cfg),
        prefill=cfg.prefill if cfg.prefill is not None else backend.name == "llamacpp",
        judge=judge,
        scorer=_make_scorer(cfg, task, judge) if cfg.method == "west-of-n" else None,
    )
    make_pair = METHODS[cfg.method]
    failed_steps: Counter[str] = Counter()
    run_stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    written = judged = 0
    progress = JobProgress(total=todo, usage=llm.usage, console=console, enabled=cfg.show_progress,
                           status=[show for show in (getattr(backend, "load_status", None),
                                                     runner.status_line if runner else None) if show])
    if runner is not None:
        runner.on_update = progress.refresh
    # Batch mode: many prompts in flight, so that a round holds many requests.
    width = (cfg.batch.rows or todo) if batch else cfg.concurrency
    n_workers = max(1, min(width, todo))
    try:
        if todo:
            await backend.check()
            if judge is not None:
                await judge.check()
        # Rows stream from the input: the queue holds one row per worker, so a worker that frees
        # up finds its next row waiting, and in batch mode every worker has a row for the round.
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=n_workers)

        async def produce() -> None:
            if todo:  # in batch mode a stretch of finished rows keeps the round open, as new requests do
                async for row in todo_rows(source, task, cfg.y1_from, index, shard,
                                           on_turn=runner.keep_open if runner is not None else None):
                    await queue.put(row)
            for _ in range(n_workers):
                await queue.put(None)  # one stop sign per worker

        async def one(row: dict[str, Any]) -> None:
            nonlocal written, judged
            try:
                pair = await make_pair(ctx, row, label_for(row["_index"], cfg.labels, cfg.seed))
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
            while (row := await queue.get()) is not None:
                await one(row)

        with progress:
            tasks = [asyncio.create_task(produce()), *(asyncio.create_task(worker()) for _ in range(n_workers))]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        writer.finalize()
    finally:
        writer.close()
        failures.close()
        removed.close()
        if runner is not None:
            await runner.aclose()
        await backend.aclose()
        if judge is not None:
            await judge.aclose()
        if cache is not None:
            cache.close()

    usage = llm.usage
    judge_usage = judge.usage() if judge is not None else {}
    filtered = progress.failures.pop("filtered", 0)
    summary = GenerateSummary(
        output=str(output),
        failures_file=str(failures.path),
        method=cfg.method,
        task=task.name,
        model=backend.model,
        prompts=prompts,
        resumed=resumed,
        pairs_written=written,
        pairs_total=len(writer),
        failures=dict(progress.failures),
        failures_by_step=dict(failed_steps),
        filtered=filtered,
        filter_rate=round(filtered / judged, 4) if judged else None,
        usage=usage.as_dict(),
        judge_usage=judge_usage,
        cost_usd=None,  # priced with the whole job's tokens, by run_generate
        llm_calls=usage.total("calls") + (judge.ctx.llm.usage.total("calls") if judge else 0),
        cache_hits=usage.total("cache_hits") + (judge.ctx.llm.usage.total("cache_hits") if judge else 0),
        wall_seconds=round(time.monotonic() - started, 2),
        labels=index.label_counts(),
        batch=runner.summary() if runner is not None else None,
    )
    return summary, filtered_before


async def whole_job(
    cfg: GenerateConfig, s: GenerateSummary, filtered_before: int, backend: Backend | None,
    judge_backend: Backend | None, console: Console,
) -> dict[str, Any]:
    """The whole job's tokens (every run), counted as an uninterrupted run of it would count them.

    `counted` says how: "this run" (it found nothing done, so it did every row itself),
    "previous summary" (it had nothing to do, and the last summary describes the output it found),
    "replayed from the cache" (a resumed job, recounted through a cache-only backend: no request
    leaves), or, with --no-cache, "previous summary + this run" (a failed prompt retried is then
    counted again). `exact` is false when that count may be off: a replay that missed answers
    (another cache file, or --no-cache earlier), or the sum without a cache.
    """
    filtered_rows = filtered_before + s.filtered
    previous = _previous_job(Path(cfg.output))
    if not s.resumed and not filtered_before:
        usage, judge_usage, counted, exact = job_steps(s.usage), job_steps(s.judge_usage), "this run", True
    elif (not s.pairs_written and not s.filtered and not s.failures and previous
          and (previous.get("pairs"), previous.get("filtered_rows"), previous.get("prompts"))
          == (s.resumed, filtered_before, s.prompts)):
        usage, judge_usage = previous.get("usage") or {}, previous.get("judge_usage") or {}
        counted, exact = "previous summary", bool(previous.get("exact"))
    elif cfg.use_cache:
        console.print(f"counting the whole job's tokens: replaying its {s.prompts:,} prompts from the request "
                      "cache (no request is sent; about 0.5 ms of CPU per prompt)", highlight=False)
        replay = await _replay(cfg, backend, judge_backend, console)
        usage, judge_usage, counted = job_steps(replay.usage), job_steps(replay.judge_usage), "replayed from the cache"
        exact = replay.pairs_total == s.pairs_total and replay.filtered == filtered_rows
    else:
        before = previous or {}
        usage = add_steps(before.get("usage") or {}, job_steps(s.usage))
        judge_usage = add_steps(before.get("judge_usage") or {}, job_steps(s.judge_usage))
        counted, exact = "previous summary + this run", False
    tokens = [usage_totals(usage), usage_totals(judge_usage)]
    return {
        "counted": counted,
        "exact": exact,
        "prompts": s.prompts,
        "pairs": s.pairs_total,
        "filtered_rows": filtered_rows,
        "tokens_in": sum(t["tokens_in"] for t in tokens),
        "tokens_out": sum(t["tokens_out"] for t in tokens),
        "usage": usage,
        "judge_usage": judge_usage,
    }


def _previous_job(output: Path) -> dict[str, Any] | None:
    """The `job` record of the output's last summary, if there is a readable one."""
    with contextlib.suppress(OSError, ValueError):
        job = json.loads(sidecar(output, "summary").read_text("utf-8")).get("job")
        return job if isinstance(job, dict) else None
    return None


async def _replay(
    cfg: GenerateConfig, backend: Backend | None, judge_backend: Backend | None, console: Console
) -> GenerateSummary:
    """The whole job again into a scratch file, answered only from the cache: its tokens, no calls."""
    real, real_judge = job_backends(cfg, backend, judge_backend)  # the job's cache keys
    if needs_judge(cfg):
        real_judge = real_judge or make_backend(cfg.judge.connection(cfg.backend))
    with tempfile.TemporaryDirectory(prefix="rmboost-replay-") as scratch:
        # Online and cache-only: no request leaves, so neither does a batch.
        replay = replace(cfg, output=Path(scratch) / "pairs.jsonl", batch=replace(cfg.batch, enabled=False),
                         price_in=None, price_out=None)
        return await run_generate(replay, console, backend=CacheOnly(real),
                                  judge_backend=CacheOnly(real_judge) if real_judge else None)


def _job_cost(cfg: GenerateConfig, s: GenerateSummary) -> dict[str, float] | None:
    """Dollars: the whole job's tokens (`total`) and those paid in this run (`this_run`)."""
    assert s.job is not None
    job = estimate_cost([s.job["usage"], s.job["judge_usage"]], cfg.price_in, cfg.price_out, cfg.batch)
    run = estimate_cost([s.usage, s.judge_usage], cfg.price_in, cfg.price_out, cfg.batch)
    return None if job is None or run is None else {"total": job["total"], "this_run": run["this_run"]}


def job_backends(
    cfg: GenerateConfig, backend: Backend | None = None, judge_backend: Backend | None = None
) -> tuple[Backend, Backend | None]:
    """The generator's backend (given, else built from the options) and the judge's (given, else
    None: make_judge builds it). The command batch transport has no endpoint: its backends name
    the served model only, for the generator and the judge alike."""
    if cfg.batch.enabled and cfg.batch.transport == "command":
        backend = backend or command_backend(cfg.backend)
        if needs_judge(cfg):
            judge_backend = judge_backend or command_backend(cfg.judge.connection(cfg.backend))
    return backend or make_backend(cfg.backend, concurrency=cfg.concurrency), judge_backend


def _make_scorer(cfg: GenerateConfig, task: TaskSpec, judge: Judge | None) -> Any:
    if cfg.scorer == "judge":
        assert judge is not None
        return judge_scorer(judge)
    if cfg.scorer.startswith("rm:"):
        from rmboost.rm.score import RewardScorer

        return rm_scorer(RewardScorer(cfg.scorer[3:]), task)
    raise ValueError(f"unknown scorer {cfg.scorer!r} (use judge or rm:PATH)")
