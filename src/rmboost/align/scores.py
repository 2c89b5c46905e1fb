"""Quality scores for relabelling: from columns of the input, from a reward model, or from the LLM judge.

Every source gives one (chosen, rejected) pair of scores on the goal scale per pair, or None
when the pair could not be scored (it is then removed, with the reason, by the job). Columns are
checked to be finite numbers on the scale; reward-model outputs are mapped onto the scale
(`map_rewards`); the judge rates 1-10 and a response shared by several pairs is rated once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rmboost.align.goals import GoalSpec, format_score
from rmboost.data.inputs import InputError, get_field
from rmboost.data.messages import SourcePair, inputs_row, prompt_text, response_text

RM_MAPPINGS = ("quantile", "linear")
NA_WORDS = {"", "n/a", "na", "none", "null", "nan"}


def read_score(row: dict[str, Any], column: str, where: str, spec: GoalSpec, flag: str) -> float:
    """A score from a column (dotted paths reach into dicts): a finite number on the goal scale."""
    try:
        value = get_field(row, column)
    except KeyError:
        raise InputError(f"{where}: missing score column {column!r} (set {flag})") from None
    number = _number(value)
    if number is None:
        raise InputError(f"{where}: score column {column!r} must be a number, got {value!r}")
    if not spec.low <= number <= spec.high:
        raise InputError(
            f"{where}: score column {column!r} is {format_score(number)}, outside the goal scale {spec.scale} (set --scale)"
        )
    return number


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def fine_grained_mean(row: dict[str, Any], column: str, where: str) -> float | None:
    """Mean of per-aspect ratings (a list, a dict of aspect -> rating, or one number).

    None when any rating is missing ("N/A", null): such a pair is dropped, as one would drop a
    response with an unrated aspect. Anything else that is not a number is an error.
    """
    try:
        value = get_field(row, column)
    except KeyError:
        raise InputError(f"{where}: missing fine-grained column {column!r}") from None
    items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else [value]
    if not items:
        raise InputError(f"{where}: fine-grained column {column!r} is empty")
    numbers = []
    for item in items:
        if item is None or (isinstance(item, str) and item.strip().lower() in NA_WORDS):
            return None
        number = _number(item)
        if number is None:
            raise InputError(f"{where}: fine-grained column {column!r} holds {item!r}, not a number or N/A")
        numbers.append(number)
    return sum(numbers) / len(numbers)


def round_score(value: float, digits: int | None) -> float:
    return float(round(value, digits)) if digits is not None else float(value)


def map_rewards(rewards: Sequence[float], spec: GoalSpec, mapping: str = "quantile") -> list[float]:
    """Reward-model outputs (any real numbers) -> the goal scale.

    `quantile`: a response's rank among all scored responses, spread evenly over [low, high]
    (ties share their mean rank), so the goals use the whole scale whatever the reward's units;
    `linear`: min-max scaling of the rewards onto [low, high].
    """
    if mapping not in RM_MAPPINGS:
        raise ValueError(f"--rm-mapping {mapping!r}: use quantile or linear")
    n = len(rewards)
    if n == 0:
        return []
    span = spec.high - spec.low
    if mapping == "linear":
        lo, hi = min(rewards), max(rewards)
        if hi == lo:
            return [spec.low + span / 2] * n
        return [spec.low + span * (r - lo) / (hi - lo) for r in rewards]
    if n == 1:
        return [spec.low + span / 2]
    order = sorted(range(n), key=lambda i: rewards[i])
    ranks = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and rewards[order[j + 1]] == rewards[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return [spec.low + span * r / (n - 1) for r in ranks]


def rm_scores(
    pairs: Sequence[SourcePair], model: str | Path, spec: GoalSpec, mapping: str = "quantile",
    digits: int | None = 0, batch_size: int = 32,
) -> tuple[list[tuple[float, float]], dict[str, Any]]:
    """Scores from a reward model trained by `rmboost train-rm`, mapped onto the goal scale."""
    from rmboost.rm.score import RewardScorer

    scorer = RewardScorer(model, batch_size=batch_size)
    prompts = [scorer.prompt_for(p.row, default=prompt_text(p.prompt, p.where, "prompt")) for p in pairs]
    texts = [response_text(p.chosen, p.where, "chosen") for p in pairs]
    texts += [response_text(p.rejected, p.where, "rejected") for p in pairs]
    rewards = scorer.score(prompts + prompts, texts)
    # Map over DISTINCT (prompt, response): a response in several pairs counts once in the ranks.
    keys = list(zip(prompts + prompts, texts, strict=True))
    distinct = list(dict.fromkeys(keys))
    value = dict(zip(keys, rewards, strict=True))
    mapped = dict(zip(distinct, map_rewards([value[k] for k in distinct], spec, mapping), strict=True))
    goal = [round_score(mapped[k], digits) for k in keys]
    n = len(pairs)
    info = {"source": f"rm:{model}", "mapping": mapping, "responses_scored": len(distinct),
            "reward_range": [min(rewards), max(rewards)]}
    return list(zip(goal[:n], goal[n:], strict=True)), info


async def judge_scores(
    pairs: Sequence[SourcePair], task_name: str, judge_opts: Any, spec: GoalSpec, *, seed: int = 0,
    cache_path: Path | None = None, concurrency: int = 1, digits: int | None = 0, judge_backend: Any = None,
    progress: Any = None,
) -> tuple[list[tuple[float, float] | None], dict[str, Any]]:
    """Scores from the LLM judge's 1-10 rating of each response (validated; see Judge.rate).

    Each distinct (task inputs, response) is rated once, under an id derived from its content, so
    a response shared by several pairs costs one call and a re-run costs none (the cache).
    A response the judge could not rate leaves its pairs without a score (they are removed).
    """
    from rmboost.llm.cache import RequestCache
    from rmboost.methods.common import StepFailed
    from rmboost.methods.judge import open_judge
    from rmboost.tasks import load_task

    if (spec.low, spec.high) != (1.0, 10.0):
        raise ValueError(f"--scores-from judge rates on 1-10, but the goal scale is {spec.scale}: use --scale 1-10")
    rows = [inputs_row(p.row, p.index, p.where) for p in pairs]
    task = load_task(task_name)
    cache = RequestCache(cache_path) if cache_path else None
    todo: dict[str, tuple[dict[str, Any], str]] = {}
    keys: list[tuple[str, str]] = []
    for pair, row in zip(pairs, rows, strict=True):
        inputs = json.dumps({k: v for k, v in row.items() if k != "id"}, sort_keys=True, ensure_ascii=False)
        pair_keys = []
        for response in (pair.chosen, pair.rejected):
            text = response_text(response, pair.where)
            key = hashlib.sha1(f"{inputs}\x1e{text}".encode()).hexdigest()[:16]
            todo.setdefault(key, ({**row, "id": f"rate-{key}"}, text))
            pair_keys.append(key)
        keys.append((pair_keys[0], pair_keys[1]))
    results: dict[str, float | None] = {}
    failures: Counter[str] = Counter()
    semaphore = asyncio.Semaphore(max(1, concurrency))

    try:
        async with open_judge(judge_opts, task, seed, cache, concurrency, backend=judge_backend) as judge:

            async def one(key: str, row: dict[str, Any], text: str) -> None:
                async with semaphore:
                    try:
                        value, _ = await judge.rate(row, text, index=0, step="score")
                        results[key] = round_score(value, digits)
                    except StepFailed as fail:
                        results[key] = None
                        failures[fail.reason] += 1
                    if progress is not None:
                        progress()

            await asyncio.gather(*(one(k, r, t) for k, (r, t) in todo.items()))
    finally:
        if cache is not None:
            cache.close()
    scores: list[tuple[float, float] | None] = []
    for kc, kr in keys:
        sc, sr = results.get(kc), results.get(kr)
        scores.append(None if sc is None or sr is None else (sc, sr))
    usage = judge.usage()
    info = {"source": "judge", "mode": judge.mode, "responses_scored": len(todo), "judge_failures": dict(failures),
            "usage": usage}
    return scores, info
