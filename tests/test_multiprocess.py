"""`accelerate launch` with two processes on the CPU, against one process with the same flags.

Both shipped configs run: configs/accelerate/multi_gpu.yaml starts its processes through torchrun
and, on a machine without GPUs, they train on the CPU with gloo; deepspeed_zero2.yaml runs
DeepSpeed's engine and ZeRO stage-2 optimizer on DeepSpeed's CPU accelerator (gloo as well). So the
same files and launcher path as on a GPU node are exercised. `--batch-size` is the global batch, so
every run sees the same batches in the same order; TRL disables dropout, so they should train the
same model up to the order of floating-point additions in the reductions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rmboost.data.pairs import atomic_write_jsonl
from rmboost.data.qa_feedback import load_human_pairs, split_by_question

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
ACCELERATE = Path(sys.executable).with_name("accelerate")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    from conftest import QA_FEEDBACK

    root = tmp_path_factory.mktemp("mp")
    train, test = split_by_question(load_human_pairs(QA_FEEDBACK), 0.2, 0)
    paths = {"train": root / "train.jsonl", "val": root / "val.jsonl", "test": root / "test.jsonl"}
    atomic_write_jsonl(paths["train"], train[:12])
    atomic_write_jsonl(paths["val"], train[100:108])
    atomic_write_jsonl(paths["test"], test[:16])
    return paths


def _env() -> dict[str, str]:
    src = str(ROOT / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_one(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rmboost.cli", *args], capture_output=True, text=True,
                          timeout=900, env=_env())


def run_two(args: list[str], port: int, config: str = "multi_gpu.yaml") -> subprocess.CompletedProcess[str]:
    cmd = [str(ACCELERATE), "launch", "--config_file", str(CONFIGS / config), "--num_processes", "2",
           "--main_process_port", str(port), "-m", "rmboost.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=_env())


def _meta(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text("utf-8"))["summary"]


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import ClusterConfig

    for name, kind in (("multi_gpu.yaml", "MULTI_GPU"), ("deepspeed_zero2.yaml", "DEEPSPEED")):
        cfg = ClusterConfig.from_yaml_file(str(CONFIGS / name))
        assert str(cfg.distributed_type).endswith(kind) and cfg.num_machines == 1
        raw = yaml.safe_load((CONFIGS / name).read_text())
        assert raw["mixed_precision"] == "no"  # rmboost's --bf16 decides; see the comments in the files
    ds = yaml.safe_load((CONFIGS / "deepspeed_zero2.yaml").read_text())["deepspeed_config"]
    # Batch, accumulation and clipping are left "auto" for the Trainer to fill from rmboost's options.
    assert ds["zero_stage"] == 2 and not {"gradient_accumulation_steps", "gradient_clipping"} & set(ds)


def _rm_args(data: dict[str, Path]) -> list[str]:
    return ["train-rm", "--train", str(data["train"]), "--validation", str(data["val"]), "--prompt-field", "none",
            "--max-length", "48", "--epochs", "1", "--batch-size", "4", "--logging-steps", "1", "--device", "cpu",
            "--no-progress", "--seed", "0"]


def _trained_once(args: list[str], folder: Path) -> Path:
    """The one-process model both multi-process runs are compared with, trained into `folder`/one."""
    out = folder / "one"
    one = run_one([*args, "--output", str(out)])
    assert one.returncode == 0, one.stderr[-3000:]
    # stdout holds the result line alone: DeepSpeed's "Setting accelerator to CPU" warning is kept out of it
    assert one.stdout.strip().endswith(f"saved to {out}") and len(one.stdout.strip().splitlines()) == 1, one.stdout
    return out


@pytest.fixture(scope="module")
def rm_one(data, tmp_path_factory) -> Path:
    return _trained_once(_rm_args(data), tmp_path_factory.mktemp("rm"))


@pytest.mark.train
@pytest.mark.slow
def test_train_rm_on_two_processes_matches_one(tmp_path, data, rm_one):
    two = run_two([*_rm_args(data), "--output", str(tmp_path / "two")], port=29531)
    assert two.returncode == 0, two.stderr[-3000:]
    _same_model(rm_one, tmp_path / "two", two, data)
    assert _meta(tmp_path / "two", "rmboost_rm.json")["deepspeed_zero_stage"] is None


@pytest.mark.train
@pytest.mark.slow
def test_train_rm_under_deepspeed_zero2_matches_one(tmp_path, data, rm_one):
    """The shipped ZeRO-2 config, run for real: DeepSpeed's engine and its stage-2 optimizer on two
    CPU processes (DeepSpeed's CPU accelerator talks over gloo). Under DeepSpeed the Trainer reloads
    the best checkpoint through the engine, which needs full checkpoints (not weights only)."""
    two = run_two([*_rm_args(data), "--output", str(tmp_path / "ds")], port=29533, config="deepspeed_zero2.yaml")
    assert two.returncode == 0, two.stderr[-3000:]
    _same_model(rm_one, tmp_path / "ds", two, data)
    assert _meta(tmp_path / "ds", "rmboost_rm.json")["deepspeed_zero_stage"] == 2


def _same_model(one: Path, two: Path, run: subprocess.CompletedProcess[str], data: dict[str, Path]) -> None:
    """A two-process run trained what the one-process run trained, and wrote it once."""
    s1, s2 = _meta(one, "rmboost_rm.json"), _meta(two, "rmboost_rm.json")
    assert (s1["processes"], s2["processes"]) == (1, 2)
    # The same global batch (4 pairs = 4 x 1 process = 2 x 2 processes) and the same optimizer steps.
    assert s1["per_device_batch"] * s1["processes"] == s2["per_device_batch"] * s2["processes"] == 4
    assert s1["steps"] == s2["steps"] == 3
    # Metrics are gathered over both processes: each half-batch alone would log other numbers.
    assert s2["train_loss"] == pytest.approx(s1["train_loss"], abs=1e-4)
    for key in ("loss", "accuracy", "margin"):
        assert s2["last_logged"][key] == pytest.approx(s1["last_logged"][key], abs=1e-4)
    assert s2["validation"]["accuracy"] == s1["validation"]["accuracy"]  # on all 8 validation pairs
    assert s2["validation"]["n"] == 8
    # One model written once: the same files as the one-process run, no per-process leftovers.
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert "checkpoints" not in {p.name for p in two.iterdir()}
    # One summary printed, not one per process.
    assert run.stdout.count("reward model saved to") == 1 and run.stderr.count("rmboost train-rm:") == 1

    from rmboost.rm.data import read_pairs
    from rmboost.rm.score import RewardScorer

    pairs = read_pairs(data["test"], "none")
    r1 = np.array(RewardScorer(one, device="cpu").score_pairs(pairs))
    r2 = np.array(RewardScorer(two, device="cpu").score_pairs(pairs))
    assert np.abs(r1 - r2).max() < 1e-3
    assert np.array_equal(r1[0] > r1[1], r2[0] > r2[1])  # the same test accuracy


def _dpo_args(data: dict[str, Path]) -> list[str]:
    return ["dpo", "--train", str(data["train"]), "--max-length", "64", "--max-prompt-length", "32",
            "--max-steps", "2", "--batch-size", "4", "--lr", "1e-4", "--logging-steps", "1", "--device", "cpu",
            "--no-progress", "--seed", "0"]


@pytest.fixture(scope="module")
def dpo_one(data, tmp_path_factory) -> Path:
    return _trained_once(_dpo_args(data), tmp_path_factory.mktemp("dpo"))


@pytest.mark.train
@pytest.mark.llm  # SmolLM2-135M as a transformers policy, as in test_align_dpo
@pytest.mark.slow
@pytest.mark.parametrize("config", ["multi_gpu.yaml", "deepspeed_zero2.yaml"])
def test_dpo_on_two_processes_matches_one(tmp_path, data, dpo_one, config):
    from safetensors.numpy import load_file

    from rmboost.models import resolve_model

    port = 29532 if config == "multi_gpu.yaml" else 29534
    two = run_two([*_dpo_args(data), "--output", str(tmp_path / "two")], port=port, config=config)
    assert two.returncode == 0, two.stderr[-3000:]

    s1, s2 = _meta(dpo_one, "rmboost_dpo.json"), _meta(tmp_path / "two", "rmboost_dpo.json")
    assert (s1["processes"], s2["processes"]) == (1, 2)
    assert s2["deepspeed_zero_stage"] == (2 if config == "deepspeed_zero2.yaml" else None)
    assert s1["per_device_batch"] * s1["processes"] == s2["per_device_batch"] * s2["processes"] == 4
    assert s1["steps"] == s2["steps"] == 2
    for h1, h2 in zip(s1["loss_history"], s2["loss_history"], strict=True):
        assert h2["loss"] == pytest.approx(h1["loss"], abs=1e-4)
        assert h2["reward_accuracy"] == pytest.approx(h1["reward_accuracy"], abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in dpo_one.iterdir())
    assert two.stdout.count("policy saved to") == 1

    # Both runs moved the weights the same way (the update, not just the near-identical weights).
    base = load_file(str(Path(resolve_model("smollm2")) / "model.safetensors"))
    w1 = load_file(str(dpo_one / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    d1, d2 = w1[name] - base[name], w2[name] - base[name]
    assert np.abs(d1).max() > 1e-6
    assert np.abs(d2 - d1).max() < 1e-2 * np.abs(d1).max()
