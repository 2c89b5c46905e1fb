"""Paired differences, permutation p-values, clustering and power (rmboost.stats, rmboost.power).

Numbers are checked against hand computations on small inputs and, for power, against a
simulation of clustered test sets scored by the production decision rule.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from rmboost.cli import app
from rmboost.power import (
    Design,
    accuracies_apart,
    describe_power,
    detectable_difference,
    independent_discordance,
    observed_power,
    pairs_needed,
    plan,
    pooled_seed_sd,
    seeds_needed,
    z_total,
)
from rmboost.rm.evaluate import bootstrap_ci
from rmboost.stats import cluster_size, design_effect, icc, paired_difference, sign_flip_p

# ---------------------------------------------------------------------------------------------
# The paired difference


def test_paired_interval_excludes_zero_where_separate_intervals_overlap():
    """20 independent pairs: A right on 10, B right on the same 10 and 4 more.

    Separately, B's 0.70 and A's 0.50 have overlapping intervals. Paired, d = B - A is 1 on four
    pairs and 0 elsewhere, so a bootstrap resample's mean is X/20 with X ~ Binomial(20, 0.2):
    P(X = 0) = 0.012 < 0.025 <= P(X <= 1) = 0.069 and P(X <= 7) = 0.968 < 0.975 <= P(X <= 8) = 0.990,
    so the 95% percentile interval is [1/20, 8/20] = [0.05, 0.40]. Separately, Binomial(20, 0.5)/20
    gives [0.30, 0.70] for A (P(X<=5) = .021, P(X<=6) = .058; P(X<=13) = .942, P(X<=14) = .979) and
    Binomial(20, 0.7)/20 gives [0.50, 0.90] for B.
    The exact sign-flip p-value: only the four +1 pairs can flip; |sum| = 4 in 2 of 16 patterns.
    """
    a = np.array([1.0] * 10 + [0.0] * 10)
    b = a.copy()
    b[10:14] = 1.0
    unit = np.arange(20)
    lo_a, hi_a = bootstrap_ci(a, unit, 20, 2000, 0)
    lo_b, hi_b = bootstrap_ci(b, unit, 20, 2000, 0)
    # (P(X <= 5) = 0.021 is close to 0.025, so 2,000 resamples land within a step of these.)
    assert (lo_a, hi_a) == pytest.approx((0.30, 0.70), abs=0.01) and (lo_b, hi_b) == pytest.approx((0.50, 0.90), abs=0.01)
    assert lo_b < hi_a  # the separate intervals overlap

    r = paired_difference(b, a, unit, 20)
    assert r["difference"] == pytest.approx(0.20)
    assert r["ci95"] == pytest.approx([0.05, 0.40])
    assert r["p_value"] == pytest.approx(2 / 16) and r["permutation"] == "exact"
    # The interval excludes 0, but four discordant pairs cannot show a difference at 5% (the
    # exact test's smallest p is 2/16): the percentile bootstrap is too narrow here, so the
    # difference is not called detected.
    assert r["detected"] is False
    reverse = paired_difference(a, b, unit, 20)
    assert reverse["ci95"] == pytest.approx([-0.40, -0.05]) and reverse["detected"] is False


def test_a_paired_difference_is_detected_where_separate_intervals_overlap():
    """40 independent pairs: A right on 20, B right on the same 20 and 8 more.

    Separately, Binomial(40, 0.5)/40 gives A about [0.35, 0.65] and Binomial(40, 0.7)/40 gives B
    about [0.55, 0.825]: they overlap. Paired, d = B - A is 1 on 8 pairs, a resample's mean is
    X/40 with X ~ Binomial(40, 0.2): P(X <= 2) = 0.008 < 0.025 <= P(X <= 3) = 0.029 and
    P(X <= 12) = 0.957 < 0.975 <= P(X <= 13) = 0.981, so the interval is [3/40, 13/40] =
    [0.075, 0.325] (within one step of 1/40 for 2,000 resamples). The exact sign-flip p-value:
    |sum| = 8 in 2 of 2^8 patterns, 0.0078.
    """
    a = np.array([1.0] * 20 + [0.0] * 20)
    b = a.copy()
    b[20:28] = 1.0
    unit = np.arange(40)
    lo_a, hi_a = bootstrap_ci(a, unit, 40, 2000, 0)
    lo_b, hi_b = bootstrap_ci(b, unit, 40, 2000, 0)
    assert (lo_a, hi_a) == pytest.approx((0.35, 0.65), abs=0.026)
    assert (lo_b, hi_b) == pytest.approx((0.55, 0.825), abs=0.026)
    assert lo_b < hi_a  # the separate intervals overlap

    r = paired_difference(b, a, unit, 40)
    assert r["difference"] == pytest.approx(0.20)
    assert r["ci95"] == pytest.approx([0.075, 0.325], abs=0.026) and r["ci95"][0] > 0
    assert r["p_value"] == pytest.approx(2 / 256) and r["permutation"] == "exact"
    assert r["detected"] is True


def test_questions_are_resampled_with_both_models_together():
    """Grouped pairs: the interval is the percentile of (mean A - mean B) over the SAME question draws
    as the cells' bootstrap (bootstrap_ci's generator and seed), written out here by hand."""
    groups = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]
    unit = np.array(groups)
    a = np.array([1, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 0, 1, 0.5, 1, 0, 1, 0], dtype=float)
    b = np.array([1, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0.5, 0, 0, 1, 1], dtype=float)
    # per question, sum of a - b: [1, 1, 0, 1, 2, -1]; total 4 over 18 pairs
    rng = np.random.default_rng(0)
    stats = []
    for _ in range(2000 // 256 + 1):
        for draw in rng.integers(0, 6, size=(256, 6)):
            rows = np.concatenate([np.flatnonzero(unit == g) for g in draw])
            stats.append(a[rows].mean() - b[rows].mean())
    expected = np.percentile(stats[:2000], [2.5, 97.5])

    r = paired_difference(a, b, unit, 6)
    assert r["difference"] == pytest.approx(4 / 18)
    assert r["ci95"] == pytest.approx(list(expected))
    # Non-zero question sums (1, 1, 1, 2, -1): |sum of signed sums| >= 4 in 10 of 32 sign patterns
    # (positive part 0, a single 1, all but a single 1, or all).
    assert r["p_value"] == pytest.approx(10 / 32)


def test_seeds_are_averaged_before_pairing():
    unit = np.arange(4)
    a = np.array([[1, 1, 0, 0], [1, 0, 0, 1]], dtype=float)  # two seeds: per pair 1, .5, 0, .5
    b = np.array([[0, 1, 0, 0]], dtype=float)  # one seed
    r = paired_difference(a, b, unit, 4)
    assert r["difference"] == pytest.approx((1 - 0.5 + 0 + 0.5) / 4)


def test_sign_flip_p_value_by_monte_carlo_beyond_the_exact_limit():
    diff = np.ones(30)
    p, method = sign_flip_p(diff, np.arange(30), 30, permutations=5000, seed=1)
    assert method == "monte carlo (5000)" and p == pytest.approx(1 / 5001)  # 2 of 2^30 patterns reach 30
    assert sign_flip_p(np.zeros(5), np.arange(5), 5) == (1.0, "exact")
    # A balanced difference is nowhere near significant.
    p, _ = sign_flip_p(np.array([1.0, -1.0] * 20), np.arange(40), 40, permutations=2000)
    assert p > 0.5


def test_mismatched_pairs_are_refused():
    with pytest.raises(ValueError, match="different pairs"):
        paired_difference(np.ones(3), np.ones(4), np.arange(3), 3)


# ---------------------------------------------------------------------------------------------
# Clustering


def test_icc_design_effect_and_cluster_size_by_hand():
    # Two groups of two: (1, 1) and (0, 0) -> all variance between groups: ICC 1.
    assert icc([1, 1, 0, 0], np.array([0, 0, 1, 1]), 2) == pytest.approx(1.0)
    # Groups (1, 0) and (1, 0): all variance within: MSB 0, MSW 0.5, n0 2 -> (0 - .5)/(0 + .5) = -1.
    assert icc([1, 0, 1, 0], np.array([0, 0, 1, 1]), 2) == pytest.approx(-1.0)
    # Unequal sizes, by the ANOVA formulas: groups (1, 1, 0), (0, 0), (1): grand mean 1/2,
    # MSB = (3 (2/3 - 1/2)^2 + 2 (1/4) + 1 (1/4)) / 2 = 0.41667, MSW = (2/3) / 3 = 0.22222,
    # n0 = (6 - 14/6) / 2 = 1.83333 -> ICC = (0.41667 - 0.22222) / (0.41667 + 0.83333 * 0.22222).
    unit = np.array([0, 0, 0, 1, 1, 2])
    expected = (5 / 12 - 2 / 9) / (5 / 12 + (11 / 6 - 1) * 2 / 9)
    assert icc([1, 1, 0, 0, 0, 1], unit, 3) == pytest.approx(expected)
    assert icc([1, 0, 1], np.arange(3), 3) == 0.0  # no clustering to measure
    assert cluster_size(unit, 3) == pytest.approx((9 + 4 + 1) / 6)
    assert design_effect(5, 0.1) == pytest.approx(1.4) and design_effect(5, -0.3) == 1.0


# ---------------------------------------------------------------------------------------------
# Power


def simulate_differences(delta: float, q: float, rho: float, groups: int, m: int, rng) -> np.ndarray:
    """Per-pair d = a - b for two models that disagree on a share q of pairs, A winning more by delta.

    Each question shifts the odds of A-only vs B-only wins by +-c, which gives the per-pair
    difference an intra-question correlation 4c^2 / (q - delta^2) = rho.
    """
    c = math.sqrt(rho * (q - delta * delta)) / 2
    assert q / 2 - delta / 2 - c >= 0, "probabilities must stay in [0, 1]"
    h = rng.choice([-c, c], size=groups)
    p_a = q / 2 + delta / 2 + h
    p_b = q / 2 - delta / 2 - h
    u = rng.random((groups, m))
    return np.where(u < p_a[:, None], 1.0, np.where(u < (p_a + p_b)[:, None], -1.0, 0.0)).ravel()


def test_power_formula_matches_a_simulation_of_clustered_test_sets():
    """80 questions x 5 pairs, the models disagree on half the pairs, ICC 0.15: at the computed MDD
    the paired bootstrap detects the difference in about 80% of simulated test sets, at half of it
    in about Phi(2.80/2 - 1.96) = 29%, and with no difference in about 5%."""
    groups, m, q, rho = 80, 5, 0.5, 0.15
    design = Design(pairs=groups * m, pairs_per_question=m, icc=rho)
    mdd = detectable_difference(design, discordance=q)
    assert design.design_effect == pytest.approx(1.6)
    unit = np.repeat(np.arange(groups), m)
    rates, iccs = {}, []
    for delta in (0.0, mdd / 2, mdd):
        rng = np.random.default_rng(7)
        hits = 0
        for s in range(400):
            d = simulate_differences(delta, q, rho, groups, m, rng)
            hits += paired_difference(d, np.zeros_like(d), unit, groups, resamples=1000, seed=s, permutations=100)["detected"]
            iccs.append(icc(d, unit, groups))
        rates[delta] = hits / 400
    assert rates[mdd] == pytest.approx(0.80, abs=0.07), rates
    assert rates[mdd / 2] == pytest.approx(0.29, abs=0.07), rates
    assert rates[0.0] < 0.10, rates
    assert np.mean(iccs) == pytest.approx(rho, abs=0.02)  # the ICC estimator recovers the truth

    # Ignoring the clustering would promise a difference a third smaller than the design delivers.
    flat = detectable_difference(Design(pairs=groups * m), discordance=q)
    assert flat < 0.85 * mdd


def test_sample_size_and_seeds_invert_the_detectable_difference():
    assert z_total() == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    q = independent_discordance(0.6)
    assert q == pytest.approx(0.48)
    design = Design(pairs=1, pairs_per_question=5, icc=0.1, seeds=3, seed_sd=0.005)
    for delta in (0.02, 0.03, 0.05):
        n = pairs_needed(delta, q, design)
        assert n is not None
        enough = Design(pairs=n, pairs_per_question=5, icc=0.1, seeds=3, seed_sd=0.005)
        short = Design(pairs=n - 1, pairs_per_question=5, icc=0.1, seeds=3, seed_sd=0.005)
        assert detectable_difference(enough, discordance=q) <= delta < detectable_difference(short, discordance=q)
    # Seed noise alone (SD 1 point, 2 seeds: 2.8 points) makes 2 points undetectable at any size.
    noisy = Design(pairs=10_000, seeds=2, seed_sd=0.01)
    assert pairs_needed(0.02, q, noisy) is None
    k = seeds_needed(0.03, q, Design(pairs=20_000, seed_sd=0.01))
    assert k is not None
    assert detectable_difference(Design(pairs=20_000, seeds=k, seed_sd=0.01), discordance=q) <= 0.03
    assert detectable_difference(Design(pairs=20_000, seeds=k - 1, seed_sd=0.01), discordance=q) > 0.03
    assert seeds_needed(0.01, q, Design(pairs=410, seed_sd=0.01)) is None  # the test set is too small

    # Each planned difference compares models at p -/+ d/2: their discordance grows with d.
    result = plan([0.01, 0.04], 0.6, Design(pairs=410, pairs_per_question=410 / 78, icc=0.1))
    assert accuracies_apart(0.6, 0.04) == pytest.approx((0.58, 0.62))
    q4 = 0.58 * 0.38 + 0.62 * 0.42
    assert result["rows"][1]["discordance"] == pytest.approx(q4) and q4 > q
    assert [r["pairs"] for r in result["rows"]] == [
        pairs_needed(d, qd, Design(pairs=1, pairs_per_question=410 / 78, icc=0.1))
        for d, qd in ((0.01, 0.595 * 0.395 + 0.605 * 0.405), (0.04, q4))]
    assert result["rows"][0]["questions"] == math.ceil(result["rows"][0]["pairs"] / (410 / 78))
    # Near the ceiling the two models stay inside [0, 1]: 99% and 3 points compares 97% with 100%.
    high = plan([0.03], 0.99, Design(pairs=100))["rows"][0]
    assert accuracies_apart(0.99, 0.03) == pytest.approx((0.97, 1.0)) and high["discordance"] == pytest.approx(0.03)
    # A given discordance bounds the difference: models differ only where they disagree.
    assert plan([0.2], 0.6, Design(pairs=100), discordance=0.2)["rows"][0]["discordance"] == 0.2
    with pytest.raises(ValueError, match="25 points is impossible when the models disagree on 20% of pairs"):
        plan([0.25], 0.6, Design(pairs=100), discordance=0.2)


def test_observed_power_uses_the_runs_own_numbers():
    rng = np.random.default_rng(0)
    unit = np.repeat(np.arange(40), 5)
    diffs = [simulate_differences(0.0, 0.4, 0.2, 40, 5, rng) for _ in range(3)]
    p = observed_power(diffs, [], unit, 40, per_seed=[[0.50, 0.52], [0.55, 0.55], [0.60, 0.57]], seeds=2)
    v = sorted(float(np.var(d, ddof=1)) for d in diffs)[1]
    rho = sorted(icc(d, unit, 40) for d in diffs)[1]
    assert p["pair_variance"] == pytest.approx(v) and p["icc"] == pytest.approx(rho)
    assert p["seed_sd"] == pytest.approx(pooled_seed_sd([[0.50, 0.52], [0.55, 0.55], [0.60, 0.57]]))
    assert p["seed_sd"] == pytest.approx(math.sqrt((0.02**2 / 2 + 0 + 0.03**2 / 2) / 3))
    assert p["mdd_test_set"] == pytest.approx(z_total() * math.sqrt(v * (1 + 4 * max(rho, 0)) / 200))
    assert p["mdd"] > p["mdd_test_set"]
    assert observed_power([], [], unit, 40, [], 1) == {"available": False, "reason": "no finished reward model"}
    # Two models that never disagree leave no spread of d: independent models like them stand in.
    o = (rng.random(200) < 0.6).astype(float)
    same = observed_power([o - o], [o, o], unit, 40, [], 1)
    assert same["pair_variance"] == pytest.approx(2 * np.var(o, ddof=1)) and same["mdd_test_set"] > 0.05
    assert "never disagreed" in describe_power(same)


def test_power_command_plans_pairs_questions_and_seeds():
    res = CliRunner().invoke(app, ["power", "--accuracy", "60", "--pairs", "410", "--questions", "78",
                                   "--icc", "0.1", "--seeds", "2", "--seed-sd", "1"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "models at 60.0% -/+ d/2 with independent errors" in res.output
    assert "no number (seed noise too large)" in res.output  # 1 and 2 points, with 2 seeds of SD 1
    design = Design(pairs=410, pairs_per_question=410 / 78, icc=0.1, seeds=2, seed_sd=0.01)
    n3 = pairs_needed(0.03, independent_discordance(0.585, 0.615), design)
    assert f"{n3:,}" in res.output and f"{math.ceil(n3 / (410 / 78)):,}" in res.output
    assert f"smallest detectable difference {100 * detectable_difference(design, discordance=0.48):.1f} points" in res.output
    bad = CliRunner().invoke(app, ["power", "--accuracy", "0"])
    assert bad.exit_code == 2 and "--accuracy must be" in bad.output


def test_power_command_says_what_it_cannot_answer():
    """Found in review: 5 pairs got a detectable difference (the sign-flip p never reaches 0.05
    there), and the seeds column answered 1 without a seed spread to go on."""
    res = CliRunner().invoke(app, ["power", "--pairs", "5"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert ("smallest detectable difference not available (5 pairs: the sign-flip test's smallest p-value is "
            "0.0625, so no difference can reach p < 0.05)") in res.output
    res = CliRunner().invoke(app, ["power", "--pairs", "100000", "-d", "2"], env={"COLUMNS": "300"})
    assert res.exit_code == 0 and "give --seed-sd" in res.output and "points" in res.output.splitlines()[-1]
    wide = CliRunner().invoke(app, ["power", "--discordance", "0.2", "-d", "25"])
    assert wide.exit_code == 2 and "25 points is impossible when the models disagree on 20% of pairs" in wide.output


def test_p_values_are_shown_rounded_down():
    """A p just under 0.05 read '0.05' beside a '*' that needs p < 0.05."""
    from rmboost.stats import format_p

    assert [format_p(p) for p in (0.049995, 0.125, 0.05, 0.29, 1.0, 0.000999, 0.0)] == [
        "0.049", "0.12", "0.05", "0.29", "1", "0.00099", "0"]


def test_two_models_must_be_two(tmp_path):
    from rmboost.rm.compare import compare_models

    (tmp_path / "rm").mkdir()
    with pytest.raises(ValueError, match="are the same model"):
        compare_models([tmp_path / "rm", tmp_path / "rm" / ".." / "rm"], tmp_path / "t.jsonl")


def test_eval_rm_says_when_the_interval_alone_would_have_called_it():
    """Four disagreements among 20 pairs: the interval excludes 0, the exact p is 2/16; the
    two-model printout says why the difference is not called detected."""
    from rich.console import Console

    from rmboost.rm.compare import print_comparison

    a = np.array([1.0] * 10 + [0.0] * 10)
    b = a.copy()
    b[10:14] = 1.0
    unit = np.arange(20)
    paired = paired_difference(b, a, unit, 20)
    result = {"test": "t.jsonl", "n": 20,
              "models": [{"model": m, "accuracy": float(x.mean()), "ci95": [0.0, 1.0]} for m, x in (("B", b), ("A", a))],
              "difference": {**paired, "unit": "question", "units": 20, "resamples": 2000, "seed": 0},
              "power": {"available": False, "reason": "not computed here"}}
    console = Console(record=True, width=250)
    print_comparison(result, console)
    text = console.export_text()
    assert paired["ci95"][0] > 0 and not paired["detected"]
    assert "not detected: the interval excludes 0 but p >= 0.05" in text and "p = 0.12 " in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--test", "{test}", "--pairs", "10"], "gives the pairs and pairs per question; drop --pairs, or --test"),
        (["--test", "{test}", "--questions", "5", "--pairs-per-question", "2"], "drop --questions and --pairs-per-question"),
        (["--pairs", "10", "--questions", "5", "--pairs-per-question", "3"], "both set pairs per question: give one"),
        (["--questions", "78"], "--questions sets pairs per question together with --pairs: give --pairs too"),
    ],
)
def test_power_refuses_two_sources_for_the_same_number(tmp_path, args, message):
    """Was: `--test FILE --pairs 10` printed "10 pairs (78 questions)", mixing the two silently."""
    test = write_test_pairs(tmp_path / "test.jsonl")
    res = CliRunner().invoke(app, ["power", "--accuracy", "60", *(a.replace("{test}", str(test)) for a in args)],
                             env={"COLUMNS": "300"})
    assert res.exit_code == 2, res.output
    assert message in res.output and "assumptions" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def write_test_pairs(path):
    """6 pairs, 2 per question."""
    path.write_text("".join(json.dumps({"prompt": f"q{i // 2}", "chosen": "a", "rejected": "b", "group": f"g{i // 2}"})
                            + "\n" for i in range(6)), "utf-8")
    return path


def test_power_takes_pairs_and_questions_from_a_test_file(tmp_path):
    test = write_test_pairs(tmp_path / "test.jsonl")
    res = CliRunner().invoke(app, ["power", "--accuracy", "60", "--test", str(test)], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "2.00 pairs per question" in res.output and "with 6 pairs (3 questions)" in res.output


def test_observed_power_is_not_available_where_nothing_could_be_detected():
    """Found in review: 5 questions gave an MDD although the sign-flip p can never go below 2/32;
    a model right on every pair gave an MDD of 0 points; one pair gave nan."""
    rng = np.random.default_rng(1)
    few = np.repeat(np.arange(5), 100)
    a, b = (rng.random(500) < 0.9).astype(float), (rng.random(500) < 0.5).astype(float)
    assert paired_difference(a, b, few, 5)["p_value"] == pytest.approx(2 / 32)  # the floor: never detected
    p = observed_power([a - b], [a, b], few, 5, [], 1)
    assert not p["available"] and "5 questions" in p["reason"] and "0.0625" in p["reason"]
    a6, b6 = (rng.random(600) < 0.9).astype(float), (rng.random(600) < 0.5).astype(float)
    assert observed_power([a6 - b6], [], np.repeat(np.arange(6), 100), 6, [], 1)["available"]  # floor 1/32
    many = np.arange(200)
    perfect = observed_power([], [np.ones(200)], many, 200, [], 1)
    assert not perfect["available"] and "no spread" in perfect["reason"]
    assert "not available" in describe_power(perfect)
    one = observed_power([], [np.ones(1)], np.arange(1), 1, [], 1)
    assert not one["available"] and "1 test pair" in one["reason"]
    ungrouped = observed_power([], [(rng.random(200) < 0.6).astype(float)], many, 200, [], 1)
    assert ungrouped["unit"] == "pair" and "200 pairs, no question groups" in describe_power(ungrouped)


def test_power_counts_questions_at_their_mean_size(tmp_path):
    """Found in review: with unequal question sizes the size-weighted m (right for the design
    effect) was also used to count questions, under-counting them."""
    rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b", "group": f"g{i}"} for i in range(50)]
    rows += [{"prompt": "big", "chosen": "a", "rejected": f"b{i}", "group": "big"} for i in range(50)]
    test = tmp_path / "uneven.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    res = CliRunner().invoke(app, ["power", "--accuracy", "0.7", "--test", str(test), "--icc", "0.1", "-d", "2"],
                             env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    kish = (50 + 50**2) / 100  # sum(m^2) / sum(m) = 25.5
    design = Design(pairs=100, pairs_per_question=kish, icc=0.1, question_size=100 / 51)
    n = pairs_needed(0.02, independent_discordance(*accuracies_apart(0.7, 0.02)), design)
    assert "1.96 pairs per question (size-weighted 25.50)" in res.output
    assert f"{n:,}" in res.output and f"{math.ceil(n / (100 / 51)):,}" in res.output
    assert f"{math.ceil(n / kish):,}" not in res.output
    bad = CliRunner().invoke(app, ["power", "--icc", "1.5"])
    assert bad.exit_code == 2 and "--icc must be in [-1, 1]" in bad.output
