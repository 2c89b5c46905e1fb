"""Tokens and dollars from usage records (`Usage.as_dict()`: step -> counters).

A step's counters keep paid tokens (`tokens_in`/`tokens_out`) and tokens answered from the cache
(`cached_tokens_in`/`cached_tokens_out`) apart. The tokens it took to make the data are both, so
a resumed or re-run job reports the same totals; only the paid ones were spent in this run.
A batch job's tokens are priced at the batch prices: given explicitly, else the online prices
less the batch discount (half, on OpenAI's Batch API).
"""

from __future__ import annotations

from typing import Any, Protocol

Usage = dict[str, dict[str, Any]]  # step name -> its counters


def _count(step: dict[str, Any], key: str) -> int:
    return int(step.get(key) or 0)


def step_totals(step: dict[str, Any]) -> dict[str, int]:
    """One step's tokens (paid + cached) and requests (made + answered from the cache)."""
    return {
        "tokens_in": _count(step, "tokens_in") + _count(step, "cached_tokens_in"),
        "tokens_out": _count(step, "tokens_out") + _count(step, "cached_tokens_out"),
        "calls": _count(step, "calls") + _count(step, "cache_hits"),
    }


def usage_totals(usage: Usage) -> dict[str, int]:
    """in/out tokens (paid + cached), the paid ones alone, calls and cache hits over all steps."""

    def total(key: str) -> int:
        return sum(_count(step, key) for step in usage.values())

    return {
        "tokens_in": total("tokens_in") + total("cached_tokens_in"),
        "tokens_out": total("tokens_out") + total("cached_tokens_out"),
        "paid_tokens_in": total("tokens_in"),
        "paid_tokens_out": total("tokens_out"),
        "calls": total("calls"),
        "cache_hits": total("cache_hits"),
    }


class BatchPricing(Protocol):
    """What pricing needs of rmboost.llm.batch.BatchOptions."""

    enabled: bool
    discount: float
    price_in: float | None
    price_out: float | None


def job_prices(
    price_in: float | None, price_out: float | None, batch: BatchPricing | None = None
) -> tuple[float | None, float | None]:
    """Dollars per million tokens in and out: in batch mode the batch prices, else the online ones."""
    if batch is None or not batch.enabled:
        return price_in, price_out

    def priced(explicit: float | None, online: float | None) -> float | None:
        if explicit is not None:
            return explicit
        return None if online is None else online * (1 - batch.discount)

    return priced(batch.price_in, price_in), priced(batch.price_out, price_out)


def estimate_cost(
    usages: list[Usage], price_in: float | None, price_out: float | None, batch: BatchPricing | None = None
) -> dict[str, float] | None:
    """Dollars for the job's tokens: all of them (`total`) and those paid in this run (`this_run`).

    Prices are the online $ per million tokens (`job_prices` turns them into batch prices when
    `batch` is on); None when no price is known.
    """
    price_in, price_out = job_prices(price_in, price_out, batch)
    if price_in is None and price_out is None:
        return None
    pin, pout = (price_in or 0.0) / 1e6, (price_out or 0.0) / 1e6
    totals = [usage_totals(u) for u in usages]
    paid_in, paid_out = sum(t["paid_tokens_in"] for t in totals), sum(t["paid_tokens_out"] for t in totals)
    cached_in = sum(t["tokens_in"] for t in totals) - paid_in
    cached_out = sum(t["tokens_out"] for t in totals) - paid_out
    paid = paid_in * pin + paid_out * pout
    return {"total": round(paid + cached_in * pin + cached_out * pout, 6), "this_run": round(paid, 6)}


def job_steps(usage: Usage) -> dict[str, dict[str, int]]:
    """A usage record as the tokens it took (paid + cached) and requests, per step: a job's usage."""
    return {step: step_totals(counters) for step, counters in sorted(usage.items())}


def add_steps(*usages: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The sum of job usages (`job_steps` records), step by step."""
    summed: dict[str, dict[str, int]] = {}
    for usage in usages:
        for step, counters in usage.items():
            into = summed.setdefault(step, {"tokens_in": 0, "tokens_out": 0, "calls": 0})
            for key in into:
                into[key] += _count(counters, key)
    return dict(sorted(summed.items()))
