"""Typer commands for reward models: train-rm, eval-rm, score, and `data qa-feedback`.

Registered on the main app at the end of rmboost/cli.py. Errors a user can fix become one red
line and exit code 2, as everywhere in rmboost.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from rmboost.cli_support import USER_ERRORS, err, out
from rmboost.cli_support import fail as _fail

DEFAULT_QA_FEEDBACK = Path("../shared/data/qa_feedback")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(ci: list[float]) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def train_rm(
    train: Annotated[
        list[str],
        typer.Option("--train", "-t", help="Pair file (.jsonl/.parquet/...), optionally FILE:WEIGHT for a mixture; repeatable."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the trained model.")],
    backbone: Annotated[str, typer.Option(help="minilm (default, encoder), smollm2 (decoder), a checkpoint folder, a .gguf file or a Hub id.")] = "minilm",
    init: Annotated[Path | None, typer.Option(help="Start from this checkpoint (e.g. an SFT model) instead of the backbone's weights.")] = None,
    validation: Annotated[Path | None, typer.Option("--validation", "-v", help="Pair file for picking the best checkpoint (never the test file).")] = None,
    prompt_field: Annotated[str, typer.Option(help="Prompt column; a dotted path reaches into dicts (inputs.question = QA-Feedback without passages); none = response only.")] = "prompt",
    template: Annotated[str, typer.Option(help="auto, chat (tokenizer's chat template) or pair ([CLS] prompt [SEP] response [SEP] / prompt + response + EOS).")] = "auto",
    max_length: Annotated[int, typer.Option(help="Tokens per (prompt, response); the prompt is cut from its end, the response kept whole.")] = 256,
    epochs: Annotated[float, typer.Option()] = 2.0,
    learning_rate: Annotated[float, typer.Option("--learning-rate", "--lr")] = 3e-5,
    batch_size: Annotated[int, typer.Option(help="Pairs per device per step.")] = 16,
    grad_accum: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    warmup_ratio: Annotated[float, typer.Option(help="Linear warmup over this share of the steps.")] = 0.03,
    scheduler: Annotated[str, typer.Option(help="Learning-rate schedule (transformers name).")] = "cosine",
    adam_beta1: Annotated[float, typer.Option()] = 0.9,
    adam_beta2: Annotated[float, typer.Option()] = 0.98,
    weight_decay: Annotated[float, typer.Option()] = 0.0,
    seed: Annotated[int, typer.Option(help="Seeds the head, the shuffling and the mixture.")] = 0,
    margin_column: Annotated[str | None, typer.Option(help="Column with a margin m: loss -log sigmoid(r+ - r- - m).")] = None,
    center_rewards: Annotated[float | None, typer.Option(help="Reward-centering coefficient (e.g. 0.01).")] = None,
    eval_steps: Annotated[int | None, typer.Option(help="Evaluate every N steps (default: every epoch).")] = None,
    select_metric: Annotated[str, typer.Option(help="Validation metric that picks the checkpoint: accuracy or loss.")] = "accuracy",
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimizer steps.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    bf16: Annotated[bool | None, typer.Option("--bf16/--no-bf16", help="Default: on for CUDA with bf16, off on CPU.")] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Default: off.")] = None,
    logging_steps: Annotated[int, typer.Option(help="Print loss/accuracy every N steps.")] = 10,
    keep_checkpoints: Annotated[bool, typer.Option(help="Keep the intermediate checkpoints folder.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a Bradley-Terry reward model on preference pairs (TRL RewardTrainer)."""
    from rmboost.rm.train import TrainRMConfig
    from rmboost.rm.train import train_rm as run

    cfg = TrainRMConfig(
        train=train,
        output=output,
        backbone=backbone,
        init=init,
        validation=validation,
        prompt_field=prompt_field,
        template=template,
        max_length=max_length,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        grad_accum=grad_accum,
        warmup_ratio=warmup_ratio,
        lr_scheduler=scheduler,
        adam_beta1=adam_beta1,
        adam_beta2=adam_beta2,
        weight_decay=weight_decay,
        seed=seed,
        margin_field=margin_column,
        center_rewards=center_rewards,
        eval_steps=eval_steps,
        select_metric=select_metric,
        max_steps=max_steps,
        device=device,
        bf16=bf16,
        gradient_checkpointing=gradient_checkpointing,
        logging_steps=logging_steps,
        keep_checkpoints=keep_checkpoints,
        show_progress=progress,
    )
    try:
        summary = run(cfg, err)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: nothing was saved")
        raise typer.Exit(130) from None
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None
    if summary.get("main_process", True):  # `accelerate launch`: one summary, not one per process
        print_train_summary(summary)


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


def eval_rm(
    model: Annotated[list[Path], typer.Option("--model", "-m", help="Folder written by train-rm; give two to compare them, paired, on the same pairs.")],
    test: Annotated[Path, typer.Option("--test", help="Held-out pair file (or a RewardBench file with --format).")],
    format: Annotated[str, typer.Option("--format", help="pairs, rewardbench (v1: prompt/chosen/rejected/subset) or rewardbench2 (best-of-4 lists, Ties).")] = "pairs",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write all metrics as JSON here.")] = None,
    prompt_field: Annotated[str | None, typer.Option(help="Override the prompt field saved with the model.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Override the max length saved with the model.")] = None,
    batch_size: Annotated[int, typer.Option()] = 32,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% interval.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if available).")] = None,
    show_groups: Annotated[int, typer.Option(help="Print at most this many groups (all are in the JSON).")] = 20,
) -> None:
    """Held-out accuracy of a reward model: every pair scored, 95% bootstrap CI, baselines."""
    from rmboost.rm.compare import single_model_power
    from rmboost.rm.data import read_pairs
    from rmboost.rm.evaluate import evaluate_scores
    from rmboost.rm.score import RewardScorer

    if len(model) != 1 or format != "pairs":  # two models, or a benchmark's scoring (issue 13)
        _eval_other(model, test, format, output, prompt_field, max_length, batch_size, resamples, seed, device)
        return
    path = model[0]
    try:
        scorer = RewardScorer(path, device=device, batch_size=batch_size, max_length=max_length)
        pairs = read_pairs(test, prompt_field or scorer.prompt_field)
        chosen, rejected = scorer.score_pairs(pairs)
        metrics = evaluate_scores(pairs, chosen, rejected, resamples=resamples, seed=seed)
        metrics.update(
            model=str(path),
            test=str(test),
            prompt_field=prompt_field or scorer.prompt_field,
            max_length=scorer.max_length,
            truncated=dict(scorer.truncated),
            power=single_model_power(pairs, chosen, rejected),  # what a comparison on this file could detect
        )
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(metrics, indent=2) + "\n", "utf-8")
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None
    print_eval(metrics, show_groups)
    if output is not None:
        out.print(f"metrics written to {output}", highlight=False)


def _eval_other(models: list[Path], test: Path, fmt: str, output: Path | None, prompt_field: str | None,
                max_length: int | None, batch_size: int, resamples: int, seed: int, device: str | None) -> None:
    from rmboost.rm.compare import compare_models, print_comparison
    from rmboost.rm.rewardbench import FORMATS, evaluate_benchmark, print_benchmark
    from rmboost.rm.score import RewardScorer

    try:
        if fmt not in FORMATS:
            raise ValueError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
        if fmt == "pairs":
            result = compare_models(models, test, prompt_field, max_length, batch_size, resamples, seed, device)
        elif len(models) != 1:
            raise ValueError(f"--format {fmt} scores one --model at a time")
        else:
            scorer = RewardScorer(models[0], device=device, batch_size=batch_size, max_length=max_length)
            result = {"model": str(models[0]), "test": str(test), **evaluate_benchmark(scorer, test, fmt)}
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None
    (print_comparison if fmt == "pairs" else print_benchmark)(result, out)
    if output is not None:
        out.print(f"metrics written to {output}", highlight=False)


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

        out.print(describe_power(m["power"]).replace("this run", "a comparison of two such models on this file"),
                  highlight=False)
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


def score(
    model: Annotated[Path, typer.Option("--model", "-m", help="Folder written by train-rm.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="Rows with prompt+response, or pair rows (prompt, chosen, rejected).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Rows with reward (or reward_chosen/reward_rejected) added: .jsonl or .parquet.")],
    prompt_field: Annotated[str | None, typer.Option(help="Override the prompt field saved with the model.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Override the max length saved with the model.")] = None,
    batch_size: Annotated[int, typer.Option()] = 32,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if available).")] = None,
) -> None:
    """Score responses with a trained reward model: one reward per response."""
    from rmboost.data.pairs import atomic_write_jsonl
    from rmboost.rm.data import read_score_rows
    from rmboost.rm.score import RewardScorer

    try:
        if output.suffix not in (".jsonl", ".parquet"):
            raise ValueError(f"--output {output}: use a .jsonl or .parquet file name")
        scorer = RewardScorer(model, device=device, batch_size=batch_size, max_length=max_length)
        rows = read_score_rows(input, prompt_field or scorer.prompt_field)
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
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(result), output)
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None
    t = scorer.truncated
    err.print(
        f"{len(rewards)} responses in {len(rows)} rows scored (truncated, never dropped: "
        f"{t['prompts']} prompts, {t['responses']} responses at max length {scorer.max_length})",
        highlight=False,
    )
    out.print(f"rewards written to {output}", highlight=False)


data_app = typer.Typer(help="Prepare datasets for reward-model training and evaluation.", no_args_is_help=True)


@data_app.command("qa-feedback")
def data_qa_feedback(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for train.jsonl, test.jsonl (and val.jsonl).")],
    source: Annotated[Path, typer.Option(help="QA-Feedback folder holding dev_feedback.json (or the file).")] = DEFAULT_QA_FEEDBACK,
    test_fraction: Annotated[float, typer.Option(help="Share of QUESTIONS held out for test.")] = 0.2,
    val_fraction: Annotated[float, typer.Option(help="Share of the TRAIN questions carved out as val.jsonl (0: none).")] = 0.0,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Human QA-Feedback pairs, split by question into train/test (and validation) JSONL files."""
    from rmboost.data.pairs import atomic_write_jsonl
    from rmboost.data.qa_feedback import load_human_pairs, split_by_question

    try:
        for name, value in (("--test-fraction", test_fraction), ("--val-fraction", val_fraction)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        pairs = load_human_pairs(source)
        train, test = split_by_question(pairs, test_fraction, seed)
        splits = {"train": train, "test": test}
        if val_fraction > 0:
            splits["train"], splits["val"] = split_by_question(train, val_fraction, seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, rows in splits.items():
            atomic_write_jsonl(out_dir / f"{name}.jsonl", rows)
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
