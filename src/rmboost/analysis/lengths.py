"""Chosen/rejected length ratios (paper §5.5, Figure 3b).

A ratio above 1 means the preferred response is longer. Histograms are over log2(ratio) with
fixed edges, so every variant's histogram lines up with the real pairs' one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

# log2(ratio) from -3 (chosen 8x shorter) to +3 (8x longer) in quarter steps; values outside are
# counted in the outermost bins.
LOG2_EDGES: list[float] = [i / 4 for i in range(-12, 13)]


def word_count(text: str) -> int:
    """Words as whitespace-separated tokens: simple, tokenizer-independent and checkable by hand."""
    return len(text.split())


def length_ratios(pairs: Iterable[tuple[str, str]]) -> tuple[list[float], int]:
    """words(chosen) / words(rejected) per pair; pairs with an empty rejected are skipped (counted)."""
    ratios: list[float] = []
    skipped = 0
    for chosen, rejected in pairs:
        n_rej = word_count(rejected)
        if n_rej == 0:
            skipped += 1
            continue
        ratios.append(word_count(chosen) / n_rej)
    return ratios, skipped


def histogram(values: Iterable[float], edges: list[float]) -> list[int]:
    """Counts per bin [edges[i], edges[i+1]) (last bin closed); out-of-range values clip to the ends."""
    counts = [0] * (len(edges) - 1)
    for v in values:
        i = 0
        while i < len(counts) - 1 and v >= edges[i + 1]:
            i += 1
        counts[i] += 1
    return counts


def ratio_summary(ratios: list[float], skipped: int = 0) -> dict[str, Any]:
    """Median, share where chosen is longer / equal, and the log2 histogram of the ratios."""
    n = len(ratios)
    logs = [math.log2(r) if r > 0 else LOG2_EDGES[0] for r in ratios]
    return {
        "n": n,
        "skipped_empty_rejected": skipped,
        "median": statistics.median(ratios) if n else None,
        "mean_log2": statistics.fmean(logs) if n else None,
        "share_chosen_longer": sum(r > 1 for r in ratios) / n if n else None,
        "share_equal": sum(r == 1 for r in ratios) / n if n else None,
        "share_chosen_shorter": sum(r < 1 for r in ratios) / n if n else None,
        "histogram": {"log2_edges": LOG2_EDGES, "counts": histogram(logs, LOG2_EDGES)},
    }


def length_analysis(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    ratios, skipped = length_ratios(pairs)
    return ratio_summary(ratios, skipped)
