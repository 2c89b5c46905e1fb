"""RLCD (Yang et al. 2023): a positive and a negative instruction; labelled by construction."""

from __future__ import annotations

from typing import Any

from rmboost.methods.common import MethodContext, differs_from, pair_row, sample_tagged
from rmboost.prompts import contrast_messages


async def rlcd_pair(ctx: MethodContext, row: dict[str, Any], label: str | None = None) -> dict[str, Any]:
    """chosen from the positive instruction, rejected from the negative one."""
    del label
    good = await sample_tagged(ctx, contrast_messages(ctx.task, row, "positive"), row_id=row["id"], step="y1")
    bad = await sample_tagged(
        ctx, contrast_messages(ctx.task, row, "negative"), row_id=row["id"], step="y2",
        validate=differs_from(good.text),
    )
    return pair_row(
        ctx, row, method="rlcd", chosen=good.text, rejected=bad.text, y1=good.text, y2=bad.text,
        label="worse", completions=[*good.completions, *bad.completions],
    )
