"""West-of-N (Pace et al. 2024): N samples per prompt; the best and the worst by a scorer.

Scorers: the LLM judge rating each response 1-10 (`judge`), or a reward model trained with
`rmboost train-rm` (`rm:PATH`). A pool whose best and worst score the same is dropped.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from rmboost.methods.common import MethodContext, StepFailed, pair_row, sample_tagged
from rmboost.parsing import normalize_for_compare
from rmboost.prompts import first_response_messages


class ResponseScorer(Protocol):
    async def __call__(self, row: dict[str, Any], responses: list[str]) -> tuple[list[float], list[Any]]: ...


def judge_scorer(judge: Any) -> ResponseScorer:
    async def score(row: dict[str, Any], responses: list[str]) -> tuple[list[float], list[Any]]:
        rated = await asyncio.gather(*(judge.rate(row, r, index=i) for i, r in enumerate(responses)))
        return [float(value) for value, _ in rated], [c for _, used in rated for c in used]

    return score


def rm_scorer(scorer: Any, task: Any) -> ResponseScorer:
    """A trained reward model (rmboost.rm.score.RewardScorer) as the scorer; costs no LLM tokens."""

    async def score(row: dict[str, Any], responses: list[str]) -> tuple[list[float], list[Any]]:
        # The prompt as the model was trained on it (rendered task prompt, a field, or none).
        prompt = scorer.prompt_for(row, default=task.render_prompt(row))
        return list(scorer.score([prompt] * len(responses), responses)), []

    return score


async def west_of_n_pair(ctx: MethodContext, row: dict[str, Any], label: str | None = None) -> dict[str, Any]:
    del label
    n = ctx.settings.n
    scorer = ctx.scorer
    assert scorer is not None, "west-of-n needs a scorer"
    messages = first_response_messages(ctx.task, row, ctx.settings.aspect_mode)
    pool, completions = [], []
    # The N samples are independent: ask for them at once (one batch round), then pool them in order.
    samples = await asyncio.gather(
        *(sample_tagged(ctx, messages, row_id=row["id"], step="sample", seed_name=f"sample-{i}") for i in range(n)),
        return_exceptions=True,
    )
    for result in samples:
        if isinstance(result, StepFailed):
            continue  # a pool member that never parsed is simply not in the pool
        if isinstance(result, BaseException):
            raise result
        completions += result.completions
        if all(normalize_for_compare(result.text) != normalize_for_compare(p) for p in pool):
            pool.append(result.text)
    if len(pool) < 2:
        raise StepFailed("sample", "pool_too_small", "", [{"reason": f"{len(pool)} distinct usable samples of {n}"}])
    scores, used = await scorer(row, pool)
    completions += used
    best = max(range(len(pool)), key=lambda i: scores[i])
    worst = min(range(len(pool)), key=lambda i: scores[i])
    if scores[best] == scores[worst]:
        raise StepFailed("score", "all_tied", "", [{"scores": scores}])
    return pair_row(
        ctx, row, method="west-of-n", chosen=pool[best], rejected=pool[worst], y1=pool[best], y2=pool[worst],
        label="worse", completions=completions, pool_size=len(pool), scores=scores,
        chosen_score=scores[best], rejected_score=scores[worst],
    )
