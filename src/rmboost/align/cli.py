"""Typer commands for alignment: relabel, dpo, sample.

Registered on the main app at the end of rmboost/cli.py; each command's flags are the fields of
its config (RelabelConfig, DPOTrainConfig, SampleConfig; see rmboost.options_cli).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rich.table import Table

from rmboost import options_cli
from rmboost.align.dpo import DPOTrainConfig
from rmboost.align.relabel import RelabelConfig
from rmboost.align.sample import SampleConfig
from rmboost.cli_support import USER_ERRORS, err, out, run_training
from rmboost.cli_support import fail as _fail


@options_cli.command(RelabelConfig)
def relabel(cfg: RelabelConfig) -> None:
    """Reward-augmented pairs: each pair conditioned on its scores, doubled and swapped (arXiv 2410.08067)."""
    from rmboost.align.relabel import run_relabel
    from rmboost.llm.cache import default_cache_path

    try:
        cfg = replace(cfg, cache=cfg.cache or default_cache_path())
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


@options_cli.command(DPOTrainConfig)
def dpo(cfg: DPOTrainConfig) -> None:
    """Train a policy with DPO (TRL DPOTrainer) on plain or relabelled pairs; multi-GPU via accelerate launch."""
    from rmboost.align.dpo import train_dpo

    run_training(train_dpo, cfg, print_dpo_summary)


def print_dpo_summary(s: dict[str, Any]) -> None:
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


@options_cli.command(SampleConfig)
def sample(cfg: SampleConfig) -> None:
    """Generate from a policy conditioned on a goal score (the top of the scale by default)."""
    from rmboost.align.sample import run_sample

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
