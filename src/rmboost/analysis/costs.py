"""Tokens, cost, failures and filter rate of one generation job, from its pairs.summary.json.

The tokens it took to make the data count paid and cached answers alike (rmboost.llm.accounting),
so a resumed or re-run job reports the same totals. A summary's `job` record (every run of the
job) is used where there is one; older summaries have only the last run's `usage`.
"""

from __future__ import annotations

from typing import Any

from rmboost.llm.accounting import step_totals, usage_totals


def generation_costs(
    summary: dict[str, Any], kept: int | None = None, filtered_rows: int | None = None
) -> dict[str, Any]:
    """One variant's accounting. `kept`/`filtered_rows` are the line counts of pairs.jsonl and
    pairs.filtered.jsonl when known: they cover every run of a resumed job, the summary only the last.
    """
    job = summary.get("job") if isinstance(summary.get("job"), dict) else summary
    usage, judge_usage = job.get("usage") or {}, job.get("judge_usage") or {}
    gen, judge = usage_totals(usage), usage_totals(judge_usage)
    pairs = kept if kept is not None else int(summary.get("pairs_total") or 0)
    filtered = filtered_rows if filtered_rows is not None else int(summary.get("filtered") or 0)
    if filtered_rows is not None and pairs + filtered_rows > 0:
        filter_rate: float | None = filtered_rows / (pairs + filtered_rows)
    else:
        filter_rate = summary.get("filter_rate")
    total = gen["tokens_in"] + gen["tokens_out"] + judge["tokens_in"] + judge["tokens_out"]
    cost = summary.get("cost_usd")
    failures = summary.get("failures") or {}
    return {
        "pairs": pairs,
        "filtered": filtered,
        "filter_rate": filter_rate,
        "failures": sum(int(v) for v in failures.values()),
        "failures_by_reason": dict(failures),
        "generator": gen,
        "judge": judge,
        "steps": {
            **{k: step_totals(v) for k, v in usage.items()},
            **{f"judge:{k}": step_totals(v) for k, v in judge_usage.items()},
        },
        "tokens_total": total,
        "tokens_per_pair": total / pairs if pairs else None,
        "cost_usd": cost.get("total") if isinstance(cost, dict) else cost,
        "cost_per_pair_usd": (cost.get("total") / pairs) if isinstance(cost, dict) and pairs else None,
        "wall_seconds": summary.get("wall_seconds"),
        "labels": summary.get("labels") or {},
    }


def from_results(entry: dict[str, Any]) -> dict[str, Any]:
    """The same shape from results.json's `generation` entry, for a variant without a summary file."""
    gen = {"tokens_in": int(entry.get("tokens_in") or 0), "tokens_out": int(entry.get("tokens_out") or 0)}
    judge = {"tokens_in": int(entry.get("judge_tokens_in") or 0), "tokens_out": int(entry.get("judge_tokens_out") or 0)}
    pairs = int(entry.get("pairs") or 0)
    total = sum(gen.values()) + sum(judge.values())
    cost = entry.get("cost_usd")
    return {
        "pairs": pairs,
        "filtered": int(entry.get("filtered") or 0),
        "filter_rate": entry.get("filter_rate"),
        "failures": int(entry.get("failures") or 0),
        "failures_by_reason": {},
        "generator": gen,
        "judge": judge,
        "steps": {},
        "tokens_total": total,
        "tokens_per_pair": total / pairs if pairs else None,
        "cost_usd": cost,
        "cost_per_pair_usd": cost / pairs if cost is not None and pairs else None,
        "wall_seconds": entry.get("wall_seconds"),
        "labels": {},
    }
