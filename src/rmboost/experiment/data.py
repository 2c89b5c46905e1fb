"""Stage 1: the experiment's data - prompts, real training pairs and held-out test pairs in data/."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from rmboost.data import qa_feedback
from rmboost.data.inputs import read_rows
from rmboost.data.pairs import atomic_write_jsonl
from rmboost.experiment.config import ConfigError, ExperimentConfig
from rmboost.generate import GenerateConfig, load_prompt_rows
from rmboost.runfolder import RunFolder


def prepare_data(cfg: ExperimentConfig, run: Path) -> dict[str, Path]:
    """Write data/prompts.jsonl, real_train.jsonl and test.jsonl; deterministic, so always rewritten.

    With QA-Feedback, pairs are split by question and prompts come from training questions only:
    no test question is ever generated for or trained on.
    """
    d = cfg.data
    folder = RunFolder(run)
    out = folder.data
    out.mkdir(parents=True, exist_ok=True)
    if d.qa_feedback is not None:
        human = qa_feedback.load_human_pairs(d.qa_feedback)
        train, test = qa_feedback.split_by_question(human, d.test_fraction, d.split_seed)
        train_groups = {p["group"] for p in train}
        prompts = [r for r in qa_feedback.load_prompts(d.qa_feedback) if r["id"] in train_groups]
        (out / "NOTICE.md").write_text(
            "Derived from QA-Feedback (Wu et al. 2023; allenai/FineGrainedRLHF), Apache License 2.0.\n"
            f"Split by question: test_fraction={d.test_fraction}, split_seed={d.split_seed}.\n", "utf-8")
    else:
        assert d.prompts is not None and d.test is not None
        spec = GenerateConfig(task=cfg.task, input=d.prompts, output=out / "unused", fields=dict(d.fields))
        prompts = [_public(r) for r in load_prompt_rows(spec)]  # ids assigned, columns mapped
        train = [_public(r) for r in read_rows(d.real_train)] if d.real_train else []
        test = [_public(r) for r in read_rows(d.test)]
    if d.prompts_limit is not None:
        prompts = prompts[: d.prompts_limit]
    if d.real_limit is not None and d.real_limit < len(train):
        keep = set(random.Random(d.split_seed).sample(range(len(train)), d.real_limit))
        train = [p for i, p in enumerate(train) if i in keep]
    if d.test_limit is not None:
        test = test[: d.test_limit]
    if not test:
        raise ConfigError("data: the test split is empty")
    paths = {"prompts": folder.prompts, "real": folder.real_train, "test": folder.test}
    for key, rows in (("prompts", prompts), ("real", train), ("test", test)):
        _write_if_changed(paths[key], rows)
    return paths


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _write_if_changed(path: Path, rows: list[dict[str, Any]]) -> None:
    """Keep the file (and its mtime) when the rows are the same, so nothing downstream looks stale."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not path.exists() or path.read_text("utf-8") != text:
        atomic_write_jsonl(path, rows)
