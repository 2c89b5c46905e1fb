"""The run analyses (paper §5.5) against numbers worked out by hand on small inputs."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from test_report import FIXTURE_VARIANTS, build_run_dir

from rmboost.analysis.beta import beta_summary, beta_values
from rmboost.analysis.costs import generation_costs
from rmboost.analysis.diversity import (
    MiniLMEncoder,
    distinct_n,
    diversity_analysis,
    mean_paired_cosine_distance,
    mean_pairwise_cosine_distance,
)
from rmboost.analysis.lengths import LOG2_EDGES, histogram, length_analysis, length_ratios
from rmboost.analysis.report import write_report
from rmboost.analysis.run import analyze_run, load_analysis

# ---------------------------------------------------------------------------------------------
# Lengths


def test_length_ratios_summary_and_histogram():
    pairs = [("a b c d", "a b"), ("a", "a b c d"), ("x  y\n", "p q"), ("one", "   ")]
    ratios, skipped = length_ratios(pairs)
    assert ratios == [2.0, 0.25, 1.0] and skipped == 1
    s = length_analysis(pairs)
    assert s["n"] == 3 and s["skipped_empty_rejected"] == 1
    assert s["median"] == 1.0
    assert s["share_chosen_longer"] == pytest.approx(1 / 3)
    assert s["share_equal"] == pytest.approx(1 / 3)
    assert s["mean_log2"] == pytest.approx((1 - 2 + 0) / 3)
    counts = s["histogram"]["counts"]
    # log2 values 1, -2, 0 fall in the quarter-wide bins starting at 1, -2 and 0: indices 16, 4, 12.
    assert sum(counts) == 3 and counts[16] == counts[4] == counts[12] == 1


def test_histogram_clips_to_the_outer_bins():
    counts = histogram([math.log2(16), math.log2(1 / 16), 3.0, -3.0, 2.99], LOG2_EDGES)
    assert counts[0] == 2 and counts[-1] == 3 and sum(counts) == 5


# ---------------------------------------------------------------------------------------------
# Diversity


def test_distinct_n_counts_within_texts_and_ignores_case_and_punctuation():
    texts = ["The cat sat", "the cat ran."]
    # unigrams the cat sat the cat ran: 4 unique of 6; bigrams (the cat)x2 (cat sat) (cat ran): 3 of 4
    assert distinct_n(texts, 1) == {"n": 1, "unique": 4, "total": 6, "distinct": pytest.approx(4 / 6)}
    assert distinct_n(texts, 2)["distinct"] == pytest.approx(3 / 4)
    assert distinct_n(texts, 3) == {"n": 3, "unique": 2, "total": 2, "distinct": 1.0}
    assert distinct_n(["one two", "three"], 3)["distinct"] is None  # no trigram at all


def test_cosine_spread_with_fixed_vectors():
    # e1, e2 and (2, 2) (normalised to (1, 1)/sqrt 2): distances 1, 1 - 1/sqrt 2, 1 - 1/sqrt 2.
    v = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    expected = (1 + 2 * (1 - 1 / math.sqrt(2))) / 3
    assert mean_pairwise_cosine_distance(v) == pytest.approx(expected)
    assert mean_pairwise_cosine_distance(v[:1]) is None
    assert mean_pairwise_cosine_distance(np.array([[1.0, 0.0], [3.0, 0.0]])) == pytest.approx(0.0)
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[5.0, 0.0], [-1.0, 0.0]])
    assert mean_paired_cosine_distance(a, b) == pytest.approx((0 + 1) / 2)


def test_diversity_analysis_deduplicates_responses_and_uses_the_encoder():
    vectors = {"good answer": [1.0, 0.0], "bad answer": [0.0, 1.0], "other answer": [-1.0, 0.0]}
    seen: list[list[str]] = []

    def encoder(texts):
        seen.append(list(texts))
        return np.array([vectors[t] for t in texts])

    pairs = [("good answer", "bad answer"), ("good answer", "other answer")]
    d = diversity_analysis(pairs, encoder)
    assert seen == [["good answer", "bad answer", "other answer"]]  # each text embedded once
    assert d["pairs"] == 2 and d["responses"] == 3
    assert d["distinct"]["1"]["unique"] == 4 and d["distinct"]["1"]["total"] == 6
    # all pairs of the 3 unit vectors: 1 (good-bad), 2 (good-other), 1 (bad-other)
    assert d["pairwise_cosine_distance"] == pytest.approx(4 / 3)
    assert d["chosen_rejected_cosine_distance"] == pytest.approx((1 + 2) / 2)
    assert diversity_analysis(pairs, None)["pairwise_cosine_distance"] is None
    # Only the first pair embedded: two texts, distance 1 both ways; distinct-n still over all three.
    seen.clear()
    d = diversity_analysis(pairs, encoder, embed_pairs=1)
    assert seen == [["good answer", "bad answer"]] and d["embedded_pairs"] == 1
    assert d["pairwise_cosine_distance"] == pytest.approx(1.0)
    assert d["chosen_rejected_cosine_distance"] == pytest.approx(1.0)
    assert d["distinct"]["1"]["total"] == 6


@pytest.mark.slow
def test_minilm_encoder_real_model():
    enc = MiniLMEncoder(batch_size=2)
    texts = [
        "The first iPhone was released on June 29, 2007.",
        "Apple released its first iPhone in June 2007.",
        "Titan is the largest moon of Saturn.",
        "ok",
        "The first iPhone was released on June 29, 2007.",
    ]
    emb = enc(texts)
    assert emb.shape == (5, 384)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.allclose(emb[0], emb[4], atol=1e-5)
    paraphrase = 1 - float(emb[0] @ emb[1])
    unrelated = 1 - float(emb[0] @ emb[2])
    assert paraphrase < 0.3 < unrelated
    # Padding must not leak into the mean: a text alone and inside a longer batch embed the same.
    alone = enc([texts[3]])[0]
    assert np.allclose(alone, emb[3], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# β


def test_beta_summary_by_hand():
    s = beta_summary([-2.0, -1.0, 0.0, 1.0, 3.0])
    assert s["n"] == 5 and s["median_log_beta"] == 0.0 and s["median_beta"] == 1.0
    assert s["q1_log_beta"] == -1.0 and s["q3_log_beta"] == 1.0 and s["iqr_log_beta"] == 2.0
    assert s["share_within_band"] == pytest.approx(3 / 5)  # |log β| <= 1: -1, 0, 1
    s = beta_summary([0.5, 1.5])
    assert s["median_beta"] == pytest.approx(math.e)
    assert s["q1_log_beta"] == pytest.approx(0.75) and s["q3_log_beta"] == pytest.approx(1.25)  # linear
    assert beta_summary([])["available"] is False


def test_beta_values_fall_back_to_the_two_log_probs():
    rows = [
        {"id": "a", "logp_conditional": -10.0, "logp_unconditional": -14.0, "tokens": 8, "log_beta": 4.0},
        {"id": "b", "logp_conditional": -12.0, "logp_unconditional": -10.0, "tokens": 4},
        {"id": "c", "log_beta": None},
        {"id": "d", "log_beta": float("-inf")},
    ]
    logs, per_token = beta_values(rows)
    assert logs == [4.0, -2.0] and per_token == [0.5, -0.5]


# ---------------------------------------------------------------------------------------------
# Tokens, cost, filter rate


SUMMARY = {
    "pairs_total": 4, "filtered": 1, "filter_rate": 0.2,
    "failures": {"echoes_instruction": 2, "judge_tie": 1},
    "usage": {
        "y1": {"calls": 5, "cache_hits": 1, "tokens_in": 500, "tokens_out": 50, "cached_tokens_in": 100, "cached_tokens_out": 10},
        "y2": {"calls": 4, "cache_hits": 0, "tokens_in": 600, "tokens_out": 40, "cached_tokens_in": 0, "cached_tokens_out": 0},
    },
    "judge_usage": {
        "filter": {"calls": 10, "cache_hits": 0, "tokens_in": 900, "tokens_out": 20, "cached_tokens_in": 0, "cached_tokens_out": 0},
    },
    "cost_usd": {"total": 0.02, "this_run": 0.015},
    "wall_seconds": 12.5,
}


def test_generation_costs_by_hand():
    c = generation_costs(SUMMARY)
    assert c["generator"] == {"tokens_in": 1200, "tokens_out": 100, "paid_tokens_in": 1100, "paid_tokens_out": 90,
                              "calls": 9, "cache_hits": 1}
    assert c["judge"]["tokens_in"] == 900 and c["judge"]["tokens_out"] == 20
    assert c["tokens_total"] == 1200 + 100 + 900 + 20
    assert c["tokens_per_pair"] == pytest.approx(2220 / 4)
    assert c["failures"] == 3 and c["filtered"] == 1 and c["filter_rate"] == 0.2
    assert c["cost_usd"] == 0.02 and c["cost_per_pair_usd"] == pytest.approx(0.005)
    assert c["steps"]["y1"] == {"tokens_in": 600, "tokens_out": 60, "calls": 6}
    assert c["steps"]["judge:filter"]["calls"] == 10
    # Counted files cover every run of a resumed job: 6 kept and 2 removed -> 2 / 8.
    c = generation_costs(SUMMARY, kept=6, filtered_rows=2)
    assert c["pairs"] == 6 and c["filtered"] == 2 and c["filter_rate"] == 0.25
    assert c["tokens_per_pair"] == pytest.approx(2220 / 6)


# ---------------------------------------------------------------------------------------------
# The whole run


def _axis_encoder(texts):
    """A fixed fake encoder: one axis per first word, so the numbers are easy to reason about."""
    first = sorted({t.split()[0] if t.split() else "" for t in texts})
    out = np.zeros((len(texts), len(first)))
    for i, t in enumerate(texts):
        out[i, first.index(t.split()[0] if t.split() else "")] = 1.0
    return out


@pytest.mark.slow
def test_analyze_run_on_a_fixture(tmp_path):
    run = build_run_dir(tmp_path)
    a = analyze_run(run, _axis_encoder, diversity_pairs=3)
    assert a["groups"] == ["real", *FIXTURE_VARIANTS]
    assert a["pairs"] == {"real": 10, **{k: v[2] for k, v in FIXTURE_VARIANTS.items()}}
    # rlcd pairs are (full, wrong) answers; all six of its fixture pairs have the full one longer.
    assert a["lengths"]["rlcd"]["share_chosen_longer"] == 1.0
    # real pairs alternate (full, wrong) and (terse, wrong): chosen is longer in exactly half.
    assert a["lengths"]["real"]["n"] == 10 and a["lengths"]["real"]["share_chosen_longer"] == 0.5
    assert a["diversity"]["sample_pairs"] == 3
    assert all(g["pairs"] == 3 for g in a["diversity"]["groups"].values())
    assert a["diversity"]["groups"]["rmboost"]["pairwise_cosine_distance"] is not None

    b = a["beta"]
    assert b["rmboost"]["available"] and b["rmboost"]["n"] == 8
    # fixture log β for rmboost: (i - 3) * 0.5 for i = 0..7 -> median of -1.5..2 = 0.25
    assert b["rmboost"]["median_log_beta"] == pytest.approx(0.25)
    assert b["rlcd"]["median_log_beta"] == pytest.approx(-0.5)
    assert sum(b["rmboost"]["histogram"]["counts"]) == 8
    assert b["rmboost"]["histogram"]["edges"] == b["rlcd"]["histogram"]["edges"]
    assert not b["rlaif"]["available"] and "Pr(y|x)" in b["rlaif"]["reason"]
    assert not b["rmboost-no-aspect"]["available"] and "no beta.jsonl" in b["rmboost-no-aspect"]["reason"]

    g = a["generation"]
    assert g["rmboost"]["source"] == "pairs.summary.json"
    assert g["rmboost"]["pairs"] == 8 and g["rmboost"]["filtered"] == 2 and g["rmboost"]["filter_rate"] == 0.2
    assert g["rmboost-no-aspect"]["source"] == "results.json" and g["rmboost-no-aspect"]["tokens_total"] == 8530

    assert json.loads((run / "analysis.json").read_text()) == a
    assert {p.name for p in (run / "figures").iterdir()} == {"lengths.png", "beta.png", "diversity.png", "tokens.png", "filter.png"}
    assert load_analysis(run) == a  # read back, not recomputed

    # A pair file written after the analysis makes it stale: recomputed (here without embeddings).
    pairs = run / "gen" / "rlcd" / "pairs.jsonl"
    pairs.write_text("".join(pairs.read_text().splitlines(keepends=True)[:2]))
    later = (run / "analysis.json").stat().st_mtime + 5
    os.utime(pairs, (later, later))
    assert load_analysis(run, _axis_encoder)["pairs"]["rlcd"] == 2


@pytest.mark.slow
def test_analyze_run_tolerates_missing_pieces(tmp_path):
    run = build_run_dir(tmp_path)
    for f in (run / "gen" / "rlcd").iterdir():
        f.unlink()
    (run / "data" / "real_train.jsonl").unlink()
    results = json.loads((run / "results.json").read_text())
    del results["generation"]
    (run / "results.json").write_text(json.dumps(results))
    a = analyze_run(run, embed=False)
    assert "real" not in a["groups"] and a["pairs"]["rlcd"] == 0
    assert a["lengths"]["rlcd"]["n"] == 0 and a["lengths"]["rlcd"]["median"] is None
    assert "rlcd" not in a["diversity"]["groups"] and a["diversity"]["encoder"] is None
    assert a["generation"]["rlcd"] == {"available": False, "reason": "no pairs.summary.json"}
    assert a["generation"]["rmboost-no-aspect"]["available"] is False

    html = write_report(run).read_text()
    assert "not available — no pairs.summary.json" in html
    assert "rlcd 0;" in html  # the pair browser says it has no rlcd pair
