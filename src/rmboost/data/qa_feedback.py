"""QA-Feedback (Wu et al. 2023; Apache-2.0): prompts, references and human preference pairs.

Reads `dev_feedback.json` (see ../shared/data/qa_feedback/README.md for the format). Each
question has four responses and six human comparisons (1v2, 1v3, 1v4, 2v3, 2v4, 3v4); ties are
dropped. Splits are by question, so no question is ever on both sides of a split.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from rmboost.data.inputs import InputError
from rmboost.prompts import format_value

COMPARISONS = ((1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4))
PROMPT_TEMPLATE = "Question: {question}\n\nPassages:\n{passages}"


def _feedback_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir() or not path.suffix:  # a folder, existing or not
        path = path / "dev_feedback.json"
    if not path.is_file():
        shown = str(path) if path.is_absolute() else f"{path} (from {Path.cwd()})"
        raise InputError(f"QA-Feedback's dev_feedback.json not found: {shown}")
    return path


def question_id(question: str) -> str:
    return "qaf-" + hashlib.sha1(question.strip().encode("utf-8")).hexdigest()[:10]


def format_passages(passages: Any) -> str:
    """[[title, sentence, ...], ...] -> '[1] title: sentence sentence' lines."""
    return format_value(passages)


def _records(path: str | Path) -> list[dict[str, Any]]:
    file = _feedback_file(path)
    try:
        data = json.loads(file.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{file}: not valid JSON ({exc.msg})") from exc
    for i, rec in enumerate(data):
        for key in ("question", "passages", "gold", "preference"):
            if key not in rec:
                raise InputError(f"{file}, item {i}: missing field {key!r}")
    return data


def load_prompts(path: str | Path) -> list[dict[str, Any]]:
    """One row per question: id, question, passages (formatted text), reference (human answer)."""
    return [
        {
            "id": question_id(rec["question"]),
            "question": rec["question"].strip(),
            "passages": format_passages(rec["passages"]),
            "reference": rec["gold"].strip(),
        }
        for rec in _records(path)
    ]


def load_human_pairs(path: str | Path) -> list[dict[str, Any]]:
    """Every non-tie human comparison as a pair row in rmboost's schema (method 'human')."""
    pairs = []
    for rec in _records(path):
        qid = question_id(rec["question"])
        passages = format_passages(rec["passages"])
        prompt = PROMPT_TEMPLATE.format(question=rec["question"].strip(), passages=passages)
        for (a, b), pref in zip(COMPARISONS, rec["preference"], strict=True):
            if pref == 0:
                continue
            win, lose = (a, b) if pref == 1 else (b, a)
            pairs.append(
                {
                    "id": f"{qid}-{a}v{b}",
                    "prompt": prompt,
                    "chosen": rec[f"prediction {win}"].strip(),
                    "rejected": rec[f"prediction {lose}"].strip(),
                    "method": "human",
                    "group": qid,
                    "inputs": {"question": rec["question"].strip(), "passages": passages},
                }
            )
    return pairs


def split_by_question(
    pairs: list[dict[str, Any]], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded (train, test) split that keeps all pairs of one question on the same side."""
    groups = sorted({p["group"] for p in pairs})
    random.Random(seed).shuffle(groups)
    n_test = round(len(groups) * test_fraction)
    test_groups = set(groups[:n_test])
    train = [p for p in pairs if p["group"] not in test_groups]
    test = [p for p in pairs if p["group"] in test_groups]
    return train, test
