"""RMBoost (Shen et al. 2024): choose the label first, then rewrite y1 into a better or worse y2.

Per prompt x: y1 is sampled from the first-response instruction (or taken from a column, the
paper's "+SFT-Response" variant); the label l in {better, worse} was fixed before any call; y2 is
sampled from the rewrite instruction conditioned on x, y1, l and the aspects. The pair is
(chosen, rejected) = (y2, y1) if l is "better", else (y1, y2): the label is known by construction.
"""

from __future__ import annotations

import random
from typing import Any

from rmboost.methods.common import (
    MethodContext,
    StepFailed,
    derive_seed,
    differs_from,
    pair_row,
    sample_tagged,
)
from rmboost.parsing import extract_list, normalize_for_compare
from rmboost.prompts import Label, first_response_messages, format_value, rewrite_messages
from rmboost.tasks import Aspect, TaskSpec


def assign_labels(ids: list[str], seed: int) -> dict[str, Label]:
    """Balanced, seeded labels: each consecutive pair of rows gets one 'better' and one 'worse'.

    Any prefix of the job is balanced to within one, so --limit and resuming keep earlier labels.
    """
    labels: dict[str, Label] = {}
    for start in range(0, len(ids), 2):
        first: Label = "better" if derive_seed(seed, "label", start) % 2 == 0 else "worse"
        second: Label = "worse" if first == "better" else "better"
        labels[ids[start]] = first
        if start + 1 < len(ids):
            labels[ids[start + 1]] = second
    return labels


def sample_aspects(task: TaskSpec, row_id: str, seed: int, k: int) -> list[Aspect]:
    k = max(1, min(k, len(task.aspects)))
    return random.Random(derive_seed(seed, row_id, "aspects")).sample(list(task.aspects), k)


def match_aspects(task: TaskSpec, named: list[str]) -> list[str]:
    """Map the aspect names a model wrote back to the task's aspect names (unknown ones dropped)."""
    found: list[str] = []
    for item in named:
        key = normalize_for_compare(item).replace("_", " ")
        for a in task.aspects:
            candidates = {a.name.replace("_", " "), normalize_for_compare(a.title)}
            candidates |= {w.strip() for w in normalize_for_compare(a.title).split(" and ")}
            if any(c and c in key for c in candidates) and a.name not in found:
                found.append(a.name)
    return found


async def rmboost_pair(ctx: MethodContext, row: dict[str, Any], label: Label) -> dict[str, Any]:
    """One RMBoost pair for `row`; raises StepFailed when a step yields no usable response."""
    task, settings, row_id = ctx.task, ctx.settings, row["id"]
    mode = settings.aspect_mode
    y1_from = settings.y1_from
    completions = []

    if y1_from:
        y1 = format_value(row.get(y1_from))
        if not y1:
            raise StepFailed("y1", "missing_field", "", [{"reason": f"field {y1_from!r} is empty"}])
    else:
        first = await sample_tagged(
            ctx, first_response_messages(task, row, mode), row_id=row_id, step="y1"
        )
        y1 = first.text
        completions += first.completions

    targets = sample_aspects(task, row_id, ctx.seed, settings.aspects_k) if mode == "sample" else []
    second = await sample_tagged(
        ctx,
        rewrite_messages(task, row, y1, label, mode, targets),
        row_id=row_id,
        step="y2",
        validate=differs_from(y1),
        stop_at_close=mode != "model-selects",  # the chosen aspects follow the response
    )
    y2 = second.text
    completions += second.completions

    if mode == "sample":
        aspects = [a.name for a in targets]
    elif mode == "model-selects":
        aspects = match_aspects(task, extract_list(second.raw, "aspects"))
    else:
        aspects = []
    chosen, rejected = (y2, y1) if label == "better" else (y1, y2)
    return pair_row(
        ctx,
        row,
        method="rmboost",
        chosen=chosen,
        rejected=rejected,
        y1=y1,
        y2=y2,
        label=label,
        completions=completions,
        aspect_mode=mode,
        aspects=aspects,
        y1_source=f"field:{y1_from}" if y1_from else "model",
    )
