"""What difference a test set and a number of seeds can detect, and what it takes to detect one.

The comparison is the paired one of `rmboost.stats`: two reward models on the same n test pairs,
each averaged over k training seeds. Its variance has two parts:

    Var(mean d) = v * DE / n  +  2 * s^2 / k

- v: the per-pair variance of d = a - b. For two models with 0/1 outcomes, v = q - delta^2,
  where q is the share of pairs on which they disagree (one right, one wrong) and delta the true
  difference. Independent errors give q = pA(1 - pB) + pB(1 - pA), about 2p(1 - p); two similar
  models agree more often and are compared more precisely.
- DE = 1 + (m - 1) * ICC: the design effect of m pairs per question with intra-question
  correlation ICC (`rmboost.stats.design_effect`).
- s: the standard deviation of one model's accuracy over training seeds on a fixed test set.
  The part of seed noise that is independent from pair to pair is also inside v (the outcomes
  are seed averages), so adding both errs on the side of a larger, more cautious number.

With z = z(1 - alpha/2) + z(power) (1.96 + 0.84 = 2.80 for 5% two-sided and 80% power), a true
difference delta is detected with that power when z^2 * Var(mean d) <= delta^2. The smallest
such delta is the *minimum detectable difference* (MDD).

numpy (and `rmboost.stats`, which uses it) is imported inside the functions that need it: the
`rmboost power` command declares its flags from `Design`, and CLI start stays free of numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist, median
from typing import TYPE_CHECKING, Any

from rmboost.options import at_least, option

if TYPE_CHECKING:
    import numpy as np


def z_total(alpha: float = 0.05, power: float = 0.8) -> float:
    """z(1 - alpha/2) + z(power): 2.80 for a 5% two-sided test with 80% power."""
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha} and {power}")
    nd = NormalDist()
    return nd.inv_cdf(1 - alpha / 2) + nd.inv_cdf(power)


def open_share(v: float) -> str | None:
    """A probability strictly between 0 and 1 (a significance level, a power)."""
    return None if 0 < v < 1 else f"must be in (0, 1), got {v:g}"


def correlation(v: float) -> str | None:
    return None if -1 <= v <= 1 else f"must be in [-1, 1], got {v:g}"


@dataclass
class Design:
    """A test set and a seed budget. Accuracies and SDs are fractions (0.01 = 1 point).

    The fields that `rmboost power` takes as they are carry their flags' help (`rmboost.power_cli`).
    """

    pairs: float
    pairs_per_question: float = 1.0  # m of the design effect; size-weighted when sizes differ (stats.cluster_size)
    icc: float = option(0.0, check=correlation, help="Intra-question correlation of the per-pair difference (eval-rm and experiment runs report it).")
    seeds: int = option(1, check=at_least(1), help="Training seeds per model, averaged.")
    seed_sd: float = 0.0
    alpha: float = option(0.05, check=open_share, help="Two-sided significance level.")
    power: float = option(0.8, check=open_share, help="Power wanted.")
    question_size: float | None = None  # mean pairs per question, to count questions; default: pairs_per_question

    def __post_init__(self) -> None:
        if self.pairs <= 0 or self.pairs_per_question < 1 or self.seeds < 1 or self.seed_sd < 0:
            raise ValueError("need pairs > 0, pairs per question >= 1, seeds >= 1 and seed SD >= 0")
        if self.question_size is not None and self.question_size < 1:
            raise ValueError(f"need mean pairs per question >= 1, got {self.question_size:g}")
        if correlation(self.icc):
            raise ValueError(f"ICC {correlation(self.icc)}")

    @property
    def design_effect(self) -> float:
        from rmboost.stats import design_effect

        return design_effect(self.pairs_per_question, self.icc)

    @property
    def mean_question_size(self) -> float:
        """Pairs per question on average: what turns a number of pairs into a number of questions."""
        return self.pairs_per_question if self.question_size is None else self.question_size

    @property
    def questions(self) -> float:
        return self.pairs / self.mean_question_size

    @property
    def seed_variance(self) -> float:
        return 2 * self.seed_sd**2 / self.seeds


def independent_discordance(accuracy: float, other: float | None = None) -> float:
    """Share of pairs two models with independent errors disagree on: pA(1 - pB) + pB(1 - pA)."""
    b = accuracy if other is None else other
    return accuracy * (1 - b) + b * (1 - accuracy)


def accuracies_apart(accuracy: float, delta: float) -> tuple[float, float]:
    """Two accuracies `delta` apart around `accuracy` (p - delta/2 and p + delta/2), moved inside
    [0, 1] where that would leave it: the two models a planned difference compares."""
    low = min(max(accuracy - delta / 2, 0.0), 1.0 - delta)
    return low, low + delta


def unit_name(units: int, pairs: int) -> str:
    """What `units` resampling units of `pairs` test pairs are: questions, or pairs when every pair
    is its own unit (`rmboost.rm.evaluate.resampling_units`)."""
    return "question" if units < pairs else "pair"


def undetectable(units: int, pairs: int, alpha: float) -> str | None:
    """Why nothing can be detected with `units` resampling units of `pairs` pairs, or None: the
    sign-flip p-value of `units` questions (or independent pairs) is never below 2 / 2^units."""
    floor = 2.0 ** (1 - units)
    if floor < alpha:
        return None
    return (f"{units} {unit_name(units, pairs)}{'' if units == 1 else 's'}: the sign-flip test's smallest "
            f"p-value is {floor:.3g}, so no difference can reach p < {alpha:g}")


def detectable_difference(design: Design, pair_variance: float | None = None, discordance: float | None = None) -> float:
    """The MDD of a design, from a measured per-pair variance of d or from a discordance q.

    A measured variance already holds the true difference; with q, v = q - delta^2 is solved
    for delta: delta^2 = z^2 (q DE/n + seed part) / (1 + z^2 DE/n).
    """
    z = z_total(design.alpha, design.power)
    per_pair = design.design_effect / design.pairs
    if pair_variance is not None:
        return z * math.sqrt(pair_variance * per_pair + design.seed_variance)
    if discordance is None:
        raise ValueError("give a per-pair variance or a discordance")
    return z * math.sqrt((discordance * per_pair + design.seed_variance) / (1 + z * z * per_pair))


def pairs_needed(delta: float, discordance: float, design: Design) -> int | None:
    """Test pairs to detect `delta` (design.pairs is ignored); None when the seeds alone are too noisy."""
    z = z_total(design.alpha, design.power)
    room = delta * delta - z * z * design.seed_variance
    if room <= 0:
        return None
    return math.ceil(z * z * (discordance - delta * delta) * design.design_effect / room)


def seeds_needed(delta: float, discordance: float, design: Design) -> int | None:
    """Seeds per model to detect `delta` on design.pairs test pairs; None when no number suffices."""
    z = z_total(design.alpha, design.power)
    room = delta * delta / (z * z) - (discordance - delta * delta) * design.design_effect / design.pairs
    if room <= 0:
        return None
    if design.seed_sd == 0:
        return 1
    return max(1, math.ceil(2 * design.seed_sd**2 / room))


def plan(
    differences: Sequence[float],
    accuracy: float,
    design: Design,
    discordance: float | None = None,
) -> dict[str, Any]:
    """Pairs, questions and seeds needed for each difference (fractions), for `rmboost power`.

    Without a `discordance`, each difference delta compares two models with independent errors
    `accuracies_apart(accuracy, delta)`, whose discordance grows with delta; a given discordance
    q holds for every row, and a difference above q is impossible (the models differ only on the
    pairs they disagree on). The MDD takes q at `accuracy` (2p(1 - p) for independent errors).
    """
    if not 0 < accuracy < 1:
        raise ValueError(f"accuracy must be in (0, 1), got {accuracy}")
    q = independent_discordance(accuracy) if discordance is None else discordance
    if not 0 < q <= 1:
        raise ValueError(f"discordance must be in (0, 1], got {q}")
    rows = []
    for delta in differences:
        if not 0 < delta < 1 or (discordance is not None and delta > discordance):
            raise ValueError(f"difference {100 * delta:g} points is impossible when the models disagree on "
                             f"{100 * q:g}% of pairs: they differ only where they disagree")
        row_q = independent_discordance(*accuracies_apart(accuracy, delta)) if discordance is None else q
        n = pairs_needed(delta, row_q, design)
        rows.append({
            "difference": delta,
            "discordance": row_q,
            "pairs": n,
            "questions": None if n is None else math.ceil(n / design.mean_question_size),
            "seeds_at_pairs": seeds_needed(delta, row_q, design),
        })
    return {
        "accuracy": accuracy, "discordance": q, "discordance_assumed_independent": discordance is None,
        "design": {**design.__dict__, "design_effect": design.design_effect, "questions": design.questions},
        "mdd": detectable_difference(design, discordance=q),
        "rows": rows,
    }


# ---------------------------------------------------------------------------------------------
# What a finished run could have detected


def pooled_seed_sd(per_seed: Sequence[Sequence[float]]) -> float | None:
    """Pooled SD of accuracy over seeds, from cells with two or more seeds (None without any)."""
    import numpy as np

    num = den = 0.0
    for values in per_seed:
        if len(values) >= 2:
            num += float(np.var(values, ddof=1)) * (len(values) - 1)
            den += len(values) - 1
    return math.sqrt(num / den) if den else None


def observed_power(
    diffs: Sequence[np.ndarray],
    outcomes: Sequence[np.ndarray],
    unit: np.ndarray,
    n_units: int,
    per_seed: Sequence[Sequence[float]],
    seeds: int,
    alpha: float = 0.05,
    power: float = 0.8,
) -> dict[str, Any]:
    """The MDD of a run, from its own test set, comparisons and seed spread.

    `diffs`: the seed-averaged per-pair differences of the run's paired comparisons; the typical
    (median) per-pair variance and ICC of those is used. Without comparisons (or when that
    variance is 0: models that never disagree), two independent copies of the seed-averaged
    `outcomes` stand in (v = 2 Var(outcome)), a cautious bound. Not available when no difference
    could be detected at all: under two pairs, no spread to measure, or too few questions (pairs,
    when every pair is its own unit) for the sign-flip test to reach p < alpha.
    """
    import numpy as np

    from rmboost.stats import cluster_size, icc

    n = len(unit)
    if n < 2:
        return {"available": False, "reason": f"{n} test pair{'' if n == 1 else 's'}: no spread to measure"}
    if reason := undetectable(n_units, n, alpha):
        return {"available": False, "reason": reason}
    variance = float(median(float(np.var(d, ddof=1)) for d in diffs)) if diffs else 0.0
    if variance > 0:
        rho = float(median(icc(d, unit, n_units) for d in diffs))
        basis = f"median over {len(diffs)} paired comparisons"
    elif outcomes:  # no comparison, or models that never disagreed: no spread of d to measure
        variance = 2 * float(median(float(np.var(o, ddof=1)) for o in outcomes))
        rho = float(median(icc(o, unit, n_units) for o in outcomes))
        basis = ("the compared models never disagreed: two independent models like them stand in" if diffs
                 else "no comparison: two independent models like the ones scored stand in")
    else:
        return {"available": False, "reason": "no finished reward model"}
    if variance == 0:
        return {"available": False, "reason": "every model scored every pair alike (accuracy 0% or 100%): no spread to measure"}
    rho = min(1.0, max(-1.0, rho))  # the ANOVA estimate can fall below -1 when most questions hold one pair
    sd = pooled_seed_sd(per_seed)
    m = cluster_size(unit, n_units)
    design = Design(pairs=n, pairs_per_question=m, icc=rho, seeds=seeds, seed_sd=sd or 0.0, alpha=alpha, power=power)
    test_only = Design(pairs=n, pairs_per_question=m, icc=rho, alpha=alpha, power=power)
    return {
        "available": True, "alpha": alpha, "power": power, "pairs": n, "questions": n_units, "unit": unit_name(n_units, n),
        "pairs_per_question": m, "icc": rho, "design_effect": design.design_effect, "pair_variance": variance,
        "seeds": seeds, "seed_sd": sd, "basis": basis,
        "mdd_test_set": detectable_difference(test_only, pair_variance=variance),
        "mdd": detectable_difference(design, pair_variance=variance),
    }


def describe_power(p: dict[str, Any], subject: str = "this run") -> str:
    """One sentence for tables and reports; `subject` is what could detect the difference."""
    if not p.get("available"):
        return f"detectable difference: not available ({p.get('reason', 'no data')})"
    seeds = (f"; with the seed spread (SD {100 * p['seed_sd']:.1f} points over {p['seeds']} seeds): "
             f"{100 * p['mdd']:.1f} points" if p.get("seed_sd") is not None
             else "; seed spread unknown (one seed per model)")
    stand_in = "" if p["basis"].startswith("median") else f" [{p['basis']}]"
    questions = "no question groups" if p.get("unit") == "pair" else f"{p['questions']} questions"
    return (f"smallest difference {subject} could detect ({p['power']:.0%} power, {p['alpha']:.0%} two-sided): "
            f"{100 * p['mdd_test_set']:.1f} points from the test set alone ({p['pairs']} pairs, {questions}, ICC {p['icc']:.2f}, design effect {p['design_effect']:.2f}){seeds}{stand_in}")
