"""`rmboost eval-rm` on pair files: one reward model, or two paired on one test file.

`evaluate_model` scores one model (in its own saved format) and evaluates it. With two models,
both score every test pair (each with its own saved format); each gets the usual
evaluation (`rmboost.rm.evaluate.evaluate_scores`), and the difference A - B is paired
(`rmboost.stats.paired_difference`): the same question bootstrap for both, a sign-flip
permutation p-value, and "detected" only when the interval excludes 0 and p < 0.05. The smallest difference
this test file could detect (80% power, one seed per model) comes with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rmboost.power import describe_power, observed_power
from rmboost.rm.evaluate import evaluate_scores, outcomes, resampling_units
from rmboost.stats import format_p, paired_difference


def evaluate_model(
    model: Path,
    test: Path,
    prompt_field: str | None = None,
    max_length: int | None = None,
    batch_size: int = 32,
    resamples: int = 2000,
    seed: int = 0,
    device: str | None = None,
) -> tuple[dict[str, Any], list[Any], np.ndarray]:
    """One model on a pair file, scored in its own saved format: `evaluate_scores`' metrics (with
    the model, the file and the format used), the pairs and the per-pair outcomes."""
    from rmboost.rm.data import read_pairs
    from rmboost.rm.score import RewardScorer

    scorer = RewardScorer(model, device=device, batch_size=batch_size, max_length=max_length)
    field = prompt_field or scorer.prompt_field
    pairs = read_pairs(test, field)
    chosen, rejected = scorer.score_pairs(pairs)
    metrics = evaluate_scores(pairs, chosen, rejected, resamples=resamples, seed=seed)
    metrics.update(model=str(model), test=str(test), prompt_field=field, max_length=scorer.max_length,
                   truncated=dict(scorer.truncated))
    return metrics, pairs, outcomes(chosen, rejected)


def compare_models(
    models: list[Path],
    test: Path,
    prompt_field: str | None = None,
    max_length: int | None = None,
    batch_size: int = 32,
    resamples: int = 2000,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """Two models on one pair file: each one's evaluation, the paired difference A - B and the
    smallest difference this comparison could detect."""
    if len(models) != 2:
        raise ValueError(f"give one --model, or two to compare (got {len(models)})")
    if Path(models[0]).resolve() == Path(models[1]).resolve():
        raise ValueError(f"--model {models[0]} and --model {models[1]} are the same model: give two to compare")
    evaluated, per_pair = [], []
    pairs: list[Any] = []
    for model in models:
        metrics, pairs, right = evaluate_model(model, test, prompt_field, max_length, batch_size, resamples, seed, device)
        metrics.pop("groups", None)
        evaluated.append(metrics)
        per_pair.append(right)
    unit, n_units, unit_name = resampling_units(pairs)
    paired = paired_difference(per_pair[0], per_pair[1], unit, n_units, resamples=resamples, seed=seed)
    power = observed_power([per_pair[0] - per_pair[1]], per_pair, unit, n_units, per_seed=[], seeds=1)
    return {
        "test": str(test), "n": len(pairs), "models": evaluated,
        "difference": {**paired, "a": str(models[0]), "b": str(models[1]), "unit": unit_name, "units": n_units,
                       "resamples": resamples, "seed": seed},
        "power": power,
    }


def print_comparison(result: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"rmboost eval-rm: two reward models on {result['test']} (n={result['n']})")
    for col in ("model", "accuracy", "95% CI"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for label, m in zip("AB", result["models"], strict=True):
        table.add_row(f"{label}: {m['model']}", f"{100 * m['accuracy']:.1f}%",
                      f"[{100 * m['ci95'][0]:.1f}%, {100 * m['ci95'][1]:.1f}%]")
    console.print(table)
    d = result["difference"]
    lo, hi = d["ci95"]
    verdict = ("detected (the interval excludes 0 and p < 0.05)" if d["detected"] else
               "not detected (the interval includes 0)" if lo <= 0 <= hi else
               "not detected: the interval excludes 0 but p >= 0.05 (too few questions or disagreements "
               "for the bootstrap interval alone)")
    console.print(
        f"A - B: {100 * d['difference']:+.1f} points, 95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}] (paired: "
        f"{d['resamples']} resamples of {d['units']} {d['unit']}s, seed {d['seed']}); sign-flip p = "
        f"{format_p(d['p_value'])} ({d['permutation']}); {verdict}",
        highlight=False,
    )
    console.print(describe_power(result["power"], "this comparison"), highlight=False)


def single_model_power(pairs: list[Any], right: np.ndarray) -> dict[str, Any]:
    """The MDD of comparing a model whose per-pair outcomes are `right` with another like it
    (independent errors) on these pairs."""
    unit, n_units, _ = resampling_units(pairs)
    return observed_power([], [right], unit, n_units, per_seed=[], seeds=1)

