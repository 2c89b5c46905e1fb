"""Paired comparisons of reward models tested on the same pairs, and the clustering behind them.

Two reward models scored on the same test pairs are compared pair by pair: d_i = a_i - b_i, where
a_i and b_i are the per-pair outcomes (1 right, 0.5 tie, 0 wrong), each averaged over the seeds
of its model. The difference is mean(d); its 95% interval is the question-level bootstrap of the
cells (`rmboost.rm.evaluate.bootstrap_ci`, same resamples and seed, so the same questions are
drawn for both models), and its p-value a sign-flip permutation test by question: under "no
difference" the two models' labels are exchangeable within a question, so each question's summed
difference keeps or flips its sign with probability 1/2.

A difference is *detected* when its interval excludes 0 and the permutation p-value is below
0.05 - the one rule used for every mark in tables and reports. With many questions the two
agree; with few questions, or few pairs on which the models disagree, the percentile bootstrap
is too narrow (4 discordant pairs can give an interval that excludes 0, while no test at 5% can
reject on them: the exact sign-flip p is 2/16), and the exact test keeps the mark honest.

Clustering: pairs of one question share a prompt and often responses, so they are not
independent. The intra-question correlation (ICC, one-way ANOVA estimator) and the design effect
1 + (m - 1) * ICC (m: the size-weighted mean number of pairs per question) say how much less a
clustered test set is worth than as many independent pairs; `rmboost.power` builds on them.
"""

from __future__ import annotations

import itertools
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import numpy as np

from rmboost.rm.evaluate import bootstrap_ci

ALPHA = 0.05  # two-sided, with the 95% interval
EXACT_PERMUTATION_UNITS = 16  # up to 2**16 sign patterns are enumerated; beyond, Monte Carlo


def format_p(p: float) -> str:
    """A p-value to two significant digits, rounded down, so that the text agrees with the
    test: a p below ALPHA never reads as 0.05 (0.049995 -> "0.049"; 0.125 -> "0.12")."""
    if p <= 0:
        return "0"
    exact = Decimal(repr(float(p)))
    shown = exact.quantize(Decimal(1).scaleb(exact.adjusted() - 1), rounding=ROUND_FLOOR)
    return f"{shown.normalize():f}"


def seed_mean(outcomes: Any) -> np.ndarray:
    """Per-pair outcomes averaged over seeds: a (seeds, pairs) array -> (pairs,); a vector as is."""
    arr = np.asarray(outcomes, dtype=float)
    return arr.mean(axis=0) if arr.ndim == 2 else arr


def unit_sums(values: np.ndarray, unit: np.ndarray, n_units: int) -> np.ndarray:
    return np.bincount(unit, weights=values, minlength=n_units)


def sign_flip_p(
    diff: np.ndarray, unit: np.ndarray, n_units: int, permutations: int = 10_000, seed: int = 0
) -> tuple[float, str]:
    """Two-sided p-value of mean(diff) = 0 by flipping the sign of each unit's summed difference.

    Units whose differences sum to 0 cannot change the statistic and are left out. With at most
    EXACT_PERMUTATION_UNITS units left every sign pattern is enumerated (an exact p-value);
    otherwise `permutations` random patterns are drawn and p = (1 + hits) / (1 + permutations).
    Returns (p, method).
    """
    sums = unit_sums(diff, unit, n_units)
    sums = sums[np.abs(sums) > 1e-12]
    if len(sums) == 0:
        return 1.0, "exact"
    observed = abs(sums.sum())
    tol = 1e-9 * max(1.0, observed)
    if len(sums) <= EXACT_PERMUTATION_UNITS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(sums))))
        stats = np.abs(signs @ sums)
        return float(np.mean(stats >= observed - tol)), "exact"
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, permutations, 1024):
        signs = rng.choice((1.0, -1.0), size=(min(1024, permutations - start), len(sums)))
        hits += int(np.sum(np.abs(signs @ sums) >= observed - tol))
    return (1 + hits) / (1 + permutations), f"monte carlo ({permutations})"


def paired_difference(
    a: Any,
    b: Any,
    unit: np.ndarray,
    n_units: int,
    resamples: int = 2000,
    seed: int = 0,
    permutations: int = 10_000,
) -> dict[str, Any]:
    """Paired difference a - b of two models' per-pair outcomes on the same pairs.

    `a` and `b` are (pairs,) vectors or (seeds, pairs) arrays (averaged over seeds first; the
    two may have different numbers of seeds). `unit` gives each pair's resampling unit (its
    question; `rmboost.rm.evaluate.resampling_units`).
    """
    ma, mb = seed_mean(a), seed_mean(b)
    if ma.shape != mb.shape:
        raise ValueError(f"the two models were scored on different pairs ({ma.shape[0]} vs {mb.shape[0]})")
    d = ma - mb
    lo, hi = bootstrap_ci(d, unit, n_units, resamples, seed)
    p, method = sign_flip_p(d, unit, n_units, permutations, seed)
    return {
        "difference": float(d.mean()),
        "ci95": [lo, hi],
        "p_value": p,
        "detected": bool((lo > 0 or hi < 0) and p < ALPHA),
        "permutation": method,
    }


def icc(values: Any, unit: np.ndarray, n_units: int) -> float:
    """Intra-class correlation of `values` within units (one-way ANOVA estimator, unequal sizes).

    0.0 when there is no clustering to measure (every unit holds one value, or one unit holds all)
    or when the values do not vary. The estimate can be negative (less alike than chance).
    """
    y = np.asarray(values, dtype=float)
    sizes = np.bincount(unit, minlength=n_units).astype(float)
    present = sizes > 0
    k, n = int(present.sum()), len(y)
    if k < 2 or k == n:
        return 0.0
    means = unit_sums(y, unit, n_units)[present] / sizes[present]
    grand = y.mean()
    msb = float(np.sum(sizes[present] * (means - grand) ** 2) / (k - 1))
    within = y - (unit_sums(y, unit, n_units) / np.maximum(sizes, 1))[unit]
    msw = float(np.sum(within**2) / (n - k))
    n0 = (n - float(np.sum(sizes[present] ** 2)) / n) / (k - 1)
    denominator = msb + (n0 - 1) * msw
    return 0.0 if denominator <= 0 else (msb - msw) / denominator


def cluster_size(unit: np.ndarray, n_units: int) -> float:
    """Size-weighted mean number of pairs per unit, sum(m^2) / sum(m): the m of the design effect.

    With equal sizes it is the size; unequal sizes count for more (Kish's correction).
    """
    sizes = np.bincount(unit, minlength=n_units).astype(float)
    return float(np.sum(sizes**2) / np.sum(sizes)) if sizes.sum() else 1.0


def design_effect(m: float, rho: float) -> float:
    """1 + (m - 1) * rho, with a negative ICC counted as 0 (never credit clustering with extra data)."""
    return 1.0 + max(m - 1.0, 0.0) * max(rho, 0.0)
