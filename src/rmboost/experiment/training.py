"""Stage 4: one reward model per (variant, setting, seed), trained with train-rm's code and scored on the test pairs.

A cell is recognised by a fingerprint of its settings, seed and the exact bytes of its training
and test files: an identical cell already evaluated is reused, anything else retrains.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rmboost.data.pairs import atomic_write_json
from rmboost.experiment.config import RM_PER_CELL, ConfigError, ExperimentConfig
from rmboost.runfolder import REAL, RunFolder, Variant, count_rows


def fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else "absent"


def rm_config(cfg: ExperimentConfig, specs: list[str], output: Path, seed: int) -> Any:
    """train-rm's config for one cell: the experiment's rm settings over train-rm's defaults."""
    from rmboost.rm.train import TrainRMConfig

    settings = {"show_progress": False, "logging_steps": 10_000, **cfg.rm}
    settings.pop("keep_models", None)
    return TrainRMConfig(train=specs, output=output, seed=seed, **settings)


def check_rm(cfg: ExperimentConfig) -> None:
    """The rm settings as train-rm checks them, before any generation is paid for (`rm.epochs: ...`)."""
    from rmboost import options
    from rmboost.training import check_schedule

    rm = rm_config(cfg, ["pairs.jsonl"], Path("."), 0)
    try:
        options.validate(rm)
        check_schedule(rm)
    except ValueError as exc:
        raise ConfigError(f"rm: {exc}") from None


def rm_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """The effective reward-model settings (defaults included), for results.json and fingerprints."""
    full = asdict(rm_config(cfg, [], Path("."), 0))
    return json.loads(json.dumps({k: v for k, v in full.items() if k not in RM_PER_CELL}, default=str))


def train_specs(cfg: ExperimentConfig, variant: str, setting: str, real: Path, run: Path) -> list[str]:
    syn = RunFolder(run).pairs(Variant(variant))
    if setting == REAL:
        return [str(real)]
    if setting == "syn":
        return [str(syn)]
    if cfg.mixture:
        return [f"{real}:{cfg.mixture['real']}", f"{syn}:{cfg.mixture['syn']}"]
    return [str(real), str(syn)]


def run_cell(
    cfg: ExperimentConfig, variant: str, setting: str, seed: int, paths: dict[str, Path], run: Path
) -> dict[str, Any]:
    """Train and evaluate one reward model unless an identical one is already evaluated."""
    from rmboost.rm.data import parse_train_spec, read_pairs
    from rmboost.rm.evaluate import evaluate_scores
    from rmboost.rm.score import RewardScorer
    from rmboost.rm.train import train_rm

    folder = RunFolder(run).cell_dir(variant, setting, seed)
    specs = train_specs(cfg, variant, setting, paths["real"], run)
    files = [parse_train_spec(s)[0] for s in specs]
    base = {"variant": variant, "setting": setting, "seed": seed}
    counts = {f: count_rows(f) for f in files}
    train_pairs = sum(counts.values())
    if empty := next((f for f, n in counts.items() if n == 0), None):
        return {**base, "status": "no_data", "accuracy": None, "ci": None, "train_pairs": train_pairs,
                "eval_file": None, "error": f"no pairs in {empty.relative_to(run) if empty.is_relative_to(run) else empty}"}
    ident = {"rm": rm_settings(cfg), "specs": [s.replace(str(run), "RUN") for s in specs], "seed": seed,
             "data": [file_digest(f) for f in files], "test": file_digest(paths["test"])}
    stamp = folder / "stage.json"
    eval_file = folder / "eval.json"
    if stamp.exists() and eval_file.exists() and json.loads(stamp.read_text("utf-8")).get("fingerprint") == fingerprint(ident):
        metrics = json.loads(eval_file.read_text("utf-8"))
    else:
        if folder.exists():
            shutil.rmtree(folder)
        tcfg = rm_config(cfg, specs, folder / "model", seed)
        summary = train_rm(tcfg)
        device = None if tcfg.device == "auto" else tcfg.device
        scorer = RewardScorer(folder / "model", device=device, batch_size=32)
        pairs = read_pairs(paths["test"], scorer.prompt_field)
        chosen, rejected = scorer.score_pairs(pairs)
        metrics = evaluate_scores(pairs, chosen, rejected, resamples=2000, seed=0)
        metrics.pop("groups", None)
        metrics["rewards"] = {"chosen": [round(float(c), 5) for c in chosen],
                              "rejected": [round(float(x), 5) for x in rejected]}
        metrics["train"] = {k: summary.get(k) for k in ("pairs", "mixture", "steps", "train_loss", "train_seconds")}
        metrics["train_pairs"] = train_pairs
        del scorer
        if not cfg.rm.get("keep_models", False):
            shutil.rmtree(folder / "model", ignore_errors=True)
        atomic_write_json(eval_file, metrics, indent=1)
        atomic_write_json(stamp, {"fingerprint": fingerprint(ident), "config": ident})
    return {**base, "status": "ok", "accuracy": metrics["accuracy"], "ci": metrics["ci95"],
            "train_pairs": metrics.get("train_pairs", train_pairs), "eval_file": str(eval_file.relative_to(run))}
