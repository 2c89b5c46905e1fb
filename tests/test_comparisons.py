"""An experiment run's paired comparisons, "best" marks and detectable difference (rmboost.comparisons,
rmboost.experiment.results.compare_run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rmboost.comparisons import comparison_matrices, format_comparisons, lookup
from rmboost.data.pairs import atomic_write_jsonl
from rmboost.experiment import compare_run, format_table, summarize_table
from rmboost.rm.evaluate import bootstrap_ci, outcomes
from rmboost.stats import paired_difference

GROUPS = np.repeat(np.arange(30), 4)  # 30 questions x 4 pairs


def make_run(tmp_path: Path, per_cell: dict[tuple[str, str], list[np.ndarray]]) -> tuple[Path, list[dict]]:
    """A run folder with eval.json files whose rewards give the wanted 0/1 outcomes per seed."""
    test = tmp_path / "test.jsonl"
    atomic_write_jsonl(test, [{"id": f"p{i}", "prompt": "x", "chosen": "a", "rejected": "b", "group": f"q{g}"}
                              for i, g in enumerate(GROUPS)])
    cells = []
    for (variant, setting), seeds in per_cell.items():
        for seed, right in enumerate(seeds):
            rel = f"rm/{variant}__{setting.replace('+', '-')}__s{seed}/eval.json"
            (tmp_path / rel).parent.mkdir(parents=True)
            (tmp_path / rel).write_text(json.dumps({"rewards": {"chosen": right.tolist(), "rejected": [0.5] * len(right)}}))
            cells.append({"variant": variant, "setting": setting, "seed": seed, "status": "ok",
                          "accuracy": float(right.mean()), "ci": [0, 1], "eval_file": rel})
    return test, cells


def outcomes_of(rng: np.random.Generator, p: float, flip_from: np.ndarray | None = None, extra: float = 0.0) -> np.ndarray:
    if flip_from is None:
        return (rng.random(len(GROUPS)) < p).astype(float)
    out = flip_from.copy()
    out[(out == 0) & (rng.random(len(GROUPS)) < extra)] = 1.0  # right wherever the base is, and more
    return out


def test_every_variant_is_compared_paired_with_real_and_each_other(tmp_path):
    rng = np.random.default_rng(3)
    real = [outcomes_of(rng, 0.55) for _ in range(2)]
    strong = [outcomes_of(rng, 0, r, 0.5) for r in real]  # right wherever real is, plus half the rest
    close = [outcomes_of(rng, 0.56) for _ in range(2)]  # the top mean only by chance, maybe
    test, cells = make_run(tmp_path, {("real", "real"): real, ("rmboost", "syn"): strong, ("rlcd", "syn"): close})
    out = compare_run(cells, tmp_path, test, ["real", "syn"], ["rmboost", "rlcd"], [0, 1])

    assert [(c["setting"], c["a"], c["b"]) for c in out["comparisons"]] == [
        ("syn", "rmboost", "real"), ("syn", "rlcd", "real"), ("syn", "rmboost", "rlcd")]
    unit = GROUPS
    for c in out["comparisons"]:
        a = np.array(strong if c["a"] == "rmboost" else close)
        b = np.array(real if c["b"] == "real" else close)
        expected = paired_difference(a, b, unit, 30)
        assert c["difference"] == pytest.approx(expected["difference"]) and c["ci95"] == pytest.approx(expected["ci95"])
        assert c["p_value"] == pytest.approx(expected["p_value"]) and c["seeds"] == [2, 2]
        # The mean over seeds of the accuracy difference; the interval draws the cells' questions.
        assert c["difference"] == pytest.approx(a.mean() - b.mean())
        assert c["ci95"] == pytest.approx(list(bootstrap_ci(a.mean(0) - b.mean(0), unit, 30)))
    vs_real = lookup(out["comparisons"], "syn", "rmboost", "real")
    assert vs_real["detected"] and vs_real["difference"] > 0 and vs_real["p_value"] < 0.01
    flipped = lookup(out["comparisons"], "syn", "rlcd", "rmboost")
    assert flipped["difference"] == pytest.approx(-lookup(out["comparisons"], "syn", "rmboost", "rlcd")["difference"])

    assert out["best"] == {"syn": "rmboost"}  # detectably above rlcd (the only other variant)
    p = out["power"]
    assert p["available"] and p["pairs"] == 120 and p["questions"] == 30 and p["seeds"] == 2
    assert p["seed_sd"] is not None and p["mdd"] >= p["mdd_test_set"] > 0

    results = {"settings": ["real", "syn"], "variants": [{"name": "rmboost"}, {"name": "rlcd"}],
               "table": summarize_table(cells, tmp_path, test), **out}
    text = format_table(results)
    assert "vs real-only" in text and "vs rmboost" in text and "best in syn: rmboost" in text
    assert f"+{100 * vs_real['difference']:.1f} [" in text and " *" in text
    assert "smallest difference this run could detect" in text
    mx = comparison_matrices(results)
    assert mx[0]["columns"] == ["real", "rmboost", "rlcd"] and mx[0]["rows"][0]["cells"][1] is None


def test_the_top_mean_is_not_best_without_a_detected_difference(tmp_path):
    """Two variants half a point apart on 120 pairs: the higher mean is not marked best."""
    rng = np.random.default_rng(5)
    base = outcomes_of(rng, 0.55)
    other = base.copy()
    flip = np.flatnonzero(base == 0)[:1]
    other[flip] = 1.0  # one pair better: a 0.8-point higher mean
    test, cells = make_run(tmp_path, {("rmboost", "syn"): [other], ("rlcd", "syn"): [base]})
    out = compare_run(cells, tmp_path, test, ["syn"], ["rmboost", "rlcd"], [0])
    c = lookup(out["comparisons"], "syn", "rmboost", "rlcd")
    assert c["difference"] == pytest.approx(1 / 120) and not c["detected"] and c["p_value"] == 1.0
    assert out["best"] == {"syn": None}
    assert out["power"]["seed_sd"] is None  # one seed: no seed spread to add
    text = format_comparisons({"settings": ["syn"], "variants": [{"name": "rmboost"}, {"name": "rlcd"}], **out})
    assert "best in syn: none" in text and "seed spread unknown" in text
    assert outcomes([1.0], [0.5])[0] == 1.0  # the eval files' rewards encode the outcomes as intended


@pytest.mark.train
@pytest.mark.slow
def test_experiment_run_writes_comparisons_and_power(tmp_path, scripted):
    """A whole (tiny) run through `run_experiment`: a scripted generator, real training (2 steps),
    and results.json / the text table carrying the paired comparison and the detectable difference."""
    import hashlib
    import io

    import yaml
    from conftest import QA_FEEDBACK, run
    from rich.console import Console

    from rmboost.data import qa_feedback
    from rmboost.experiment import run_experiment

    train, test = qa_feedback.split_by_question(qa_feedback.load_human_pairs(QA_FEEDBACK), 0.2, 0)
    groups = {p["group"] for p in train}
    prompts = [r for r in qa_feedback.load_prompts(QA_FEEDBACK) if r["id"] in groups][:4]
    per_question: dict[str, list] = {}
    for p in test:  # 24 pairs from 12 questions: enough questions for the sign-flip test to reach p < 0.05
        per_question.setdefault(p["group"], []).append(p)
    spread = [p for rows in list(per_question.values())[:12] for p in rows[:2]]
    assert len(spread) == 24
    for name, rows in (("prompts", prompts), ("real", train[:8]), ("test", spread)):
        atomic_write_jsonl(tmp_path / f"{name}.jsonl", rows)
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "name": "paired", "task": "qa_feedback", "methods": ["rlcd"], "settings": ["real", "syn"], "seeds": [0, 1],
        "data": {"prompts": str(tmp_path / "prompts.jsonl"), "real_train": str(tmp_path / "real.jsonl"),
                 "test": str(tmp_path / "test.jsonl")},
        "rm": {"prompt_field": "none", "max_length": 48, "max_steps": 2, "batch_size": 4, "device": "cpu"},
        "analysis": {"beta": False, "report": False},
    }))

    def answer(messages, params):  # a distinct response per instruction
        digest = hashlib.sha1(messages[-1]["content"].encode()).hexdigest()[:8]
        return f"<response>Answer {digest}: the passage says so, in {len(messages[-1]['content'])} words.</response>"

    console = Console(file=io.StringIO(), width=200)
    results = run(run_experiment(config, tmp_path / "run", console, backend=scripted(answer)))
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [(c["setting"], c["a"], c["b"]) for c in saved["comparisons"]] == [("syn", "rlcd", "real")]
    c = saved["comparisons"][0]
    table = {(r["variant"], r["setting"]): r["mean"] for r in saved["table"]}
    assert c["difference"] == pytest.approx(table[("rlcd", "syn")] - table[("real", "real")])
    assert c["seeds"] == [2, 2] and c["ci95"][0] <= c["difference"] <= c["ci95"][1]
    assert saved["best"] == {"syn": None}  # a single variant is never "best"
    assert saved["power"]["available"] and saved["power"]["seeds"] == 2 and saved["power"]["pairs"] == 24
    assert saved["power"] == results["power"]
    printed = console.file.getvalue()
    assert "vs real-only" in printed and "smallest difference this run could detect" in printed
