"""RLCD (Yang et al. 2023): a positive and a negative instruction; labelled by construction."""

from __future__ import annotations

from typing import Any

from rmboost.methods.common import MethodContext, pair_row, sample_tagged
from rmboost.parsing import ParseError, normalize_for_compare
from rmboost.prompts import contrast_messages


async def rlcd_pair(ctx: MethodContext, row: dict[str, Any], label: str | None = None) -> dict[str, Any]:
    """chosen from the positive instruction, rejected from the negative one."""
    del label
    good = await sample_tagged(ctx, contrast_messages(ctx.task, row, "positive"), row_id=row["id"], step="y1")

    def differs(text: str) -> None:
        if normalize_for_compare(text) == normalize_for_compare(good.text):
            raise ParseError("same_as_y1", "the negative response repeats the positive one")

    bad = await sample_tagged(
        ctx, contrast_messages(ctx.task, row, "negative"), row_id=row["id"], step="y2", validate=differs
    )
    return pair_row(
        ctx, row, method="rlcd", chosen=good.text, rejected=bad.text, y1=good.text, y2=bad.text,
        label="worse", completions=[*good.completions, *bad.completions],
    )
