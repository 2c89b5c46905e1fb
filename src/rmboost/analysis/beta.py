"""The re-weighting factor β of Eq. 12: how far a variant's y2 is from what Pr(y|x) would sample.

log β = log Pr(y2 | x, y1, l, I) - log Pr(y2 | x), summed over y2's tokens. β = 1 means the
conditional generation produced exactly what unconditional sampling would; the paper reads a
median near 1 as "close to the real data" and a wide spread as diversity (Figure 3a).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

BAND = 1.0  # share of pairs with |log β| <= 1, i.e. β within [1/e, e]


def beta_values(rows: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """log β per row (from `log_beta`, else conditional - unconditional) and log β per y2 token."""
    logs: list[float] = []
    per_token: list[float] = []
    for row in rows:
        value = row.get("log_beta")
        if value is None and row.get("logp_conditional") is not None and row.get("logp_unconditional") is not None:
            value = row["logp_conditional"] - row["logp_unconditional"]
        if value is None or not math.isfinite(value):
            continue
        logs.append(float(value))
        if row.get("tokens"):
            per_token.append(float(value) / row["tokens"])
    return logs, per_token


def beta_summary(log_betas: list[float], per_token: list[float] | None = None, band: float = BAND) -> dict[str, Any]:
    """n, median/IQR of log β (numpy's linear percentiles), median β, share within the band."""
    if not log_betas:
        return {"available": False, "reason": "beta.jsonl has no usable rows"}
    x = np.asarray(log_betas, dtype=np.float64)
    q1, med, q3 = (float(v) for v in np.percentile(x, [25, 50, 75]))
    return {
        "available": True,
        "n": len(x),
        "median_log_beta": med,
        "q1_log_beta": q1,
        "q3_log_beta": q3,
        "iqr_log_beta": q3 - q1,
        "median_beta": math.exp(med),
        "min_log_beta": float(x.min()),
        "max_log_beta": float(x.max()),
        "band": band,
        "share_within_band": float(np.mean(np.abs(x) <= band)),
        "median_log_beta_per_token": float(np.median(per_token)) if per_token else None,
    }


def common_edges(groups: list[list[float]], bins: int = 30) -> list[float]:
    """Shared histogram edges for all variants, so their β histograms can be compared."""
    values = [v for g in groups for v in g]
    if not values:
        return []
    lo, hi = min(values), max(values)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return [float(e) for e in np.linspace(lo, hi, bins + 1)]
