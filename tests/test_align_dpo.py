"""`rmboost dpo` and `rmboost sample` with the real SmolLM2-135M policy on real QA-Feedback pairs.

Short sequences and a few steps keep each test well under a minute on 2 CPU cores; the policy
conversion from the embedded GGUF is cached (see test_rm_smollm2.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import read_jsonl
from typer.testing import CliRunner

from rmboost.align.dpo import META_FILE, DPOTrainConfig, train_dpo
from rmboost.align.goals import DEFAULT_GOAL_TEMPLATE, GoalSpec
from rmboost.align.policy import fit_prompt
from rmboost.align.relabel import RelabelConfig, run_relabel
from rmboost.cli import app
from rmboost.training import read_meta


def goal(score: str, high: str = "7") -> str:
    return DEFAULT_GOAL_TEMPLATE.format(score=score, low="1", high=high)


@pytest.fixture(scope="module")
def qaf_pairs(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    from conftest import QA_FEEDBACK

    from rmboost.data.qa_feedback import load_human_pairs

    if not (QA_FEEDBACK / "dev_feedback.json").is_file():
        pytest.fail(f"QA-Feedback data expected at {QA_FEEDBACK}")
    # Pairs whose responses differ in their first words: with short training windows, two
    # responses that open alike are cut to the same tokens and give DPO nothing to learn.
    return [p for p in load_human_pairs(QA_FEEDBACK) if p["chosen"].split()[:8] != p["rejected"].split()[:8]][:6]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from rmboost.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("smollm2"))


@pytest.mark.slow
def test_fit_prompt_keeps_goal_and_question(tokenizer, qaf_pairs: list[dict]) -> None:
    prompt = GoalSpec(variant="user", low=1, high=7).condition([{"role": "user", "content": qaf_pairs[0]["prompt"]}], 7)
    cut, was_cut = fit_prompt(tokenizer, prompt, 80)
    text = tokenizer.apply_chat_template(cut, tokenize=False, add_generation_prompt=True)
    assert was_cut and len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 80
    content = cut[0]["content"]
    assert content.startswith(goal("7") + "\n\nQuestion: " + qaf_pairs[0]["inputs"]["question"])
    assert qaf_pairs[0]["prompt"].startswith(content.split("\n\n", 1)[1])  # the prompt's END was cut
    same, was_cut = fit_prompt(tokenizer, prompt, 4096)
    assert same == prompt and not was_cut
    with pytest.raises(ValueError, match="without its last user turn"):
        fit_prompt(tokenizer, [{"role": "system", "content": "word " * 200}, {"role": "user", "content": "Hi"}], 64)
    # The goal of the user variant is never cut: too small a limit is an error, not a half goal.
    protect = goal("7") + "\n\n"
    cut, _ = fit_prompt(tokenizer, prompt, 80, protect=protect)
    assert cut[0]["content"].startswith(protect + "Question:")
    with pytest.raises(ValueError, match="the goal and the rest"):
        fit_prompt(tokenizer, prompt, 50, protect=protect)


@pytest.mark.train
@pytest.mark.slow
def test_dpo_steps_on_real_pairs_lower_the_loss(tmp_path: Path, qaf_pairs: list[dict]) -> None:
    src = tmp_path / "plain.jsonl"
    src.write_text(json.dumps(qaf_pairs[0]) + "\n")
    s = train_dpo(
        DPOTrainConfig(
            train=src, output=tmp_path / "policy", batch_size=1, max_steps=2, learning_rate=1e-4,
            warmup_ratio=0.0, max_length=64, max_prompt_length=40, logging_steps=1, show_progress=False,
        )
    )
    losses = [h["loss"] for h in s["loss_history"]]
    assert len(losses) == 2 and s["steps"] == 2 and not s["relabelled"] and s["no_signal_rows_about"] == 0
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3)  # the policy starts as its own reference
    assert losses[-1] < losses[0] - 0.05, losses
    assert s["prompts_cut"] == 1 and s["precision"] == "fp32" and not s["gradient_checkpointing"]
    assert read_meta(tmp_path / "policy", META_FILE)["goal"] is None


@pytest.mark.train
@pytest.mark.llm
@pytest.mark.slow
def test_relabelled_policy_samples_at_the_top_goal(tmp_path: Path, qaf_pairs: list[dict]) -> None:
    # One real pair, scored and relabelled (user-turn variant): two rows, the swapped one included.
    pair = {**qaf_pairs[0], "chosen_score": 6, "rejected_score": 2}
    src = tmp_path / "train.jsonl"
    src.write_text(json.dumps(pair) + "\n")
    relabelled = tmp_path / "relabelled.jsonl"
    run_relabel(RelabelConfig(input=src, output=relabelled, spec=GoalSpec(variant="user", low=1, high=7)))
    out = tmp_path / "policy"
    s = train_dpo(
        DPOTrainConfig(
            train=relabelled, output=out, batch_size=2, max_steps=1, max_length=112, max_prompt_length=80,
            show_progress=False,
        )
    )
    assert s["relabelled"] and s["rows"] == 2
    meta = read_meta(out, META_FILE)
    assert meta["goal"] == {"variant": "user", "template": DEFAULT_GOAL_TEMPLATE, "low": 1, "high": 7}
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()

    # The relabelled policy is asked for the top of ITS scale by default, once, in the user turn.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in qaf_pairs[:3]))  # pair rows: prompts deduplicated
    runner = CliRunner()
    common = ["--input", str(prompts), "--max-new-tokens", "6", "--batch-size", "2"]
    r = runner.invoke(app, ["sample", "-m", str(out), "-o", str(tmp_path / "top.jsonl"), *common])
    assert r.exit_code == 0, r.output
    rows = read_jsonl(tmp_path / "top.jsonl")
    assert len(rows) == len({p["prompt"] for p in qaf_pairs[:3]}) >= 1
    for row in rows:
        assert row["goal_score"] == 7
        fed = row["policy_input"]
        assert fed.count("would be rated") == 1
        assert f"<|im_start|>user\n{goal('7')}\n\nQuestion: " in fed and fed.endswith("<|im_start|>assistant\n")
        assert row["response"] and row["prompt"] in {p["prompt"] for p in qaf_pairs}  # the original prompt, for scoring
    r = runner.invoke(app, ["sample", "-m", str(out), "-o", str(tmp_path / "none.jsonl"), "--goal", "none", *common])
    none = read_jsonl(tmp_path / "none.jsonl")[0]
    assert r.exit_code == 0 and none["goal_score"] is None and "would be rated" not in none["policy_input"]
    r = runner.invoke(app, ["sample", "-m", str(out), "-o", str(tmp_path / "x.jsonl"), "--goal", "9", *common])
    assert r.exit_code == 2 and "outside the goal scale 1-7" in r.output


@pytest.mark.llm
@pytest.mark.slow
def test_base_policy_with_a_system_goal(tmp_path: Path, qaf_pairs: list[dict]) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "q", "prompt": qaf_pairs[0]["inputs"]["question"]}) + "\n")
    r = CliRunner().invoke(
        app, ["sample", "-m", "smollm2", "-i", str(prompts), "-o", str(tmp_path / "s.jsonl"), "--goal", "top",
              "--max-new-tokens", "6"],
    )
    assert r.exit_code == 0, r.output
    fed = read_jsonl(tmp_path / "s.jsonl")[0]["policy_input"]
    # The goal replaces the template's default system message; the user turn is the question alone.
    assert fed.startswith("<|im_start|>system\n" + DEFAULT_GOAL_TEMPLATE.format(score="10", low="1", high="10") + "<|im_end|>")
    assert "SmolLM, trained by" not in fed and f"<|im_start|>user\n{qaf_pairs[0]['inputs']['question']}<|im_end|>" in fed


@pytest.mark.train
@pytest.mark.llm
@pytest.mark.slow
def test_lora_trains_an_adapter_that_samples(tmp_path: Path, qaf_pairs: list[dict]) -> None:
    src = tmp_path / "plain.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in qaf_pairs[:2]))
    out = tmp_path / "lora"
    s = train_dpo(
        DPOTrainConfig(
            train=src, output=out, lora=True, lora_r=4, batch_size=2, max_steps=1, learning_rate=1e-3,
            warmup_ratio=0.0, max_length=64, max_prompt_length=40, logging_steps=1, show_progress=False,
        )
    )
    assert s["lora"] and 0 < s["trainable_parameters"] < 5_000_000 and not s["relabelled"]
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    assert read_meta(out, META_FILE)["goal"] is None
    r = CliRunner().invoke(app, ["sample", "-m", str(out), "-i", str(src), "-o", str(tmp_path / "s.jsonl"),
                                 "--max-new-tokens", "4"])
    assert r.exit_code == 0, r.output
    row = read_jsonl(tmp_path / "s.jsonl")[0]
    assert row["goal_score"] is None and "would be rated" not in row["policy_input"]


def test_dpo_input_errors_name_the_problem(tmp_path: Path) -> None:
    runner = CliRunner()
    good = tmp_path / "ok.jsonl"
    good.write_text(json.dumps({"prompt": "Q?", "chosen": "A.", "rejected": "B."}) + "\n")
    r = runner.invoke(app, ["dpo", "--train", str(good), "-o", str(tmp_path / "m"), "--label-smoothing", "0.3"])
    assert r.exit_code == 2 and "--label-smoothing has no effect with --loss sigmoid" in " ".join(r.output.split())
    r = runner.invoke(app, ["dpo", "--train", str(good), "-o", str(tmp_path / "m"), "--max-prompt-length", "500"])
    assert r.exit_code == 2 and "--max-prompt-length 500" in r.output
    assert not (tmp_path / "m").exists()


def test_dpo_checks_its_pair_files_before_loading_the_policy(tmp_path: Path, monkeypatch, stop_at_training_start) -> None:
    from conftest import TrainingStarted

    loads: list[str] = []

    def loader(source: str, log=None):
        loads.append(source)
        raise AssertionError("the policy was loaded before the data was checked")

    monkeypatch.setattr("rmboost.align.dpo.load_policy", loader)
    runner = CliRunner()
    row = {"prompt": "Q?", "chosen": "A.", "rejected": "B."}
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(row) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(row) + "\n" + json.dumps({"prompt": "Q?", "chosen": "A."}) + "\n")
    goal = {**row, "goal_variant": "user", "goal_template": DEFAULT_GOAL_TEMPLATE, "goal_low": 1, "goal_high": 7,
            "goal_score": "high"}
    bad_goal = tmp_path / "goal.jsonl"
    bad_goal.write_text(json.dumps(row) + "\n" + json.dumps(goal) + "\n")
    cases = [
        (["--train", str(bad)], "bad.jsonl, line 2: missing field 'rejected'"),
        (["--train", str(tmp_path / "none.jsonl")], "pair file not found:"),
        (["--train", str(good), "--eval", str(bad_goal)], "goal.jsonl, line 2: malformed goal columns"),
        (["--train", str(good), "--eval", str(tmp_path / "none.jsonl")], "none.jsonl"),
    ]
    for args, message in cases:
        r = runner.invoke(app, ["dpo", *args, "-o", str(tmp_path / "m"), "--max-steps", "1"])
        assert r.exit_code == 2, (args, r.output, r.exception)
        assert message in " ".join(r.output.split()) and len(r.output.strip().splitlines()) == 1
    assert loads == [] and stop_at_training_start == [] and not (tmp_path / "m").exists()
    # Good files pass the checks and the run starts (here: stops where its device state would begin).
    r = runner.invoke(app, ["dpo", "--train", str(good), "--eval", str(good), "-o", str(tmp_path / "m")])
    assert isinstance(r.exception, TrainingStarted) and len(stop_at_training_start) == 1 and loads == []
