"""The `rmboost` command line: one Typer app whose subcommands follow the data flow."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rmboost.backends import BackendOptions
from rmboost.cli_support import USER_ERRORS, err, out
from rmboost.cli_support import fail as _fail
from rmboost.methods.judge import JudgeOptions

app = typer.Typer(
    name="rmboost",
    help="Better reward models from synthetic preference data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# Judge options, shared by `generate` (rlaif, west-of-n, --filter) and `filter`.
JudgeBackend = Annotated[str | None, typer.Option(help="Judge backend (default: the generator's).")]
JudgeModel = Annotated[str | None, typer.Option(help="Judge model (openai) or GGUF path (llamacpp).")]
JudgeBaseUrl = Annotated[str | None, typer.Option(help="Judge endpoint (openai).")]
JudgeKeyEnv = Annotated[str | None, typer.Option(help="Environment variable with the judge's API key.")]
JudgeMode = Annotated[str, typer.Option(help="text (parse first/second/same) or logprobs (P(first) from token log-probabilities).")]
JudgeTemperature = Annotated[float, typer.Option(help="Judge sampling temperature (0: greedy, no resampling).")]
JudgeMargin = Annotated[float, typer.Option(help="logprobs mode: |P(first better) - 0.5| must exceed this for a label.")]


def _judge_options(
    generator: BackendOptions, backend: str | None, model: str | None, base_url: str | None,
    key_env: str | None, mode: str, temperature: float, margin: float, max_tokens: int = 512,
) -> JudgeOptions:
    from dataclasses import replace

    changed = {k: v for k, v in {"backend": backend, "model": model, "base_url": base_url,
                                 "api_key_env": key_env}.items() if v is not None}
    if backend is not None and backend != generator.backend and model is None:
        changed["model"] = None  # another backend kind: don't carry the generator's model over
    if base_url is not None:
        changed["cache_identity"] = None  # another endpoint: the generator's deployment name does not apply
    return JudgeOptions(
        backend=replace(generator, **changed), mode=mode, temperature=temperature, margin=margin,
        max_tokens=max_tokens,
    )


@app.command()
def generate(
    output: Annotated[Path, typer.Option("--output", "-o", help="Pairs file (.jsonl or .parquet).")],
    task: Annotated[str, typer.Option(help="Built-in task name or a task YAML path.")] = "qa_feedback",
    method: Annotated[str, typer.Option(help="Generation method.")] = "rmboost",
    input: Annotated[
        str,
        typer.Option(
            "--input", "-i",
            help="Prompts: .jsonl/.json/.parquet/.csv, a saved HF dataset folder, QA-Feedback's "
            "dev_feedback.json (or its folder), or sample:qa_feedback (20 shipped prompts).",
        ),
    ] = "sample:qa_feedback",
    field: Annotated[
        list[str] | None, typer.Option(help="Map a task field to your column: TASK_FIELD=COLUMN (repeatable).")
    ] = None,
    id_field: Annotated[str, typer.Option(help="Column holding row ids (row-<index> when absent).")] = "id",
    split: Annotated[str, typer.Option(help="Split of a saved DatasetDict.")] = "train",
    input_format: Annotated[str, typer.Option(help="auto, rows or qa_feedback.")] = "auto",
    limit: Annotated[int | None, typer.Option(help="Use only the first N prompts.")] = None,
    seed: Annotated[int, typer.Option(help="Seeds labels, aspects and every request.")] = 0,
    shard: Annotated[str | None, typer.Option(help="Run shard k of N (k/N, 1-based); merge with `rmboost merge`.")] = None,
    conversational: Annotated[bool, typer.Option(help="Write prompt/chosen/rejected as chat message lists.")] = False,
    backend: Annotated[str, typer.Option(help="llamacpp (local GGUF) or openai (any compatible endpoint).")] = "llamacpp",
    model: Annotated[str | None, typer.Option(help="openai: served model name; llamacpp: GGUF path (default: embedded SmolLM2-135M-Instruct).")] = None,
    base_url: Annotated[list[str] | None, typer.Option(help="openai: endpoint, e.g. http://localhost:8000/v1; repeat for replicas of one model (least-loaded healthy replica first).")] = None,
    api_key_env: Annotated[str, typer.Option(help="openai: environment variable holding the API key.")] = "OPENAI_API_KEY",
    cache_identity: Annotated[str | None, typer.Option(help="openai: name the deployment in the cache key instead of its URL(s), so cached answers survive URL or replica changes.")] = None,
    breaker_failures: Annotated[int, typer.Option(help="openai: stop (exit 2) after this many requests in a row failed after their retries (0: off).")] = 50,
    breaker_seconds: Annotated[float, typer.Option(help="openai: stop (exit 2) when every attempt has failed for this many seconds (0: off).")] = 120.0,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 1,
    rpm: Annotated[float | None, typer.Option(help="openai: requests per minute limit.")] = None,
    tpm: Annotated[float | None, typer.Option(help="openai: tokens per minute limit.")] = None,
    timeout: Annotated[float, typer.Option(help="openai: per-request timeout in seconds.")] = 120.0,
    max_retries: Annotated[int, typer.Option(help="openai: retries on 429/5xx/timeouts.")] = 6,
    temperature: Annotated[float, typer.Option()] = 0.7,
    top_p: Annotated[float, typer.Option()] = 0.95,
    max_tokens: Annotated[int, typer.Option(help="Per response.")] = 512,
    n_ctx: Annotated[int, typer.Option(help="llamacpp: context window.")] = 8192,
    threads: Annotated[int | None, typer.Option(help="llamacpp: CPU threads (default: all cores; fewer helps when the machine is busy).")] = None,
    aspect_mode: Annotated[str, typer.Option(help="model-selects (paper), sample, or none (No-Aspect ablation).")] = "model-selects",
    aspects_k: Annotated[int, typer.Option(help="Aspects per pair with --aspect-mode sample.")] = 2,
    y1_from: Annotated[str | None, typer.Option(help="Take y1 from this column (e.g. reference) instead of generating it.")] = None,
    labels: Annotated[str, typer.Option(help="rmboost: balanced (half better, half worse), worse (y2 always worse: y1 is chosen, the +SFT-Response variant) or better.")] = "balanced",
    max_attempts: Annotated[int, typer.Option(help="Samples per step before a prompt goes to failures.")] = 3,
    prefill: Annotated[
        bool | None,
        typer.Option("--prefill/--no-prefill", help="Start each answer inside <response> (default: on for llamacpp; for openai only servers that continue a final assistant message, e.g. vLLM)."),
    ] = None,
    cache: Annotated[Path | None, typer.Option(help="Request cache (SQLite); default ~/.cache/rmboost/llm-cache.sqlite.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the cache.")] = False,
    progress: Annotated[bool, typer.Option(help="Show live progress.")] = True,
    n: Annotated[int, typer.Option("--n", help="west-of-n: samples per prompt.")] = 8,
    scorer: Annotated[str, typer.Option(help="west-of-n: judge (1-10 rating) or rm:PATH (a train-rm checkpoint).")] = "judge",
    filter: Annotated[bool, typer.Option("--filter", help="Keep a pair only if the judge agrees with its label in both orders.")] = False,
    judge_backend: JudgeBackend = None,
    judge_model: JudgeModel = None,
    judge_base_url: JudgeBaseUrl = None,
    judge_api_key_env: JudgeKeyEnv = None,
    judge_mode: JudgeMode = "text",
    judge_temperature: JudgeTemperature = 0.0,
    judge_margin: JudgeMargin = 0.0,
    price_in: Annotated[float | None, typer.Option(help="Price per million input tokens (cost estimate).")] = None,
    price_out: Annotated[float | None, typer.Option(help="Price per million output tokens (cost estimate).")] = None,
) -> None:
    """Generate preference pairs from prompts with an LLM (rmboost, rlaif, rlcd or west-of-n)."""
    from rmboost.data.inputs import parse_field_map
    from rmboost.generate import GenerateConfig, parse_shard, run_generate

    try:
        backend_opts = BackendOptions(
            backend=backend,
            model=model,
            base_url=(base_url[0] if len(base_url) == 1 else base_url) if base_url else None,
            api_key_env=api_key_env,
            cache_identity=cache_identity,
            breaker_failures=breaker_failures,
            breaker_seconds=breaker_seconds,
            timeout=timeout,
            max_retries=max_retries,
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
            n_ctx=n_ctx,
            threads=threads,
        )
        cfg = GenerateConfig(
            task=task,
            input=input,
            output=output,
            method=method,
            fields=parse_field_map(field),
            id_field=id_field,
            split=split,
            input_format=input_format,
            limit=limit,
            seed=seed,
            shard=parse_shard(shard) if shard else None,
            conversational=conversational,
            backend=backend_opts,
            concurrency=concurrency,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            cache=cache,
            use_cache=not no_cache,
            aspect_mode=aspect_mode,
            aspects_k=aspects_k,
            y1_from=y1_from,
            labels=labels,
            max_attempts=max_attempts,
            prefill=prefill,
            judge=_judge_options(backend_opts, judge_backend, judge_model, judge_base_url,
                                 judge_api_key_env, judge_mode, judge_temperature, judge_margin),
            n=n,
            scorer=scorer,
            filter=filter,
            price_in=price_in,
            price_out=price_out,
            show_progress=progress,
        )
        summary = asyncio.run(run_generate(cfg, err))
    except KeyboardInterrupt:
        err.print(
            f"[yellow]interrupted[/]: every finished pair is kept in {output}; "
            "run the same command again to resume."
        )
        raise typer.Exit(130) from None
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
        table.add_row(
            step,
            str(u["calls"]),
            str(u["cache_hits"]),
            f"{u['tokens_in'] + u['cached_tokens_in']:,}",
            f"{u['tokens_out'] + u['cached_tokens_out']:,}",
        )
    err.print(table)
    fails = ", ".join(f"{k}: {v}" for k, v in sorted(s.failures.items())) or "none"
    err.print(
        f"pairs: {s.pairs_written} new, {s.resumed} resumed, {s.pairs_total} in file "
        f"(labels {s.labels}) | failures: {fails} | LLM calls: {s.llm_calls}, "
        f"cache hits: {s.cache_hits} | wall time: {s.wall_seconds:.1f}s",
        highlight=False,
    )
    for step, u in s.judge_usage.items():
        err.print(
            f"judge {step}: {u['calls']} calls, {u['cache_hits']} cache hits, tokens in "
            f"{u['tokens_in'] + u['cached_tokens_in']:,} out {u['tokens_out'] + u['cached_tokens_out']:,}",
            highlight=False,
        )
    if s.filter_rate is not None:
        err.print(f"filter: removed {s.filtered} pairs ({s.filter_rate:.0%} of those judged)", highlight=False)
    if s.cost_usd:
        err.print(f"estimated cost: ${s.cost_usd['total']:.4f} (paid in this run: ${s.cost_usd['this_run']:.4f})")
    err.print(f"failures: {s.failures_file}", highlight=False)
    out.print(f"pairs written to {s.output}", highlight=False)


@app.command("filter")
def filter_command(
    pairs: Annotated[Path, typer.Argument(help="Pairs to check (.jsonl/.parquet with an `inputs` column).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Kept pairs; removed ones go to <name>.filtered.jsonl.")],
    task: Annotated[str, typer.Option(help="Task whose guideline the judge applies.")] = "qa_feedback",
    backend: Annotated[str, typer.Option(help="Judge backend: llamacpp or openai.")] = "llamacpp",
    model: Annotated[str | None, typer.Option(help="Judge model name (openai) or GGUF path.")] = None,
    base_url: Annotated[str | None, typer.Option(help="Judge endpoint (openai).")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable with the API key.")] = "OPENAI_API_KEY",
    judge_mode: JudgeMode = "text",
    judge_temperature: JudgeTemperature = 0.0,
    judge_margin: JudgeMargin = 0.0,
    concurrency: Annotated[int, typer.Option(help="Judge requests in flight.")] = 1,
    seed: Annotated[int, typer.Option()] = 0,
    cache: Annotated[Path | None, typer.Option(help="Request cache (SQLite).")] = None,
) -> None:
    """Keep the pairs whose label the judge confirms in both orders (paper, Appendix B)."""
    from rmboost.filtering import run_filter
    from rmboost.generate import default_cache_path

    try:
        judge = _judge_options(BackendOptions(backend=backend, model=model, base_url=base_url,
                                              api_key_env=api_key_env),
                               None, None, None, None, judge_mode, judge_temperature, judge_margin)
        summary = asyncio.run(run_filter(pairs, output, task, judge, seed=seed,
                                         cache_path=cache or default_cache_path(), concurrency=concurrency))
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None
    err.print(
        f"kept {summary.kept}, removed {summary.removed} (filter rate {summary.rate:.0%}), "
        f"no verdict {summary.failed}; removed pairs with verdicts: {summary.removed_file}",
        highlight=False,
    )
    out.print(f"kept pairs written to {summary.output}", highlight=False)


@app.command()
def tasks(name: Annotated[str | None, typer.Argument(help="Show this task in full.")] = None) -> None:
    """List the built-in tasks, or show one (or a task YAML file) in full."""
    from rmboost.tasks import builtin_task_names, load_task

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


@app.command()
def merge(
    inputs: Annotated[list[Path], typer.Argument(help="Shard outputs to merge.")],
    output: Annotated[Path, typer.Option("--output", "-o")],
) -> None:
    """Merge shard outputs into one dataset (ids must not repeat across shards)."""
    from rmboost.data.pairs import atomic_write_jsonl, read_pairs

    seen: dict[str, Path] = {}
    rows = []
    try:
        for path in inputs:
            for row in read_pairs(path):
                if row["id"] in seen:
                    raise ValueError(f"id {row['id']!r} is in both {seen[row['id']]} and {path}")
                seen[row["id"]] = path
                rows.append(row)
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_jsonl(output, rows)
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None
    out.print(f"{len(rows)} pairs from {len(inputs)} files written to {output}")


@app.command()
def experiment(
    config: Annotated[Path, typer.Argument(help="Experiment YAML (see configs/).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default: the config's output, else runs/NAME).")] = None,
) -> None:
    """Run (or resume) a whole study: generate -> filter -> train RMs -> evaluate -> results, report."""
    from rmboost.experiment import run_experiment

    command = "rmboost experiment " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else None
    try:
        asyncio.run(run_experiment(config, out, err, command=command))
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished stages, pairs and LLM answers are kept; "
                  "run the same command again to continue.")
        raise typer.Exit(130) from None
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None


def main() -> None:  # pragma: no cover - console entry point alias
    app()


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
