"""Every baseline end to end with the real embedded model on real QA-Feedback prompts,
including log-probability judging through the real llama.cpp backend."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import QA_FEEDBACK, read_jsonl, run

from rmboost.data import qa_feedback
from rmboost.filtering import run_filter
from rmboost.generate import GenerateConfig, run_generate
from rmboost.methods.judge import JudgeOptions

pytestmark = [pytest.mark.llm, pytest.mark.slow]  # one to several minutes each on 2 busy cores
LOGPROB_JUDGE = JudgeOptions(mode="logprobs")


def generate(tmp_path: Path, method: str, n_prompts: int = 2, **kw):
    cfg = GenerateConfig(task="qa_feedback", input=str(QA_FEEDBACK), output=tmp_path / f"{method}.jsonl",
                         method=method, limit=n_prompts, max_tokens=48, cache=tmp_path / "cache.sqlite",
                         show_progress=False, **kw)
    summary = run(run_generate(cfg))
    pairs = read_jsonl(cfg.output)
    failures = read_jsonl(Path(summary.failures_file)) if Path(summary.failures_file).exists() else []
    assert len(pairs) + len(failures) == n_prompts
    for f in failures:
        assert f["reason"] and f["attempts"]
    return summary, pairs


def test_rlcd(tmp_path: Path):
    summary, pairs = generate(tmp_path, "rlcd")
    assert pairs, summary.failures
    for p in pairs:
        assert p["method"] == "rlcd" and p["chosen"] == p["y1"] and p["rejected"] == p["y2"]
        assert p["chosen"] != p["rejected"]
    assert set(summary.usage) == {"y1", "y2"}


def test_rlaif_with_logprob_judge_on_llamacpp(tmp_path: Path):
    summary, pairs = generate(tmp_path, "rlaif", judge=LOGPROB_JUDGE)
    assert pairs, summary.failures
    assert summary.judge_usage["judge"]["calls"] == 2 * len(pairs)  # one call per order
    for p in pairs:
        verdict = p["judge"]
        assert 0.0 <= verdict["p_a"] <= 1.0
        for order in verdict["orders"]:
            assert 0.0 <= order["p_first"] <= 1.0  # real token log-probabilities
        winner = p["y1"] if verdict["p_a"] > 0.5 else p["y2"]
        assert p["chosen"] == winner


def test_west_of_n_with_the_judge_scorer(tmp_path: Path):
    summary, pairs = generate(tmp_path, "west-of-n", n=3, judge=LOGPROB_JUDGE)
    # Expected ratings from log-probabilities are continuous: a pool of real samples is not all tied.
    assert pairs, summary.failures
    for p in pairs:
        assert 1.0 <= p["rejected_score"] < p["chosen_score"] <= 10.0
        assert p["chosen_score"] == max(p["scores"])


def test_filter_real_pairs_with_the_real_judge(tmp_path: Path):
    pairs = qa_feedback.load_human_pairs(QA_FEEDBACK)[:3]
    src = tmp_path / "human.jsonl"
    import json

    src.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    summary = run(run_filter(src, tmp_path / "kept.jsonl", "qa_feedback", LOGPROB_JUDGE,
                             cache_path=tmp_path / "cache.sqlite"))
    kept = read_jsonl(tmp_path / "kept.jsonl")
    removed = read_jsonl(tmp_path / "kept.filtered.jsonl")
    assert len(kept) + len(removed) == 3 == summary.kept + summary.removed + summary.failed
    for row in kept:
        assert row["filter"]["winner"] == "a" and row["filter"]["p_a"] > 0.5
    for row in removed:
        assert row["filter"]["winner"] != "a"


@pytest.mark.train
def test_west_of_n_with_a_trained_reward_model(tmp_path: Path):
    """The RM scorer: a checkpoint from train-rm (a few real steps on real pairs) ranks the pool."""
    import json

    from rmboost.rm.score import RewardScorer
    from rmboost.rm.train import TrainRMConfig, train_rm

    human = tmp_path / "human.jsonl"
    human.write_text("".join(json.dumps(p) + "\n" for p in qa_feedback.load_human_pairs(QA_FEEDBACK)[:16]))
    train_rm(TrainRMConfig(train=[str(human)], output=tmp_path / "rm", prompt_field="inputs.question",
                           max_length=64, batch_size=8, max_steps=2, logging_steps=1))
    summary, pairs = generate(tmp_path, "west-of-n", n_prompts=1, n=3, scorer=f"rm:{tmp_path / 'rm'}")
    assert len(pairs) == 1, summary.failures  # RM rewards are continuous: the pool is not all tied
    assert summary.judge_usage == {}  # the RM costs no LLM tokens
    scorer = RewardScorer(tmp_path / "rm")
    for p in pairs:
        question = p["inputs"]["question"]
        assert p["chosen_score"] == pytest.approx(scorer.score([question], [p["chosen"]])[0], abs=1e-4)
        assert p["chosen_score"] == max(p["scores"]) > p["rejected_score"] == min(p["scores"])
