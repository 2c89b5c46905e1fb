"""Held-out preference accuracy with a bootstrap interval and trivial baselines.

Accuracy is the share of pairs where r(x, chosen) > r(x, rejected); a tie (equal rewards) counts
0.5, as a coin would. The 95% interval is a percentile bootstrap. When pairs carry a `group`
(QA-Feedback: the question), whole groups are resampled, since the pairs of one question share a
prompt and responses and are not independent; otherwise single pairs are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rmboost.rm.data import Pair

TIE_RULE = "a tie (equal rewards, or equal lengths for longer-wins) counts 0.5"


def outcomes(chosen: Sequence[float], rejected: Sequence[float]) -> np.ndarray:
    """Per pair: 1 if chosen beats rejected, 0.5 on a tie, 0 otherwise."""
    c, r = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    return np.where(c > r, 1.0, np.where(c == r, 0.5, 0.0))


def longer_wins(pairs: Sequence[Pair]) -> np.ndarray:
    """The length baseline: the longer response (in characters) is predicted to be preferred."""
    return outcomes([len(p.chosen) for p in pairs], [len(p.rejected) for p in pairs])


def resampling_units(pairs: Sequence[Pair]) -> tuple[np.ndarray, int, str]:
    """Index of each pair's resampling unit, the number of units, and the unit's name."""
    if pairs and all(p.group is not None for p in pairs):
        names: dict[str, int] = {}
        index = np.array([names.setdefault(p.group or "", len(names)) for p in pairs])
        if len(names) < len(pairs):
            return index, len(names), "question"  # the `group` column: pairs of one question
    return np.arange(len(pairs)), len(pairs), "pair"


def bootstrap_ci(
    values: np.ndarray, unit: np.ndarray, n_units: int, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of mean(values) when units (groups or pairs) are resampled."""
    if len(values) == 0:
        return (float("nan"), float("nan"))
    sums = np.bincount(unit, weights=values, minlength=n_units)
    counts = np.bincount(unit, minlength=n_units).astype(float)
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    for start in range(0, resamples, 256):  # chunks keep memory small for many units
        draw = rng.integers(0, n_units, size=(min(256, resamples - start), n_units))
        stats[start : start + len(draw)] = sums[draw].sum(1) / counts[draw].sum(1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def evaluate_scores(
    pairs: Sequence[Pair],
    chosen: Sequence[float],
    rejected: Sequence[float],
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy, interval, mean margin and baselines for rewards already computed."""
    n = len(pairs)
    if n == 0:
        raise ValueError("no pairs to evaluate")
    rm = outcomes(chosen, rejected)
    length = longer_wins(pairs)
    unit, n_units, unit_name = resampling_units(pairs)
    margins = np.asarray(chosen, dtype=float) - np.asarray(rejected, dtype=float)
    metrics: dict[str, Any] = {
        "n": n,
        "accuracy": float(rm.mean()),
        "ci95": list(bootstrap_ci(rm, unit, n_units, resamples, seed)),
        "ties": int((rm == 0.5).sum()),
        "mean_margin": float(margins.mean()),
        "mean_reward_chosen": float(np.mean(chosen)),
        "mean_reward_rejected": float(np.mean(rejected)),
        "baselines": {
            "longer_wins": {
                "accuracy": float(length.mean()),
                "ci95": list(bootstrap_ci(length, unit, n_units, resamples, seed)),
                "ties": int((length == 0.5).sum()),
            },
            "coin": {"accuracy": 0.5},
        },
        "vs_longer_wins": {
            "difference": float(rm.mean() - length.mean()),
            "ci95": list(bootstrap_ci(rm - length, unit, n_units, resamples, seed)),
        },
        "bootstrap": {"resamples": resamples, "unit": unit_name, "units": n_units, "seed": seed},
        "tie_rule": TIE_RULE,
    }
    if any(p.group is not None for p in pairs):
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(pairs):
            groups.setdefault(p.group or "(none)", []).append(i)
        metrics["groups"] = {
            g: {"n": len(ix), "accuracy": float(rm[ix].mean()), "longer_wins": float(length[ix].mean())}
            for g, ix in sorted(groups.items())
        }
    return metrics
