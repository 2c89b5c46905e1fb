"""The `rmboost` command line: one Typer app whose subcommands follow the data flow."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import typer
from rich.table import Table

from rmboost import options_cli
from rmboost.backends import BackendOptions
from rmboost.cli_support import USER_ERRORS, err, out
from rmboost.cli_support import fail as _fail
from rmboost.generate import GenerateConfig
from rmboost.llm.accounting import step_totals, usage_totals
from rmboost.llm.batch import BatchOptions
from rmboost.methods.judge import CONNECTION, JudgeOptions
from rmboost.options import at_least, group, option, reuse

app = typer.Typer(
    name="rmboost",
    help="Better reward models from synthetic preference data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
@options_cli.command(GenerateConfig)
def generate(cfg: GenerateConfig) -> None:
    """Generate preference pairs from prompts with an LLM (rmboost, rlaif, rlcd or west-of-n)."""
    from rmboost.data.output_lock import OutputBusy
    from rmboost.data.pairs import NotTheOutput
    from rmboost.generate import run_generate

    output = cfg.output
    try:
        summary = asyncio.run(run_generate(cfg, err))
    except KeyboardInterrupt:
        err.print(
            f"[yellow]interrupted[/]: every finished pair is kept in {output}; "
            "run the same command again to resume."
        )
        raise typer.Exit(130) from None
    except (OutputBusy, NotTheOutput) as exc:  # the output is another job's, or no job's: nothing here to resume
        raise _fail(str(exc)) from None
    except USER_ERRORS as exc:
        raise _fail(f"{exc}" + _kept_note(output)) from None
    print_summary(summary)


def _kept_note(output: Path) -> str:
    from rmboost.data.pairs import working_path

    path = working_path(Path(output))
    if path.exists() and path.stat().st_size:
        return f" (finished pairs are kept in {path}; re-run to resume)"
    return ""


def print_summary(summary: object) -> None:
    s = summary  # GenerateSummary
    table = Table(title=f"rmboost generate: {s.method} on {s.task} with {s.model}", show_header=True)
    table.add_column("step")
    for col in ("calls", "cache hits", "tokens in", "tokens out"):
        table.add_column(col, justify="right")
    for step, u in s.usage.items():
        tokens = step_totals(u)
        table.add_row(step, str(u["calls"]), str(u["cache_hits"]),
                      f"{tokens['tokens_in']:,}", f"{tokens['tokens_out']:,}")
    err.print(table)
    fails = ", ".join(f"{k}: {v}" for k, v in sorted(s.failures.items())) or "none"
    err.print(
        f"pairs: {s.pairs_written} new, {s.resumed} resumed, {s.pairs_total} in file "
        f"(labels {s.labels}) | failures: {fails} | LLM calls: {s.llm_calls}, "
        f"cache hits: {s.cache_hits} | wall time: {s.wall_seconds:.1f}s",
        highlight=False,
    )
    for step, u in s.judge_usage.items():
        tokens = step_totals(u)
        err.print(
            f"judge {step}: {u['calls']} calls, {u['cache_hits']} cache hits, tokens in "
            f"{tokens['tokens_in']:,} out {tokens['tokens_out']:,}",
            highlight=False,
        )
    if s.filter_rate is not None:
        err.print(f"filter: removed {s.filtered} pairs ({s.filter_rate:.0%} of those judged)", highlight=False)
    job = s.job or {}
    run_tokens = [usage_totals(s.usage), usage_totals(s.judge_usage)]
    tokens = {k: sum(t[k] for t in run_tokens) for k in ("tokens_in", "tokens_out", "paid_tokens_in", "paid_tokens_out")}
    note = "" if job.get("exact", True) else " (approximate: see `job` in the summary file)"
    err.print(
        f"tokens, whole job: in {job.get('tokens_in', 0):,} out {job.get('tokens_out', 0):,}{note} | this run: "
        f"in {tokens['tokens_in']:,} out {tokens['tokens_out']:,}, paid in {tokens['paid_tokens_in']:,} "
        f"out {tokens['paid_tokens_out']:,}",
        highlight=False,
    )
    print_batch_and_cost(s.batch, s.cost_usd, whole_job=True)
    err.print(f"failures: {s.failures_file}", highlight=False)
    out.print(f"pairs written to {s.output}", highlight=False)


def print_batch_and_cost(batch: dict | None, cost_usd: dict | None, whole_job: bool = False) -> None:
    """The closing lines generate and filter share: batch rounds, and the estimated cost
    (generate's `total` is the whole job's, every run)."""
    if batch:
        err.print(f"batch: {batch['rounds']} rounds, {batch['batches_created']} batches created, "
                  f"{batch['batches_attached']} re-attached, {batch['waited_seconds']:.0f}s waited", highlight=False)
    if cost_usd:
        priced = (", whole job" if whole_job else "") + (" at batch prices" if batch else "")
        err.print(f"estimated cost{priced}: ${cost_usd['total']:.4f} (paid in this run: ${cost_usd['this_run']:.4f})",
                  highlight=False)


@dataclass
class FilterOptions:
    """`rmboost filter`: the judge is the only model, so its connection flags have no prefix."""

    pairs: Path = option(argument=True, help="Pairs to check (.jsonl/.parquet with an `inputs` column).")
    output: Path = option(flags=("--output", "-o"), help="Kept pairs (.jsonl or .parquet); removed ones go to <stem>.filtered.jsonl.")
    task: str = option("qa_feedback", help="Task whose guideline the judge applies.")
    backend: BackendOptions = group(BackendOptions, only=CONNECTION, help={
        "backend": "Judge backend: llamacpp or openai.",
        "model": "Judge model name (openai) or GGUF path.",
        "base_url": "Judge endpoint (openai); repeat for replicas of one model.",
        "api_key_env": "Environment variable with the API key.",
    })
    judge: JudgeOptions = group(JudgeOptions, prefix="judge_", only=("mode", "temperature", "margin"))
    concurrency: int = option(1, check=at_least(1), help="Judge requests in flight.")
    seed: int = option(0)
    cache: Path | None = option(None, help="Request cache (SQLite).")
    show_progress: bool = reuse(GenerateConfig, "show_progress")
    price_in: float | None = reuse(GenerateConfig, "price_in")
    price_out: float | None = reuse(GenerateConfig, "price_out")
    batch: BatchOptions = group(BatchOptions, prefix="batch_")


@app.command("filter")
@options_cli.command(FilterOptions)
def filter_command(opts: FilterOptions) -> None:
    """Keep the pairs whose label the judge confirms in both orders (paper, Appendix B)."""
    from rmboost.filtering import run_filter
    from rmboost.llm.cache import default_cache_path

    try:
        judge = replace(opts.judge, **{k: getattr(opts.backend, k) for k in CONNECTION})
        summary = asyncio.run(run_filter(opts.pairs, opts.output, opts.task, judge, seed=opts.seed,
                                         cache_path=opts.cache or default_cache_path(),
                                         concurrency=opts.concurrency, batch=opts.batch, console=err,
                                         show_progress=opts.show_progress,
                                         price_in=opts.price_in, price_out=opts.price_out))
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted[/]: {opts.output} is as it was; the verdicts so far are in the "
                  "request cache, so running the same command again does not pay for them twice.")
        raise typer.Exit(130) from None
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None
    print_filter_summary(summary)


def print_filter_summary(summary: object) -> None:
    s = summary  # FilterSummary
    fails = f" ({', '.join(f'{k}: {v}' for k, v in sorted(s.failures.items()))})" if s.failures else ""
    rate = f"{s.rate:.0%}" if s.rate is not None else "n/a"
    err.print(
        f"kept {s.kept}, removed {s.removed} (filter rate {rate}), no verdict {s.failed}{fails} "
        f"of {s.pairs} pairs; removed pairs with verdicts: {s.removed_file}",
        highlight=False,
    )
    tokens = usage_totals(s.judge_usage)
    err.print(
        f"judge {s.model}: {s.llm_calls} calls, {s.cache_hits} cache hits, tokens in {tokens['tokens_in']:,} "
        f"out {tokens['tokens_out']:,} | wall time: {s.wall_seconds:.1f}s",
        highlight=False,
    )
    print_batch_and_cost(s.batch, s.cost_usd)
    out.print(f"kept pairs written to {s.output}", highlight=False)


@dataclass
class TasksOptions:
    name: str | None = option(None, argument=True, help="Show this task in full.")


@app.command()
@options_cli.command(TasksOptions)
def tasks(opts: TasksOptions) -> None:
    """List the built-in tasks, or show one (or a task YAML file) in full."""
    from rmboost.tasks import builtin_task_names, load_task

    name = opts.name
    try:
        if name is None:
            table = Table("task", "aspects", "inputs", "description")
            for n in builtin_task_names():
                t = load_task(n)
                table.add_row(
                    n,
                    ", ".join(a.name for a in t.aspects),
                    ", ".join(f.name + ("" if f.required else "?") for f in t.inputs),
                    t.description,
                )
            out.print(table)
            out.print("Show one with `rmboost tasks NAME`; add your own as a YAML file (see README).")
            return
        t = load_task(name)
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None
    out.print(f"[bold]{t.name}[/] ({t.source}): {t.description}")
    out.print(f"inputs: {', '.join(f.name + ('' if f.required else ' (optional)') for f in t.inputs)}")
    out.print(f"reference field: {t.reference_field or '-'}; response noun: {t.response_noun}")
    out.print(f"guideline: {t.guideline}")
    for a in t.aspects:
        out.print(f"  - {a.name} ({a.title}): {a.description}")


@dataclass
class MergeOptions:
    inputs: list[Path] = option(argument=True, help="Shard outputs to merge.")
    output: Path = option(flags=("--output", "-o"))


@app.command()
@options_cli.command(MergeOptions)
def merge(opts: MergeOptions) -> None:
    """Merge shard outputs into one dataset (ids must not repeat across shards)."""
    from rmboost.data.pairs import merge_pair_files

    try:
        count = merge_pair_files(opts.inputs, opts.output)
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None
    out.print(f"{count} pairs from {len(opts.inputs)} files written to {opts.output}")


@dataclass
class ExperimentOptions:
    config: Path = option(argument=True, help="Experiment YAML (see configs/).")
    out: Path | None = option(None, flags=("--out", "-o"), help="Run folder (default: the config's output, else runs/NAME).")


@app.command()
@options_cli.command(ExperimentOptions)
def experiment(opts: ExperimentOptions) -> None:
    """Run (or resume) a whole study: generate -> filter -> train RMs -> evaluate -> results, report."""
    from rmboost.experiment import run_experiment

    command = "rmboost experiment " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else None
    try:
        asyncio.run(run_experiment(opts.config, opts.out, err, command=command))
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished stages, pairs and LLM answers are kept; "
                  "run the same command again to continue.")
        raise typer.Exit(130) from None
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None


def main() -> None:
    """The `rmboost` command. A mistyped flag or value is one line and exit 2, like every other
    input error (Click would draw a box of several lines)."""
    # The Click that Typer runs on: recent Typers carry their own copy (typer._click).
    click = sys.modules[typer.BadParameter.__module__]
    try:
        code = app(standalone_mode=False)
    except getattr(click, "NoArgsIsHelpError", ()) as exc:  # `rmboost` alone, or `rmboost data`
        exc.show()
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        err.print(f"[bold red]error:[/] {' '.join(exc.format_message().split())}{where}", highlight=False)
        sys.exit(2)
    except click.ClickException as exc:
        err.print(f"[bold red]error:[/] {' '.join(exc.format_message().split())}", highlight=False)
        sys.exit(exc.exit_code)
    except getattr(click, "Abort", typer.Abort):  # EOF at a prompt
        err.print("[yellow]interrupted[/]")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


# Reward models (issue 4): train-rm, eval-rm, score, data qa-feedback.
from rmboost.rm import cli as _rm_cli  # noqa: E402

app.command("train-rm")(_rm_cli.train_rm)
app.command("eval-rm")(_rm_cli.eval_rm)
app.command("score")(_rm_cli.score)
app.add_typer(_rm_cli.data_app, name="data")

# Alignment (issue 6): reward-augmented relabelling, DPO, goal-conditioned sampling.
from rmboost.align import cli as _align_cli  # noqa: E402

app.command("relabel")(_align_cli.relabel)
app.command("dpo")(_align_cli.dpo)
app.command("sample")(_align_cli.sample)

# Analyses and the HTML report of an experiment run (issue 5).
from rmboost.analysis import cli as _analysis_cli  # noqa: E402

app.command("report")(_analysis_cli.report)

# Power planning for comparisons of reward models (issue 13).
from rmboost import power_cli as _power_cli  # noqa: E402

app.command("power")(_power_cli.power)


if __name__ == "__main__":  # pragma: no cover
    main()
