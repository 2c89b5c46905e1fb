"""Typer commands for reward models: train-rm, eval-rm, score, and `data qa-feedback`.

Registered on the main app at the end of rmboost/cli.py. Errors a user can fix become one red
line and exit code 2, as everywhere in rmboost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from rmboost import options_cli
from rmboost.cli_support import USER_ERRORS, err, out, run_training
from rmboost.cli_support import fail as _fail
from rmboost.options import fraction, option, reuse
from rmboost.rm.data import TEST_FORMATS
from rmboost.rm.train import TrainRMConfig

DEFAULT_QA_FEEDBACK = Path("../shared/data/qa_feedback")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(ci: list[float]) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


@options_cli.command(TrainRMConfig)
def train_rm(cfg: TrainRMConfig) -> None:
    """Train a Bradley-Terry reward model on preference pairs (TRL RewardTrainer)."""
    from rmboost.rm.train import train_rm as run

    run_training(run, cfg, print_train_summary)


def print_train_summary(s: dict[str, Any]) -> None:
    table = Table(title=f"rmboost train-rm: {s['backbone']} -> {s['output']}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("training pairs", f"{s['pairs']:,}")
    table.add_row("steps / epochs", f"{s['steps']} / {s['epochs']:g}")
    table.add_row("train loss (mean)", f"{s['train_loss']:.4f}")
    last = s.get("last_logged") or {}
    if last.get("accuracy") is not None:
        table.add_row("last logged loss / accuracy", f"{last['loss']:.4f} / {last['accuracy']:.3f}")
    table.add_row("throughput", f"{s['train_pairs_per_second']:.2f} pairs/s ({s['device']}, {s['precision']})")
    table.add_row("truncated prompts / responses", f"{s['truncated']['prompts']} / {s['truncated']['responses']}")
    for h in s.get("validation_history", []):
        table.add_row(f"validation @ epoch {h['epoch']:g}", f"loss {h['loss']:.4f}, acc {h['accuracy']:.3f}")
    if v := s.get("validation"):
        table.add_row(
            "validation (saved model)",
            f"{_pct(v['accuracy'])} {_ci(v['ci95'])}, n={v['n']}; longer-wins {_pct(v['baselines']['longer_wins']['accuracy'])}",
        )
    table.add_row("wall time", f"{s.get('wall_seconds', 0):.0f}s")
    err.print(table)
    out.print(f"reward model saved to {s['output']}", highlight=False)


@dataclass
class ScoreOptions:
    model: Path = option(flags=("--model", "-m"), help="Folder written by train-rm.")
    input: Path = option(flags=("--input", "-i"), help="Rows with prompt+response, or pair rows (prompt, chosen, rejected).")
    output: Path = option(flags=("--output", "-o"), help="Rows with reward (or reward_chosen/reward_rejected) added: .jsonl or .parquet.")
    prompt_field: str | None = option(None, help="Override the prompt field saved with the model.")
    max_length: int | None = option(None, help="Override the max length saved with the model.")
    batch_size: int = option(32)
    device: str | None = option(None, help="cpu or cuda (default: cuda if available).")


@dataclass
class EvalRMOptions:
    model: list[Path] = option(flags=("--model", "-m"), help="Folder written by train-rm; give it twice (A, B) to compare two models, paired, on the same pairs.")
    test: Path = option(flags=("--test",), help="Held-out pair file (or a RewardBench file with --format).")
    format: str = option("pairs", choices=TEST_FORMATS, help="pairs (rmboost's pair files), rewardbench (v1: prompt/chosen/rejected/subset rows) or rewardbench2 (best-of-4 chosen/rejected lists, Ties).")
    output: Path | None = option(None, flags=("--output", "-o"), help="Write all metrics as JSON here.")
    prompt_field: str | None = reuse(ScoreOptions, "prompt_field")
    max_length: int | None = reuse(ScoreOptions, "max_length")
    batch_size: int = reuse(ScoreOptions, "batch_size")
    resamples: int = option(2000, help="Bootstrap resamples for the 95% interval.")
    seed: int = option(0, help="Bootstrap seed.")
    device: str | None = reuse(ScoreOptions, "device")
    show_groups: int = option(20, help="Print at most this many groups (all are in the JSON).")


@options_cli.command(EvalRMOptions)
def eval_rm(opts: EvalRMOptions) -> None:
    """Held-out accuracy of a reward model: every pair scored, 95% bootstrap CI, baselines.

    Two --model: their paired difference on the same pairs. --format rewardbench or
    rewardbench2: per-subset accuracy and the benchmark's section scores.
    """
    from rmboost.data.pairs import atomic_write_bytes, input_written_over
    from rmboost.rm.compare import compare_models, print_comparison
    from rmboost.rm.rewardbench import evaluate_benchmark, print_benchmark
    from rmboost.rm.score import RewardScorer

    output = opts.output
    try:
        if output is not None and input_written_over([output], [opts.test]):
            raise ValueError(f"--output {output} is the test file: write the metrics to another file")
        if opts.format != "pairs":
            if len(opts.model) != 1:
                raise ValueError(f"--format {opts.format} scores one --model at a time")
            scorer = RewardScorer(opts.model[0], device=opts.device, batch_size=opts.batch_size,
                                  max_length=opts.max_length)
            result = {"model": str(opts.model[0]), "test": str(opts.test),
                      **evaluate_benchmark(scorer, opts.test, opts.format)}
        elif len(opts.model) == 1:
            result = _evaluate_one(opts)
        else:
            result = compare_models(opts.model, opts.test, opts.prompt_field, opts.max_length, opts.batch_size,
                                    opts.resamples, opts.seed, opts.device)
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(output, lambda fh: fh.write((json.dumps(result, indent=2) + "\n").encode("utf-8")))
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None
    if opts.format != "pairs":
        print_benchmark(result, out)
    elif len(opts.model) == 1:
        print_eval(result, opts.show_groups)
    else:
        print_comparison(result, out)
    if output is not None:
        out.print(f"metrics written to {output}", highlight=False)


def _evaluate_one(opts: EvalRMOptions) -> dict[str, Any]:
    """One model on a pair file, with what a comparison of two such models there could detect."""
    from rmboost.rm.compare import evaluate_model, single_model_power

    metrics, pairs, right = evaluate_model(opts.model[0], opts.test, opts.prompt_field, opts.max_length,
                                           opts.batch_size, opts.resamples, opts.seed, opts.device)
    metrics["power"] = single_model_power(pairs, right)
    return metrics


def print_eval(m: dict[str, Any], show_groups: int = 20) -> None:
    b = m["bootstrap"]
    table = Table(title=f"rmboost eval-rm: {m['model']} on {m['test']} (n={m['n']})")
    table.add_column("predictor")
    table.add_column("accuracy", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column("n", justify="right")
    table.add_row("[bold]reward model[/]", f"[bold]{_pct(m['accuracy'])}[/]", _ci(m["ci95"]), str(m["n"]))
    lw = m["baselines"]["longer_wins"]
    table.add_row("longer response wins", _pct(lw["accuracy"]), _ci(lw["ci95"]), str(m["n"]))
    table.add_row("coin", "50.0%", "", "")
    out.print(table)
    d = m["vs_longer_wins"]
    out.print(
        f"mean margin r(chosen) - r(rejected): {m['mean_margin']:.4f} | ties: {m['ties']} | "
        f"reward model - longer-wins: {100 * d['difference']:+.1f} points "
        f"[{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]\n"
        f"bootstrap: {b['resamples']} resamples of {b['units']} {b['unit']}s (seed {b['seed']}); {m['tie_rule']}; "
        f"truncated (never dropped): {m['truncated']['prompts']} prompts, {m['truncated']['responses']} responses "
        f"at max length {m['max_length']}",
        highlight=False,
    )
    if m.get("power"):
        from rmboost.power import describe_power

        out.print(describe_power(m["power"], "a comparison of two such models on this file"), highlight=False)
    groups = m.get("groups") or {}
    if not groups:
        return
    if len(groups) <= show_groups:
        gt = Table(title="by group")
        for col in ("group", "n", "accuracy", "longer wins"):
            gt.add_column(col, justify="left" if col == "group" else "right")
        for g, v in groups.items():
            gt.add_row(g, str(v["n"]), _pct(v["accuracy"]), _pct(v["longer_wins"]))
        out.print(gt)
    else:
        accs = [v["accuracy"] for v in groups.values()]
        above = sum(a > 0.5 for a in accs)
        out.print(
            f"{len(groups)} groups: mean per-group accuracy {_pct(sum(accs) / len(accs))}, "
            f"{above} above 50%, {sum(a == 0.5 for a in accs)} at 50%, {sum(a < 0.5 for a in accs)} below "
            f"(per-group numbers in the JSON output)",
            highlight=False,
        )


@options_cli.command(ScoreOptions)
def score(opts: ScoreOptions) -> None:
    """Score responses with a trained reward model: one reward per response."""
    from rmboost.data.pairs import atomic_write_bytes, atomic_write_jsonl, input_written_over
    from rmboost.data.parquet import write_parquet
    from rmboost.rm.data import read_score_rows
    from rmboost.rm.score import RewardScorer

    output = opts.output
    try:
        if output.suffix not in (".jsonl", ".parquet"):
            raise ValueError(f"--output {output}: use a .jsonl or .parquet file name")
        if input_written_over([output], [opts.input]):
            raise ValueError(f"--output {output} is the input file: write the scores to another file")
        scorer = RewardScorer(opts.model, device=opts.device, batch_size=opts.batch_size, max_length=opts.max_length)
        rows = read_score_rows(opts.input, opts.prompt_field or scorer.prompt_field)
        prompts, responses, slots = [], [], []
        for i, r in enumerate(rows):
            for column, text in r.responses.items():
                prompts.append(r.prompt)
                responses.append(text)
                slots.append((i, column))
        rewards = scorer.score(prompts, responses)
        result = [dict(r.row) for r in rows]
        for (i, column), value in zip(slots, rewards, strict=True):
            result[i][column] = value
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.suffix == ".jsonl":
            atomic_write_jsonl(output, result)
        else:  # the columns and type rules of every Parquet rmboost writes, atomically too

            def lines() -> Iterator[bytes]:
                return (json.dumps(row, ensure_ascii=False).encode("utf-8") for row in result)

            atomic_write_bytes(output, lambda fh: write_parquet(fh, lines))
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None
    t = scorer.truncated
    err.print(
        f"{len(rewards)} response{'' if len(rewards) == 1 else 's'} in {len(rows)} row{'' if len(rows) == 1 else 's'} "
        "scored (truncated, never dropped: "
        f"{t['prompts']} prompts, {t['responses']} responses at max length {scorer.max_length})",
        highlight=False,
    )
    out.print(f"rewards written to {output}", highlight=False)


data_app = typer.Typer(help="Prepare datasets for reward-model training and evaluation.", no_args_is_help=True)


@dataclass
class QAFeedbackSplit:
    out_dir: Path = option(flags=("--out",), help="Folder for train.jsonl, test.jsonl (and val.jsonl).")
    source: Path = option(DEFAULT_QA_FEEDBACK, help="QA-Feedback folder holding dev_feedback.json (or the file).")
    test_fraction: float = option(0.2, check=fraction, help="Share of QUESTIONS held out for test.")
    val_fraction: float = option(0.0, check=fraction, help="Share of the TRAIN questions carved out as val.jsonl (0: none).")
    seed: int = option(0)


@data_app.command("qa-feedback")
@options_cli.command(QAFeedbackSplit)
def data_qa_feedback(opts: QAFeedbackSplit) -> None:
    """Human QA-Feedback pairs, split by question into train/test (and validation) JSONL files."""
    from rmboost.data.pairs import atomic_write_jsonl
    from rmboost.data.qa_feedback import load_human_pairs, split_by_question

    out_dir, source, test_fraction, val_fraction, seed = (
        opts.out_dir, opts.source, opts.test_fraction, opts.val_fraction, opts.seed)
    try:
        pairs = load_human_pairs(source)
        train, test = split_by_question(pairs, test_fraction, seed)
        splits = {"train": train, "test": test}
        if val_fraction > 0:
            splits["train"], splits["val"] = split_by_question(train, val_fraction, seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, rows in splits.items():
            atomic_write_jsonl(out_dir / f"{name}.jsonl", rows)
        if "val" not in splits:  # an earlier split's val.jsonl would overlap this train.jsonl
            (out_dir / "val.jsonl").unlink(missing_ok=True)
        (out_dir / "NOTICE.md").write_text(
            "Derived from QA-Feedback (Wu et al. 2023, 'Fine-Grained Human Feedback Gives Better Rewards\n"
            "for Language Model Training'; allenai/FineGrainedRLHF), Apache License 2.0.\n"
            f"Split by question with rmboost: test_fraction={test_fraction}, val_fraction={val_fraction}, seed={seed}.\n",
            "utf-8",
        )
    except USER_ERRORS as exc:
        raise _fail(f"{exc} (pass --source DIR)" if "not found" in str(exc) else str(exc)) from None
    for name, rows in splits.items():
        out.print(
            f"{name}: {len(rows)} pairs from {len({r['group'] for r in rows})} questions -> {out_dir / (name + '.jsonl')}",
            highlight=False,
        )
