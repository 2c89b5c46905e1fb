"""Reward models on real QA-Feedback pairs: training, evaluation, scoring, the CLI.

One tiny MiniLM model is trained once per module (short sequences, a few steps: 2 CPU cores) and
shared by the tests that need a trained model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import read_jsonl
from typer.testing import CliRunner

from rmboost.cli import app
from rmboost.data.qa_feedback import load_human_pairs, split_by_question
from rmboost.rm.backbones import META_FILE
from rmboost.rm.data import (
    Pair,
    PairFormatter,
    mix,
    parse_train_spec,
    read_pairs,
    read_score_rows,
)
from rmboost.rm.evaluate import evaluate_scores, outcomes
from rmboost.rm.score import RewardScorer
from rmboost.rm.train import TrainRMConfig, train_rm
from rmboost.training import device_settings

MAX_LEN = 64


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def bt_loss_and_accuracy(chosen: list[float], rejected: list[float]) -> tuple[float, float]:
    d = np.asarray(chosen) - np.asarray(rejected)
    return float(np.mean(np.logaddexp(0.0, -d))), float(outcomes(chosen, rejected).mean())


@pytest.fixture(scope="module")
def qaf_split() -> tuple[list[dict], list[dict]]:
    from conftest import QA_FEEDBACK

    assert (QA_FEEDBACK / "dev_feedback.json").is_file(), f"QA-Feedback data expected at {QA_FEEDBACK}"
    return split_by_question(load_human_pairs(QA_FEEDBACK), test_fraction=0.2, seed=0)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from rmboost.models import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, qaf_split, minilm_tokenizer) -> dict:
    """A MiniLM reward model trained on 16 real pairs (question + response, 64 tokens)."""
    work = tmp_path_factory.mktemp("rm")
    train_rows, test_rows = qaf_split
    # Pairs whose responses already differ inside the 64-token window, so there is something to learn.
    fmt = PairFormatter(minilm_tokenizer, MAX_LEN)
    usable = [
        r
        for r in train_rows
        if fmt.encode(r["inputs"]["question"], r["chosen"]).ids != fmt.encode(r["inputs"]["question"], r["rejected"]).ids
    ]
    train_file = write_jsonl(work / "train.jsonl", usable[:16])
    val_file = write_jsonl(work / "val.jsonl", test_rows[:12])
    cfg = TrainRMConfig(
        train=[str(train_file)],
        output=work / "model",
        # Validating on the training pairs makes the picked checkpoint the best fit to them; the
        # CLI test below validates on held-out pairs.
        validation=train_file,
        prompt_field="inputs.question",
        max_length=MAX_LEN,
        epochs=6,
        learning_rate=3e-4,
        batch_size=8,
        logging_steps=2,
        seed=0,
        show_progress=False,
    )
    summary = train_rm(cfg)
    return {"cfg": cfg, "summary": summary, "train": train_file, "val": val_file, "work": work}


@pytest.mark.train
@pytest.mark.slow
def test_training_lowers_loss_and_raises_accuracy(trained: dict) -> None:
    """Bradley-Terry loss and accuracy on the training pairs, before vs after training."""
    from transformers import set_seed

    from rmboost.models import minilm_path
    from rmboost.rm.backbones import load_reward_model

    pairs = read_pairs(trained["train"], "inputs.question")
    set_seed(0)  # train_rm seeds the fresh head the same way, so this is the untrained model
    model, tok = load_reward_model(str(minilm_path()))
    before = RewardScorer.from_model(model, tok, PairFormatter(tok, MAX_LEN), device="cpu")
    loss0, acc0 = bt_loss_and_accuracy(*before.score_pairs(pairs))
    after = RewardScorer(trained["cfg"].output, device="cpu")
    loss1, acc1 = bt_loss_and_accuracy(*after.score_pairs(pairs))

    assert loss0 == pytest.approx(math.log(2), abs=0.05)  # a fresh head: rewards near zero
    assert loss1 < loss0 - 0.1, (loss0, loss1)
    assert acc1 > acc0 and acc1 >= 0.75, (acc0, acc1)
    s = trained["summary"]
    assert s["steps"] == 12 and s["pairs"] == 16
    assert s["precision"] == "fp32" and s["gradient_checkpointing"] is False  # CPU settings
    assert len(s["validation_history"]) == 6  # one evaluation per epoch picks the checkpoint


@pytest.mark.train
@pytest.mark.slow
def test_saved_model_round_trip(trained: dict) -> None:
    """The saved folder reloads to the model that was in memory at the end of training."""
    out = trained["cfg"].output
    assert {"config.json", "model.safetensors", "tokenizer.json", META_FILE} <= {p.name for p in out.iterdir()}
    assert not (out / "checkpoints").exists() and not (out / ".rmboost-training").exists()  # a finished run's
    meta = json.loads((out / META_FILE).read_text())
    assert meta["format"] == {"prompt_field": "inputs.question", "max_length": MAX_LEN, "template": "pair"}

    in_memory = trained["summary"]["validation"]  # computed on the trained model before saving
    scorer = RewardScorer(out, device="cpu")
    assert scorer.prompt_field == "inputs.question" and scorer.max_length == MAX_LEN
    pairs = read_pairs(trained["cfg"].validation, scorer.prompt_field)
    reloaded = evaluate_scores(pairs, *scorer.score_pairs(pairs), resamples=1000, seed=0)
    assert reloaded["mean_margin"] == pytest.approx(in_memory["mean_margin"], abs=1e-5)
    assert reloaded["accuracy"] == in_memory["accuracy"]


@pytest.mark.train
@pytest.mark.slow
def test_init_starts_from_a_checkpoint(trained: dict, tmp_path: Path) -> None:
    """--init loads every weight of the checkpoint (the head too): its first loss is already low."""
    s = train_rm(
        TrainRMConfig(
            train=[str(trained["train"])],
            output=tmp_path / "again",
            init=trained["cfg"].output,
            prompt_field="inputs.question",
            max_length=MAX_LEN,
            batch_size=16,
            max_steps=1,
            logging_steps=1,
            show_progress=False,
        )
    )
    assert s["init"] == str(trained["cfg"].output)
    assert s["last_logged"]["loss"] < math.log(2) - 0.1


@pytest.mark.train
@pytest.mark.slow
def test_scoring_is_deterministic(trained: dict) -> None:
    pairs = read_pairs(trained["val"], "inputs.question")
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    a = RewardScorer(trained["cfg"].output, device="cpu", batch_size=8)
    first, second = a.score(prompts, responses), a.score(prompts, responses)
    assert first == second
    again = RewardScorer(trained["cfg"].output, device="cpu", batch_size=3).score(prompts, responses)
    assert np.allclose(first, again, atol=1e-5)  # batching (padding) does not change a reward
    order = list(reversed(range(len(prompts))))
    shuffled = a.score([prompts[i] for i in order], [responses[i] for i in order])
    assert np.allclose([first[i] for i in order], shuffled, atol=1e-5)
    assert len(set(np.round(first, 6))) > 1  # not a constant


@pytest.mark.train
@pytest.mark.slow
def test_eval_rm_matches_hand_computation(trained: dict, tmp_path: Path, qaf_split) -> None:
    """eval-rm's JSON against rewards computed one by one, including an over-length pair."""
    _, test_rows = qaf_split
    rows = [dict(r) for r in test_rows[:4]]
    long_response = " ".join(["the answer depends on many passages"] * 60)  # far past 64 tokens
    rows.append({**rows[0], "id": "too-long", "chosen": long_response, "rejected": rows[0]["rejected"]})
    rows.append({**rows[1], "id": "tie", "rejected": rows[1]["chosen"]})  # identical texts: a tie
    test_file = write_jsonl(tmp_path / "test.jsonl", rows)

    scorer = RewardScorer(trained["cfg"].output, device="cpu")
    hand, longer = [], []
    for r in rows:
        q = r["inputs"]["question"]
        c, j = scorer.score([q], [r["chosen"]])[0], scorer.score([q], [r["rejected"]])[0]
        hand.append(1.0 if c > j else 0.5 if c == j else 0.0)
        lc, lj = len(r["chosen"]), len(r["rejected"])
        longer.append(1.0 if lc > lj else 0.5 if lc == lj else 0.0)
    assert hand[-1] == 0.5  # the tie counts half

    metrics_file = tmp_path / "metrics.json"
    result = CliRunner().invoke(
        app, ["eval-rm", "--model", str(trained["cfg"].output), "--test", str(test_file), "--output", str(metrics_file)]
    )
    assert result.exit_code == 0, result.output
    m = json.loads(metrics_file.read_text())
    assert m["n"] == len(rows)  # the over-length pair is scored, not dropped
    assert m["accuracy"] == pytest.approx(sum(hand) / len(hand))
    assert m["baselines"]["longer_wins"]["accuracy"] == pytest.approx(sum(longer) / len(longer))
    assert m["baselines"]["coin"]["accuracy"] == 0.5
    assert m["ties"] >= 1
    assert m["truncated"]["responses"] >= 1
    assert m["ci95"][0] <= m["accuracy"] <= m["ci95"][1]
    assert m["bootstrap"]["unit"] == "question"  # QA-Feedback pairs share questions: resample questions
    assert set(m["groups"]) == {r["group"] for r in rows}
    assert "reward model" in result.output and "longer response wins" in result.output


def test_formatter_truncates_prompt_from_its_end_and_keeps_response(minilm_tokenizer) -> None:
    fmt = PairFormatter(minilm_tokenizer, 32)
    tok = minilm_tokenizer
    prompt = "question first " + " ".join(f"passage{i}" for i in range(100))
    response = "a short answer"
    enc = fmt.encode(prompt, response)
    assert len(enc.ids) == 32 and enc.prompt_cut and not enc.response_cut
    text = tok.decode(enc.ids)
    assert text.startswith("[CLS] question first") and text.endswith("[SEP] a short answer [SEP]")
    long = fmt.encode("q", " ".join(["word"] * 100))
    assert len(long.ids) == 32 and long.response_cut and long.prompt_cut
    short = fmt.encode("q", "yes")
    assert tok.decode(short.ids) == "[CLS] q [SEP] yes [SEP]" and not short.prompt_cut
    with pytest.raises(ValueError, match="too small"):
        PairFormatter(minilm_tokenizer, 5)


def test_malformed_training_file_names_file_line_and_field(tmp_path: Path, stop_at_training_start) -> None:
    from conftest import TrainingStarted

    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    bad = write_jsonl(tmp_path / "bad.jsonl", [good, good, {"prompt": "q", "chosen": "a"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 3: missing field 'rejected'"):
        train_rm(TrainRMConfig(train=[str(bad)], output=tmp_path / "m", show_progress=False))
    result = CliRunner().invoke(app, ["train-rm", "--train", str(bad), "--output", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "bad.jsonl, line 3: missing field 'rejected'" in result.output
    assert "Traceback" not in result.output
    # The validation file is checked too, and both before the run starts (no torch, no backbone).
    ok = write_jsonl(tmp_path / "ok.jsonl", [good])
    result = CliRunner().invoke(app, ["train-rm", "--train", str(ok), "--validation", str(bad), "-o", str(tmp_path / "m")])
    assert result.exit_code == 2 and "bad.jsonl, line 3: missing field 'rejected'" in result.output
    assert stop_at_training_start == [] and not (tmp_path / "m").exists()
    with pytest.raises(TrainingStarted):
        train_rm(TrainRMConfig(train=[str(ok)], validation=ok, output=tmp_path / "m"))
    assert len(stop_at_training_start) == 1

    no_q = write_jsonl(tmp_path / "noq.jsonl", [{**good, "inputs": {"question": "x"}}, good])
    with pytest.raises(ValueError, match=r"noq\.jsonl, line 2: missing field 'inputs\.question'"):
        read_pairs(no_q, "inputs.question")
    (tmp_path / "broken.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl, line 2: not valid JSON"):
        read_pairs(tmp_path / "broken.jsonl")
    typed = write_jsonl(tmp_path / "typed.jsonl", [{"prompt": "q", "chosen": 3, "rejected": "b"}])
    with pytest.raises(ValueError, match=r"typed\.jsonl, line 1: field 'chosen' must be a string"):
        read_pairs(typed)
    margin = write_jsonl(tmp_path / "margin.jsonl", [{**good, "margin": "big"}])
    with pytest.raises(ValueError, match=r"margin\.jsonl, line 1: field 'margin' must be a number"):
        read_pairs(margin, margin_field="margin")
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        read_pairs(tmp_path / "missing.jsonl")


def test_conversational_rows_read_like_plain_ones(tmp_path: Path) -> None:
    conv = {
        "prompt": [{"role": "user", "content": "Who?"}],
        "chosen": [{"role": "assistant", "content": "Ada."}],
        "rejected": [{"role": "assistant", "content": "Bob."}],
    }
    implicit = {
        "chosen": [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Ada."}],
        "rejected": [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Bob."}],
    }
    f = write_jsonl(tmp_path / "conv.jsonl", [conv, implicit, {"prompt": "Who?", "chosen": "Ada.", "rejected": "Bob."}])
    pairs = read_pairs(f)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("Who?", "Ada.", "Bob.")] * 3
    rows = read_score_rows(write_jsonl(tmp_path / "s.jsonl", [{"prompt": "Who?", "response": "Ada."}, conv]))
    assert rows[0].responses == {"reward": "Ada."}
    assert rows[1].responses == {"reward_chosen": "Ada.", "reward_rejected": "Bob."}


def test_a_nested_prompt_field_is_also_read_at_the_top_level(tmp_path: Path) -> None:
    """Found by a newcomer: `rmboost score` with a model trained on `inputs.question` refused prompt
    rows holding `question` at the top level, which RewardScorer.prompt_for (West-of-N) accepts."""
    f = write_jsonl(tmp_path / "q.jsonl", [{"question": "Who?", "response": "Ada."},
                                          {"inputs": {"question": "Why?"}, "chosen": "A.", "rejected": "B."}])
    rows = read_score_rows(f, "inputs.question")
    assert [r.prompt for r in rows] == ["Who?", "Why?"]
    assert read_pairs(write_jsonl(tmp_path / "p.jsonl", [{"question": "Q", "chosen": "a", "rejected": "b"}]),
                      "inputs.question")[0].prompt == "Q"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Who?", "response": "Ada."}])
    with pytest.raises(ValueError, match=r"line 1: missing field 'inputs.question' \(the prompt field; no 'question' either\)"):
        read_score_rows(bad, "inputs.question")


def test_mixture_ratios_keep_every_row(tmp_path: Path) -> None:
    def pairs(n: int, tag: str) -> list[Pair]:
        return [Pair(prompt="p", chosen=f"{tag}{i}", rejected="r", id=f"{tag}{i}") for i in range(n)]

    real, syn = pairs(100, "real"), pairs(30, "syn")
    m = mix([(Path("real.jsonl"), 1.0, real), (Path("syn.jsonl"), 1.0, syn)], seed=0)
    assert [p.used for p in m.parts] == [100, 100]  # 1:1, the smaller file is repeated, none dropped
    assert {p.id for p in m.pairs} == {p.id for p in real + syn}
    m = mix([(Path("real.jsonl"), 7.0, real), (Path("syn.jsonl"), 3.0, syn)], seed=0)
    assert [p.used for p in m.parts] == [100, 43]  # 30% synthetic
    assert mix([(Path("a"), None, real), (Path("b"), None, syn)]).parts[1].used == 30
    with pytest.raises(ValueError, match="every file"):
        mix([(Path("a"), 1.0, real), (Path("b"), None, syn)])
    assert parse_train_spec("data/real.jsonl:0.5") == (Path("data/real.jsonl"), 0.5)
    assert parse_train_spec("data/real.jsonl") == (Path("data/real.jsonl"), None)
    with pytest.raises(ValueError, match="positive"):
        parse_train_spec("real.jsonl:0")


def test_bootstrap_resamples_groups_and_ties_count_half() -> None:
    pairs = [Pair("p", "long answer", "short", id=str(i), group=f"g{i // 3}") for i in range(9)]
    m = evaluate_scores(pairs, [1, 1, 1, 0, 0, 0, 2, 2, 2], [0, 0, 0, 1, 1, 1, 2, 2, 2], resamples=500, seed=1)
    assert m["accuracy"] == pytest.approx(0.5)  # 3 right, 3 wrong, 3 ties at 0.5
    assert m["ties"] == 3
    assert m["bootstrap"] == {"resamples": 500, "unit": "question", "units": 3, "seed": 1}
    assert m["baselines"]["longer_wins"]["accuracy"] == 1.0
    assert m["groups"]["g2"] == {"n": 3, "accuracy": 0.5, "longer_wins": 1.0}
    assert 0.0 <= m["ci95"][0] < 0.5 < m["ci95"][1] <= 1.0


def test_device_settings_on_cpu() -> None:
    s = device_settings("cpu")
    assert s["use_cpu"] and not s["bf16"] and not s["fp16"] and not s["gradient_checkpointing"]
    with pytest.raises(ValueError, match="device"):
        device_settings("tpu")


@pytest.mark.train
@pytest.mark.slow
def test_cli_data_train_eval_score(tmp_path: Path, trained: dict) -> None:
    from conftest import QA_FEEDBACK

    runner = CliRunner()
    data = tmp_path / "qaf"
    r = runner.invoke(
        app, ["data", "qa-feedback", "--source", str(QA_FEEDBACK), "--out", str(data), "--test-fraction", "0.2", "--val-fraction", "0.1"]
    )
    assert r.exit_code == 0, r.output
    train, val, test = (read_jsonl(data / f"{n}.jsonl") for n in ("train", "val", "test"))
    assert len(train) + len(val) + len(test) == 2098
    assert not {p["group"] for p in train} & {p["group"] for p in test}
    assert not {p["group"] for p in train} & {p["group"] for p in val}

    small = write_jsonl(tmp_path / "small.jsonl", train[:8])
    syn = write_jsonl(tmp_path / "syn.jsonl", [{**row, "id": "syn-" + row["id"]} for row in train[8:12]])
    model = tmp_path / "model"
    r = runner.invoke(
        app,
        ["train-rm", "--train", f"{small}:1", "--train", f"{syn}:1", "--validation", str(trained["val"]),
         "--output", str(model), "--prompt-field", "none", "--max-length", "48", "--max-steps", "2",
         "--eval-steps", "1", "--batch-size", "4", "--no-progress"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "small.jsonl: 8 rows -> 8 (50%)" in r.output and "syn.jsonl: 4 rows -> 8 (50%)" in r.output
    assert (model / "model.safetensors").is_file()
    meta = json.loads((model / META_FILE).read_text())
    assert [h["step"] for h in meta["summary"]["validation_history"]] == [1, 2]
    assert meta["summary"]["best_checkpoint"] is not None
    response_only = RewardScorer(model)
    assert response_only.prompt_field == "none" and response_only.prompt_for({"prompt": "q"}) == ""
    a, b = response_only.score(["one prompt", "another prompt"], ["same answer", "same answer"])
    assert a == b  # a response-only model ignores prompts

    metrics = tmp_path / "m.json"
    few = write_jsonl(tmp_path / "few.jsonl", test[:20])
    r = runner.invoke(app, ["eval-rm", "--model", str(model), "--test", str(few), "--output", str(metrics), "--resamples", "200"])
    assert r.exit_code == 0, r.output
    assert json.loads(metrics.read_text())["n"] == 20

    rows = [{"prompt": "Who wrote Hamlet?", "response": "Shakespeare."}, {"prompt": "Who?", "response": "No idea."}]
    inp = write_jsonl(tmp_path / "responses.jsonl", rows)
    r = runner.invoke(app, ["score", "--model", str(trained["cfg"].output), "--input", str(inp), "--output", str(tmp_path / "scored.jsonl"), "--prompt-field", "prompt"])
    assert r.exit_code == 0, r.output
    scored = read_jsonl(tmp_path / "scored.jsonl")
    assert [s["prompt"] for s in scored] == [r["prompt"] for r in rows]
    assert all(isinstance(s["reward"], float) for s in scored)
    direct = RewardScorer(trained["cfg"].output).score([r["prompt"] for r in rows], [r["response"] for r in rows])
    assert np.allclose([s["reward"] for s in scored], direct, atol=1e-6)

    r = runner.invoke(app, ["score", "--model", str(trained["cfg"].output), "--input", str(trained["val"]), "--output", str(tmp_path / "pairs.parquet")])
    assert r.exit_code == 0, r.output
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "pairs.parquet").to_pylist()
    assert len(table) == 12 and all({"reward_chosen", "reward_rejected"} <= set(t) for t in table)
    # a column that no Parquet type holds: one line naming it, and the earlier file untouched
    clash = write_jsonl(tmp_path / "clash.jsonl", [{**rows[0], "note": 1}, {**rows[1], "note": "two"}])
    before = (tmp_path / "pairs.parquet").read_bytes()
    r = runner.invoke(app, ["score", "--model", str(trained["cfg"].output), "--input", str(clash), "--output", str(tmp_path / "pairs.parquet"),
                                "--prompt-field", "prompt"])
    assert r.exit_code == 2 and "column 'note' holds both" in r.output
    assert (tmp_path / "pairs.parquet").read_bytes() == before and not list(tmp_path.glob("pairs.parquet*.tmp"))

    r = runner.invoke(app, ["score", "--model", str(tmp_path), "--input", str(inp), "--output", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "reward model not found" in r.output
