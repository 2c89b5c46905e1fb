"""`rmboost relabel --scores-from judge|rm:PATH` with the real embedded judge and a real trained RM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import read_jsonl
from typer.testing import CliRunner

from rmboost.cli import app


def _pairs(qa_feedback_dir: Path, n: int) -> list[dict]:
    from rmboost.data.qa_feedback import load_human_pairs

    pairs = load_human_pairs(qa_feedback_dir)
    group = pairs[0]["group"]
    return [p for p in pairs if p["group"] == group][:n]  # one question: the pairs share responses


@pytest.mark.llm
@pytest.mark.slow
def test_judge_scores_with_the_embedded_model(tmp_path: Path, qa_feedback_dir: Path) -> None:
    pairs = _pairs(qa_feedback_dir, 2)
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    out = tmp_path / "ra.jsonl"
    args = ["relabel", str(src), "-o", str(out), "--scores-from", "judge", "--variant", "user"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = read_jsonl(out)
    summary = json.loads((tmp_path / "ra.summary.json").read_text())
    distinct = len({p["chosen"] for p in pairs} | {p["rejected"] for p in pairs})
    assert summary["scores"]["responses_scored"] == distinct < 2 * len(pairs)  # a shared response is rated once
    assert summary["scores"]["usage"]["score"]["calls"] == distinct
    assert len(rows) == 2 * len(pairs)
    for w, lo in zip(rows[::2], rows[1::2], strict=True):
        for row in (w, lo):
            assert 1 <= row["goal_score"] <= 10 and float(row["goal_score"]).is_integer()  # logprobs mean, rounded
            assert row["prompt"].startswith(f"Write a response that would be rated {row['goal_score']} for")
        assert (lo["chosen"], lo["rejected"]) == (w["rejected"], w["chosen"])
        assert (w["goal_score"], lo["goal_score"]) == (w["score_chosen"], w["score_rejected"])
    # The same response gets the same score in every pair it is in.
    by_text: dict[str, set] = {}
    for row in rows:
        by_text.setdefault(row["chosen"], set()).add(row["score_chosen"])
    assert all(len(v) == 1 for v in by_text.values())
    # A re-run is answered from the cache: same file, no new call.
    first = out.read_text()
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and out.read_text() == first


@pytest.mark.train
@pytest.mark.slow
def test_rm_scores_are_mapped_onto_the_scale(tmp_path: Path, qa_feedback_dir: Path) -> None:
    from rmboost.rm.train import TrainRMConfig, train_rm

    pairs = _pairs(qa_feedback_dir, 4)
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    model = tmp_path / "rm"
    train_rm(TrainRMConfig(train=[str(src)], output=model, prompt_field="none", max_length=64, batch_size=4,
                           max_steps=1, show_progress=False))
    out = tmp_path / "ra.jsonl"
    r = CliRunner().invoke(app, ["relabel", str(src), "-o", str(out), "--scores-from", f"rm:{model}", "--scale", "1-7"])
    assert r.exit_code == 0, r.output
    rows = read_jsonl(out)
    scores = {}
    for row in rows:
        scores.setdefault(row["chosen"][0]["content"], set()).add(row["score_chosen"])  # system variant: chat rows
    assert all(len(v) == 1 for v in scores.values())
    values = sorted(v.pop() for v in scores.values())
    assert values[0] == 1 and values[-1] == 7  # quantile mapping uses the whole scale
    assert all(float(v).is_integer() for v in values)
    r = CliRunner().invoke(app, ["relabel", str(src), "-o", str(tmp_path / "x.jsonl"), "--scores-from", "rm:/nope"])
    assert r.exit_code == 2 and "reward model not found: /nope" in r.output
