"""RLAIF (Bai et al. 2022): two independent samples, labelled by the LLM judge in both orders."""

from __future__ import annotations

from typing import Any

from rmboost.methods.common import MethodContext, StepFailed, differs_from, pair_row, sample_tagged
from rmboost.prompts import first_response_messages


async def rlaif_pair(ctx: MethodContext, row: dict[str, Any], label: str | None = None) -> dict[str, Any]:
    """Sample y1 and y2 from the same instruction with distinct seeds; the judge decides."""
    del label  # the judge decides the label
    assert ctx.judge is not None, "rlaif needs a judge"
    messages = first_response_messages(ctx.task, row, ctx.settings.aspect_mode)
    first = await sample_tagged(ctx, messages, row_id=row["id"], step="y1")
    second = await sample_tagged(ctx, messages, row_id=row["id"], step="y2", validate=differs_from(first.text))
    verdict = await ctx.judge.compare(row, first.text, second.text)
    if verdict.winner is None:
        raise StepFailed("judge", verdict.reason or "judge_tie", "", [verdict.as_record()])
    y1, y2 = first.text, second.text
    chosen, rejected = (y1, y2) if verdict.winner == "a" else (y2, y1)
    return pair_row(
        ctx, row, method="rlaif", chosen=chosen, rejected=rejected, y1=y1, y2=y2,
        label="worse" if verdict.winner == "a" else "better",
        completions=[*first.completions, *second.completions, *verdict.completions],
        judge=verdict.as_record(),
    )
