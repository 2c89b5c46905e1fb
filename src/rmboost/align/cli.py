"""Typer commands for alignment: relabel, dpo, sample.

Registered on the main app at the end of rmboost/cli.py. This module must not import rmboost.cli
at import time (`python -m rmboost.cli` would import it a second time, half-initialised), so the
judge options are declared here with the same names and help, and `_judge_options` is imported
when a command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from rmboost.cli_support import USER_ERRORS, err, out
from rmboost.cli_support import fail as _fail

Variant = Annotated[str, typer.Option(help="Where the goal goes: system (a system message) or user (in front of the user turn).")]
GoalTemplate = Annotated[
    str | None,
    typer.Option(help="Goal instruction with {score} (and {low}, {high}); default: 'Write a response that would be rated {score} ...'."),
]
Scale = Annotated[str, typer.Option(help="Goal score scale LOW-HIGH; the top is what `sample` asks for.")]


def _spec(variant: str, template: str | None, scale: str) -> Any:
    from rmboost.align.relabel import DEFAULT_GOAL_TEMPLATE, GoalSpec, parse_scale

    low, high = parse_scale(scale)
    return GoalSpec(variant=variant, template=template or DEFAULT_GOAL_TEMPLATE, low=low, high=high)


def relabel(
    input: Annotated[Path, typer.Argument(help="Pairs (.jsonl/.parquet/...): prompt, chosen, rejected (plain or chat) and, with --scores-from columns, their scores.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Relabelled pairs (.jsonl); <name>.summary.json and, if any pair is removed, <name>.filtered.jsonl beside it.")],
    variant: Variant = "system",
    goal_template: GoalTemplate = None,
    scale: Scale = "1-10",
    split: Annotated[str | None, typer.Option(help="train (double and swap) or test (never augmented: each pair once at the top goal). Default train, but a file that looks like a test split must say so.")] = None,
    scores_from: Annotated[str, typer.Option(help="columns (--chosen-score/--rejected-score), judge (the LLM judge rates each response 1-10) or rm:PATH (a train-rm model, rewards mapped onto the scale).")] = "columns",
    chosen_score: Annotated[str, typer.Option(help="Column with the chosen response's score (dotted paths reach into dicts).")] = "chosen_score",
    rejected_score: Annotated[str, typer.Option(help="Column with the rejected response's score.")] = "rejected_score",
    score_digits: Annotated[int | None, typer.Option(help="Round scores to this many decimals (default: columns as given, judge/rm to whole numbers).")] = None,
    rm_mapping: Annotated[str, typer.Option(help="rm: quantile (rank among all responses, spread over the scale) or linear (min-max).")] = "quantile",
    chosen_fine_grained: Annotated[str | None, typer.Option(help="Column of the chosen response's per-aspect ratings (list, dict or number); with --rejected-fine-grained keeps pairs whose chosen mean >= rejected mean.")] = None,
    rejected_fine_grained: Annotated[str | None, typer.Option(help="Column of the rejected response's per-aspect ratings.")] = None,
    drop_ties: Annotated[bool, typer.Option(help="Remove pairs whose two scores are equal (kept by default: both rows then say 'equally good at this score').")] = False,
    task: Annotated[str, typer.Option(help="Task whose guideline the judge applies.")] = "qa_feedback",
    judge_backend: Annotated[str, typer.Option(help="Judge backend: llamacpp (embedded model by default) or openai.")] = "llamacpp",
    judge_model: Annotated[str | None, typer.Option(help="Judge model (openai) or GGUF path (llamacpp).")] = None,
    judge_base_url: Annotated[str | None, typer.Option(help="Judge endpoint (openai).")] = None,
    judge_api_key_env: Annotated[str, typer.Option(help="Environment variable with the judge's API key.")] = "OPENAI_API_KEY",
    judge_mode: Annotated[str, typer.Option(help="logprobs (expected score from the next-token probabilities of 1-10) or text (parse the <score> tag).")] = "logprobs",
    judge_temperature: Annotated[float, typer.Option(help="Judge sampling temperature (text mode; 0: greedy).")] = 0.0,
    concurrency: Annotated[int, typer.Option(help="Judge requests in flight.")] = 1,
    seed: Annotated[int, typer.Option()] = 0,
    cache: Annotated[Path | None, typer.Option(help="Request cache (SQLite); default ~/.cache/rmboost/llm-cache.sqlite.")] = None,
) -> None:
    """Reward-augmented pairs: each pair conditioned on its scores, doubled and swapped (arXiv 2410.08067)."""
    from rmboost.align.relabel import RelabelConfig, run_relabel
    from rmboost.backends import BackendOptions
    from rmboost.cli import _judge_options
    from rmboost.generate import default_cache_path

    try:
        if (chosen_fine_grained is None) != (rejected_fine_grained is None):
            raise ValueError("give both --chosen-fine-grained and --rejected-fine-grained, or neither")
        judge = None
        if scores_from == "judge":
            judge = _judge_options(
                BackendOptions(backend=judge_backend, model=judge_model, base_url=judge_base_url, api_key_env=judge_api_key_env),
                None, None, None, None, judge_mode, judge_temperature, 0.0,
            )
        cfg = RelabelConfig(
            input=input, output=output, spec=_spec(variant, goal_template, scale), split=split,
            scores_from=scores_from, chosen_score=chosen_score, rejected_score=rejected_score,
            digits=score_digits, rm_mapping=rm_mapping,
            fine_grained=(chosen_fine_grained, rejected_fine_grained) if chosen_fine_grained else None,  # type: ignore[arg-type]
            drop_ties=drop_ties, task=task, judge=judge, seed=seed, cache=cache or default_cache_path(),
            concurrency=concurrency,
        )
        s = run_relabel(cfg, log=lambda m: err.print(m, highlight=False))
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None
    removed = ", ".join(f"{k}: {v}" for k, v in s["removed"].items()) or "none"
    if s["split"] == "test":
        err.print(f"test split: {s['rows_out']} pairs written once each at the top goal (not doubled, not swapped)", highlight=False)
    else:
        err.print(
            f"{s['pairs_in']} pairs in, {s['pairs_kept']} kept -> {s['rows_out']} rows (goal {s['goal']['variant']}, "
            f"scale {s['goal']['low']:g}-{s['goal']['high']:g}); removed: {removed}; ties: {s['ties']}; "
            f"chosen scored below rejected: {s['chosen_scored_lower']}; mean score chosen {s['mean_score_chosen']}, "
            f"rejected {s['mean_score_rejected']}; goals used: {s['goal_scores']}",
            highlight=False,
        )
    out.print(f"relabelled pairs written to {s['output']}", highlight=False)


def dpo(
    train: Annotated[Path, typer.Option("--train", "-t", help="Pairs: plain, or relabelled by `rmboost relabel`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the trained policy (or LoRA adapter) and rmboost_dpo.json.")],
    policy: Annotated[str, typer.Option(help="smollm2 (embedded SmolLM2-135M-Instruct, converted once), a causal-LM folder, a .gguf file or a Hub id.")] = "smollm2",
    eval: Annotated[Path | None, typer.Option("--eval", help="Pairs to report DPO loss and reward accuracy on after training.")] = None,
    beta: Annotated[float, typer.Option(help="DPO beta: how far the policy may move from the reference.")] = 0.1,
    learning_rate: Annotated[float, typer.Option("--learning-rate", "--lr")] = 5e-6,
    loss: Annotated[str, typer.Option(help="TRL loss type: sigmoid (DPO), robust, ipo, hinge, exo_pair, ...")] = "sigmoid",
    label_smoothing: Annotated[float, typer.Option(help="Label noise for --loss robust / exo_pair (TRL's sigmoid loss has none).")] = 0.0,
    epochs: Annotated[float, typer.Option()] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Pairs per device per step.")] = 8,
    grad_accum: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    warmup_ratio: Annotated[float, typer.Option()] = 0.1,
    scheduler: Annotated[str, typer.Option(help="Learning-rate schedule (transformers name).")] = "cosine",
    max_length: Annotated[int, typer.Option(help="Tokens of prompt + response; a longer response is cut at its end.")] = 512,
    max_prompt_length: Annotated[int, typer.Option(help="Prompt tokens; a longer prompt is cut from the end of its last user turn (the goal and the start stay).")] = 256,
    lora: Annotated[bool, typer.Option(help="Train a LoRA adapter instead of all weights (needs peft: rmboost[lora]).")] = False,
    lora_r: Annotated[int, typer.Option()] = 16,
    lora_alpha: Annotated[int, typer.Option()] = 32,
    lora_dropout: Annotated[float, typer.Option()] = 0.05,
    lora_targets: Annotated[str, typer.Option(help="all-linear or comma-separated module names.")] = "all-linear",
    seed: Annotated[int, typer.Option()] = 0,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimizer steps.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    bf16: Annotated[bool | None, typer.Option("--bf16/--no-bf16", help="Default: on for CUDA with bf16, off on CPU.")] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Default: off.")] = None,
    logging_steps: Annotated[int, typer.Option(help="Print loss / reward accuracy every N steps.")] = 10,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a policy with DPO (TRL DPOTrainer) on plain or relabelled pairs; multi-GPU via accelerate launch."""
    from rmboost.align.dpo import DPOTrainConfig, train_dpo

    cfg = DPOTrainConfig(
        train=train, output=output, policy=policy, eval=eval, beta=beta, learning_rate=learning_rate, loss=loss,
        label_smoothing=label_smoothing, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
        warmup_ratio=warmup_ratio, lr_scheduler=scheduler, max_length=max_length,
        max_prompt_length=max_prompt_length, lora=lora, lora_r=lora_r, lora_alpha=lora_alpha,
        lora_dropout=lora_dropout, lora_targets=lora_targets, seed=seed, max_steps=max_steps, device=device,
        bf16=bf16, gradient_checkpointing=gradient_checkpointing, logging_steps=logging_steps,
        show_progress=progress,
    )
    try:
        s = train_dpo(cfg, err)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: nothing was saved")
        raise typer.Exit(130) from None
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None
    if not s.get("main_process", True):  # `accelerate launch`: one summary, not one per process
        return
    table = Table(title=f"rmboost dpo: {s['policy']} -> {s['output']}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("training rows", f"{s['rows']:,}" + (" (relabelled)" if s["relabelled"] else ""))
    table.add_row("steps / epochs", f"{s['steps']} / {s['epochs']:g}")
    table.add_row("train loss (mean)", f"{s['train_loss']:.4f}")
    if s["loss_history"]:
        first, last = s["loss_history"][0], s["loss_history"][-1]
        table.add_row("first / last logged loss", f"{first['loss']:.4f} / {last['loss']:.4f}")
        if last.get("reward_accuracy") is not None:
            table.add_row("last logged reward accuracy", f"{last['reward_accuracy']:.3f}")
    if ev := s.get("eval"):
        table.add_row("eval loss / reward accuracy", f"{ev.get('loss', float('nan')):.4f} / {ev.get('rewards/accuracies', float('nan')):.3f}")
    table.add_row("prompts cut / responses cut (about)", f"{s['prompts_cut']} / {s['responses_cut_about']}")
    table.add_row("throughput", f"{s['train_rows_per_second']:.2f} rows/s ({s['device']}, {s['precision']}{', LoRA' if s['lora'] else ''})")
    table.add_row("wall time", f"{s.get('wall_seconds', 0):.0f}s")
    err.print(table)
    out.print(f"policy saved to {s['output']}", highlight=False)


def sample(
    model: Annotated[str, typer.Option("--model", "-m", help="A folder written by `rmboost dpo`, smollm2 (the base policy), a causal-LM folder or a .gguf file.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="Prompt rows (prompt) or pair rows (their prompt); one response per distinct prompt.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Rows with response, goal_score and the exact policy input (.jsonl).")],
    goal: Annotated[str | None, typer.Option(help="top (the scale's top), a score, or none. Default: top for a policy trained on relabelled pairs, none otherwise.")] = None,
    variant: Annotated[str | None, typer.Option(help="Override the saved goal variant (system or user).")] = None,
    goal_template: GoalTemplate = None,
    scale: Annotated[str | None, typer.Option(help="Override the saved goal scale LOW-HIGH.")] = None,
    max_new_tokens: Annotated[int, typer.Option()] = 256,
    temperature: Annotated[float, typer.Option(help="0: greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option()] = 1.0,
    batch_size: Annotated[int, typer.Option()] = 8,
    seed: Annotated[int, typer.Option()] = 0,
    max_prompt_length: Annotated[int | None, typer.Option(help="Default: the policy's training value, else 512.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N distinct prompts.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if available).")] = None,
) -> None:
    """Generate from a policy conditioned on a goal score (the top of the scale by default)."""
    from rmboost.align.sample import SampleConfig, run_sample

    cfg = SampleConfig(
        model=model, input=input, output=output, goal=goal, variant=variant, template=goal_template, scale=scale,
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed,
        max_prompt_length=max_prompt_length, limit=limit, device=device,
    )
    try:
        s = run_sample(cfg, log=lambda m: err.print(m, highlight=False))
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None
    err.print(
        f"{s['prompts']} responses, {s['mean_response_tokens']} tokens on average ({s['empty_responses']} empty); "
        f"prompts cut to {s['max_prompt_length']} tokens: {s['prompts_cut']}; {s['wall_seconds']:.0f}s",
        highlight=False,
    )
    out.print(f"responses written to {s['output']}", highlight=False)
