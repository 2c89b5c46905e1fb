"""Paired comparisons between the cells of an experiment run, and how they are shown.

For every setting (syn, real+syn), every variant is compared with the real-only model and with
every other variant on the same test pairs (`rmboost.stats.paired_difference`): the difference in
accuracy (mean over each variant's seeds), its 95% question-bootstrap interval (the cells' own
resampling: same resamples, same seed) and a sign-flip permutation p-value. A difference counts
as detected only when its interval excludes 0 and p < 0.05 (`rmboost.stats`), and a variant is marked best in a setting only
when it is detectably better than every other variant there.

results.json gets `comparisons` (one entry per unordered pair, difference = a - b), `best`
({setting: variant or null}) and `power` (`rmboost.power.observed_power`): `compare_cells` makes
them from the cells' per-pair outcomes (read from a run folder by
`rmboost.experiment.results.compare_run`); the rest of this module shows them in the text table
and the report.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rmboost.power import describe_power, observed_power
from rmboost.runfolder import REAL
from rmboost.stats import format_p, paired_difference, seed_mean

REFERENCE = "rmboost"  # the second column of the text table, when the run has it


def compare_cells(
    found: dict[tuple[str, str], dict[str, Any]],
    unit: np.ndarray,
    n_units: int,
    settings: list[str],
    variants: list[str],
    seeds: list[int],
) -> dict[str, Any]:
    """`comparisons`, `best` and `power` for results.json.

    `found`: (variant, setting) -> {"outcomes": (seeds, pairs) array, "accuracies": per-seed
    list} for the finished cells; `unit`/`n_units`: each test pair's question
    (`rmboost.rm.evaluate.resampling_units`).
    """
    real = found.get((REAL, REAL))
    comparisons: list[dict[str, Any]] = []
    diffs: list[np.ndarray] = []
    best: dict[str, str | None] = {}

    def compare(setting: str, a: str, b: str, b_cell: dict[str, Any]) -> None:
        x, y = found[(a, setting)]["outcomes"], b_cell["outcomes"]
        result = paired_difference(x, y, unit, n_units)
        comparisons.append({"setting": setting, "a": a, "b": b, **result, "seeds": [len(x), len(y)]})
        diffs.append(seed_mean(x) - seed_mean(y))

    for setting in settings:
        if setting == REAL:
            continue
        names = [v for v in variants if (v, setting) in found]
        for v in names:
            if real is not None:
                compare(setting, v, REAL, real)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                compare(setting, a, b, found[(b, setting)])
        best[setting] = best_variant(comparisons, setting, names)
    power = observed_power(
        diffs, [seed_mean(v["outcomes"]) for v in found.values()], unit, n_units,
        [v["accuracies"] for v in found.values()],
        seeds=min((len(v["accuracies"]) for v in found.values()), default=len(seeds)),  # finished, not planned
    )
    return {"comparisons": comparisons, "best": best, "power": power}


def best_variant(comparisons: list[dict[str, Any]], setting: str, names: list[str]) -> str | None:
    """The variant detectably better than every other one in the setting, if there is one."""
    if len(names) < 2:
        return None
    for v in names:
        others = [lookup(comparisons, setting, v, w) for w in names if w != v]
        if all(c is not None and c["detected"] and c["difference"] > 0 for c in others):
            return v
    return None


def lookup(comparisons: list[dict[str, Any]], setting: str, a: str, b: str) -> dict[str, Any] | None:
    """The comparison a - b in a setting, whichever way round it was stored."""
    for c in comparisons:
        if c["setting"] != setting:
            continue
        if c["a"] == a and c["b"] == b:
            return c
        if c["a"] == b and c["b"] == a:
            lo, hi = c["ci95"]
            return {**c, "a": a, "b": b, "difference": -c["difference"], "ci95": [-hi, -lo], "seeds": c["seeds"][::-1]}
    return None


def format_difference(c: dict[str, Any] | None) -> str:
    """'+1.8 [-0.5, +4.1] p=0.12', with a trailing '*' when the difference is detected."""
    if c is None:
        return "-"
    lo, hi = c["ci95"]
    return (f"{100 * c['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] p={format_p(c['p_value'])}"
            + (" *" if c["detected"] else ""))


def format_comparisons(results: dict[str, Any]) -> str:
    """The text block under the results table: vs real-only and vs the reference, per setting."""
    comparisons = results.get("comparisons") or []
    names = [v["name"] for v in results.get("variants") or []]
    reference = REFERENCE if REFERENCE in names else (names[0] if names else None)
    lines = ["paired differences (points, row minus column; 95% CI from the same question bootstrap as the "
             "cells; p: sign-flip permutation by question; * = detected: interval excludes 0 and p < 0.05)"] if comparisons else []
    for setting in results.get("settings") or []:
        if setting == REAL or not any(c["setting"] == setting for c in comparisons):
            continue
        rows = [[setting, "vs real-only", f"vs {reference}"]]
        for v in names:
            if any(v in (c["a"], c["b"]) for c in comparisons if c["setting"] == setting):
                rows.append([v, format_difference(lookup(comparisons, setting, v, REAL)),
                             "" if v == reference else format_difference(lookup(comparisons, setting, v, reference or ""))])
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        best = (results.get("best") or {}).get(setting)
        lines.append(f"best in {setting}: {best or 'none (no variant is detectably better than every other)'}")
    if power := results.get("power"):
        lines.append(describe_power(power))
    return "\n".join(lines)


def comparison_matrices(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per setting: rows and columns = variants (columns start with real-only), cells = row - column."""
    comparisons = results.get("comparisons") or []
    names = [v["name"] for v in results.get("variants") or []]
    out = []
    for setting in results.get("settings") or []:
        here = [c for c in comparisons if c["setting"] == setting]
        if setting == REAL or not here:
            continue
        rows = [v for v in names if any(v in (c["a"], c["b"]) for c in here)]
        columns = ([REAL] if any(c["b"] == REAL for c in here) else []) + rows
        out.append({
            "setting": setting, "columns": columns, "best": (results.get("best") or {}).get(setting),
            "rows": [{"name": a, "cells": [None if a == b else lookup(here, setting, a, b) for b in columns]} for a in rows],
        })
    return out
