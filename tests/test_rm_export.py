"""Trained reward models outside rmboost: plain transformers, two models paired, RewardBench files.

Two tiny MiniLM reward models are trained for real (2 steps, 64 tokens) on QA-Feedback pairs:
one reads prompt + response, one the response alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rmboost.cli import app
from rmboost.data.pairs import atomic_write_jsonl
from rmboost.data.qa_feedback import load_human_pairs, split_by_question
from rmboost.rm.train import TrainRMConfig, train_rm

pytestmark = [pytest.mark.train, pytest.mark.slow]
MAX_LEN = 64


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from conftest import QA_FEEDBACK

    work = tmp_path_factory.mktemp("export")
    train, test = split_by_question(load_human_pairs(QA_FEEDBACK), 0.2, 0)
    atomic_write_jsonl(work / "train.jsonl", train[:16])
    atomic_write_jsonl(work / "test.jsonl", test[:40])
    out = {"work": work, "test": work / "test.jsonl"}
    for name, field, seed in (("prompt", "prompt", 0), ("response", "none", 1)):
        cfg = TrainRMConfig(train=[str(work / "train.jsonl")], output=work / name, prompt_field=field,
                            max_length=MAX_LEN, max_steps=2, batch_size=4, learning_rate=1e-4, seed=seed,
                            device="cpu", show_progress=False)
        train_rm(cfg)
        out[name] = work / name
    return out


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_plain_transformers_give_rmboost_scores(models, tmp_path):
    """AutoModelForSequenceClassification + AutoTokenizer (and the text-classification pipeline),
    fed the documented format, reproduce `rmboost score` - prompts long enough to be cut included
    (responses fit the window: a longer one is rmboost-only, see docs/reward-models.md)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    test = [json.loads(line) for line in models["test"].read_text().splitlines()][:6]
    rows = [{"prompt": r["prompt"] if i % 2 else r["inputs"]["question"], "response": r["chosen"][:150]}
            for i, r in enumerate(test)]
    atomic_write_jsonl(tmp_path / "rows.jsonl", rows)
    for name in ("prompt", "response"):
        folder = models[name]
        res = _invoke("score", "--model", str(folder), "--input", str(tmp_path / "rows.jsonl"),
                      "--output", str(tmp_path / f"{name}.jsonl"), "--device", "cpu")
        assert res.exit_code == 0, res.output
        ours = [json.loads(line)["reward"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]

        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        # The documented input: tokenizer(prompt, response), the prompt cut first; "" for a
        # response-only model.
        firsts = [r["prompt"] if name == "prompt" else "" for r in rows]
        with torch.no_grad():
            plain = [model(**tok(p, r["response"], truncation="only_first", max_length=MAX_LEN,
                                 return_tensors="pt")).logits[0, 0].item() for p, r in zip(firsts, rows, strict=True)]
        pipe = pipeline("text-classification", model=str(folder), device="cpu")
        piped = [o["score"] for o in pipe([{"text": p, "text_pair": r["response"]} for p, r in zip(firsts, rows, strict=True)],
                                          truncation="only_first", max_length=MAX_LEN)]
        assert np.allclose(plain, ours, atol=1e-5), (name, plain, ours)
        assert np.allclose(piped, ours, atol=1e-5), (name, piped, ours)
        assert len(set(np.round(ours, 6))) > 1  # the rows really score differently
        if name == "prompt":
            lengths = [len(tok(p, r["response"])["input_ids"]) for p, r in zip(firsts, rows, strict=True)]
            assert max(lengths) > MAX_LEN  # some prompts had to be cut to fit

        # Why the export step matters: BERT's segment ids (tokenizer(prompt, response) marks the
        # response as segment 1) no longer change the reward.
        emb = model.base_model.embeddings.token_type_embeddings.weight
        assert torch.equal(emb[0], emb[1])
        assert model.config.problem_type == "regression" and model.config.id2label == {0: "reward"}


def test_two_models_are_compared_paired(models, tmp_path):
    from rmboost.rm.data import read_pairs
    from rmboost.rm.evaluate import outcomes, resampling_units
    from rmboost.rm.score import RewardScorer
    from rmboost.stats import paired_difference

    out = tmp_path / "cmp.json"
    res = _invoke("eval-rm", "--model", str(models["prompt"]), "--model", str(models["response"]),
                  "--test", str(models["test"]), "--output", str(out), "--device", "cpu")
    assert res.exit_code == 0, res.output
    m = json.loads(out.read_text())
    per_pair = []
    for name in ("prompt", "response"):
        scorer = RewardScorer(models[name], device="cpu")
        per_pair.append(outcomes(*scorer.score_pairs(read_pairs(models["test"], scorer.prompt_field))))
    unit, n_units, _ = resampling_units(read_pairs(models["test"], "none"))
    expected = paired_difference(per_pair[0], per_pair[1], unit, n_units)
    assert m["difference"]["difference"] == pytest.approx(m["models"][0]["accuracy"] - m["models"][1]["accuracy"])
    assert m["difference"]["ci95"] == pytest.approx(expected["ci95"])
    assert m["difference"]["p_value"] == pytest.approx(expected["p_value"])
    assert m["difference"]["units"] == n_units < m["n"] == 40  # questions, not pairs, are resampled
    assert m["power"]["available"] and m["power"]["mdd_test_set"] > 0
    assert "A - B:" in res.output and "smallest difference this comparison could detect" in res.output
    assert ("detected (the interval excludes 0 and p < 0.05)" in res.output) == expected["detected"]

    single = _invoke("eval-rm", "--model", str(models["response"]), "--test", str(models["test"]),
                     "--output", str(tmp_path / "one.json"), "--device", "cpu")
    assert single.exit_code == 0, single.output
    assert "smallest difference a comparison of two such models on this file could detect" in single.output
    p = json.loads((tmp_path / "one.json").read_text())["power"]
    assert p["questions"] == n_units and "independent models" in p["basis"] and p["mdd_test_set"] > 0

    three = _invoke("eval-rm", "--model", str(models["prompt"]), "--model", str(models["prompt"]),
                    "--model", str(models["response"]), "--test", str(models["test"]))
    assert three.exit_code == 2 and "give one --model, or two" in three.output


def test_rewardbench_files_through_the_cli(models, tmp_path):
    from rmboost.rm.rewardbench import sections_v1

    test = [json.loads(line) for line in models["test"].read_text().splitlines()]
    subsets = ["alpacaeval-easy", "mt-bench-hard", "refusals-dangerous", "math-prm", "hep-go", "shp"]
    v1 = [{"id": i, "subset": subsets[i % len(subsets)], "prompt": r["prompt"], "chosen": r["chosen"],
           "rejected": r["rejected"]} for i, r in enumerate(test[:24])]
    atomic_write_jsonl(tmp_path / "rb.jsonl", v1)
    res = _invoke("eval-rm", "--model", str(models["response"]), "--test", str(tmp_path / "rb.jsonl"),
                  "--format", "rewardbench", "--output", str(tmp_path / "rb.json"), "--device", "cpu")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "rb.json").read_text())
    assert set(m["subsets"]) == set(subsets) and all(v["n"] == 4 for v in m["subsets"].values())
    assert m["sections"] == sections_v1({k: v["accuracy"] for k, v in m["subsets"].items()})
    assert "Chat Hard" in res.output and "Prior Sets" in res.output

    v2 = [{"id": f"{i}", "subset": "Focus", "prompt": r["prompt"], "chosen": [r["chosen"]],
           "rejected": [r["rejected"], test[i + 1]["rejected"], test[i + 2]["chosen"]]} for i, r in enumerate(test[:6])]
    atomic_write_jsonl(tmp_path / "rb2.jsonl", v2)
    res = _invoke("eval-rm", "--model", str(models["response"]), "--test", str(tmp_path / "rb2.jsonl"),
                  "--format", "rewardbench2", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "Focus" in res.output and "not in the file: Factuality" in res.output
    bad = _invoke("eval-rm", "--model", str(models["response"]), "--test", str(tmp_path / "rb.jsonl"),
                  "--format", "rewardbench3")
    assert bad.exit_code == 2 and "--format: unknown format 'rewardbench3'" in bad.output
