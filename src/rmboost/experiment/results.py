"""Stage 5: the results table - variants down, settings across, mean accuracy over seeds with a 95%
interval - and the paired comparisons between its cells (`rmboost.comparisons`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rmboost.comparisons import compare_cells, format_comparisons
from rmboost.runfolder import REAL, TEST_FILE


def heldout_units(test: Path) -> tuple[Any, int]:
    """Each test pair's resampling unit (its question; the pair when ungrouped) and their number."""
    from rmboost.rm.data import read_pairs
    from rmboost.rm.evaluate import resampling_units

    unit, n_units, _ = resampling_units(read_pairs(test, "none"))
    return unit, n_units


def cell_outcomes(cells: list[dict[str, Any]], run: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(variant, setting) -> {"outcomes": (seeds, pairs) array, "accuracies": per-seed list} of the
    finished cells, from their eval files (per pair: 1 right, 0.5 tie, 0 wrong)."""
    import numpy as np

    from rmboost.rm.evaluate import outcomes

    found: dict[tuple[str, str], dict[str, list[Any]]] = {}
    for c in cells:
        if c.get("status") != "ok" or not c.get("eval_file"):
            continue
        rewards = json.loads((run / c["eval_file"]).read_text("utf-8"))["rewards"]
        entry = found.setdefault((c["variant"], c["setting"]), {"outcomes": [], "accuracies": []})
        entry["outcomes"].append(outcomes(rewards["chosen"], rewards["rejected"]))
        entry["accuracies"].append(c["accuracy"])
    return {k: {"outcomes": np.array(v["outcomes"]), "accuracies": v["accuracies"]} for k, v in found.items()}


def summarize_table(cells_done: list[dict[str, Any]], run: Path, test: Path) -> list[dict[str, Any]]:
    """One row per (variant, setting): mean over seeds, per-seed numbers, and a 95% interval.

    The interval resamples test questions (pairs when ungrouped) of the per-pair outcome averaged
    over the seeds, so it reflects the test set's size, not only the seeds' spread.
    """
    import numpy as np

    from rmboost.rm.evaluate import bootstrap_ci
    from rmboost.stats import seed_mean

    unit, n_units = heldout_units(test)
    found = cell_outcomes(cells_done, run)
    table = []
    keys = list(dict.fromkeys((c["variant"], c["setting"]) for c in cells_done))
    for variant, setting in keys:
        group = [c for c in cells_done if c["variant"] == variant and c["setting"] == setting]
        ok = [c for c in group if c["status"] == "ok"]
        row: dict[str, Any] = {"variant": variant, "setting": setting, "seeds_ok": len(ok),
                               "per_seed": {str(c["seed"]): c["accuracy"] for c in ok}}
        if ok:
            row["mean"] = float(np.mean([c["accuracy"] for c in ok]))
            row["std"] = float(np.std([c["accuracy"] for c in ok], ddof=1)) if len(ok) > 1 else None
            row["ci"] = list(bootstrap_ci(seed_mean(found[(variant, setting)]["outcomes"]), unit, n_units))
        else:
            row.update(mean=None, std=None, ci=None,
                       status=next((c["status"] for c in group if c["status"] != "pending"), "pending"))
        table.append(row)
    return table


def compare_run(
    cells: list[dict[str, Any]], run: Path, test: Path, settings: list[str], variants: list[str], seeds: list[int]
) -> dict[str, Any]:
    """results.json's `comparisons`, `best` and `power` (`rmboost.comparisons.compare_cells`)."""
    unit, n_units = heldout_units(test)
    return compare_cells(cell_outcomes(cells, run), unit, n_units, settings, variants, seeds)


def format_table(results: dict[str, Any]) -> str:
    """Table 2 as text: variants down, settings across, mean accuracy [95% CI] (per-seed)."""
    settings = [s for s in results["settings"] if s != REAL]
    rows = {(r["variant"], r["setting"]): r for r in results["table"]}

    def cell(r: dict[str, Any] | None) -> str:
        if r is None:
            return "-"
        if r.get("mean") is None:
            return r.get("status", "pending")
        seeds = "/".join(f"{v * 100:.1f}" for v in r["per_seed"].values())
        return f"{r['mean'] * 100:.1f} [{r['ci'][0] * 100:.1f}, {r['ci'][1] * 100:.1f}] ({seeds})"

    header = ["variant", *settings] if settings else ["variant", REAL]
    lines = [header]
    if REAL in results["settings"]:
        lines.append(["real only", *([cell(rows.get((REAL, REAL)))] + ["-"] * (len(settings) - 1) if settings else [cell(rows.get((REAL, REAL)))])])
    for v in results["variants"]:
        lines.append([v["name"], *(cell(rows.get((v["name"], s))) for s in settings)])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    base = results.get("baselines", {})
    if lw := base.get("longer_wins"):
        text.append(f"baselines: longer-wins {lw['accuracy'] * 100:.1f} "
                    f"[{lw['ci'][0] * 100:.1f}, {lw['ci'][1] * 100:.1f}], coin 50.0; "
                    f"test: {results['test']['pairs']} pairs, {results['test']['groups']} questions")
    if "comparisons" in results:
        text.append(format_comparisons(results))
    return "\n".join(text)


def heldout_info(test: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """results.json's `test` (pairs, questions) and `baselines` (longer-wins with its interval, coin)."""
    from rmboost.rm.data import read_pairs
    from rmboost.rm.evaluate import bootstrap_ci, longer_wins, resampling_units

    pairs = read_pairs(test, "none")
    unit, n_units, _ = resampling_units(pairs)
    lw = longer_wins(pairs)
    info = {"path": TEST_FILE, "pairs": len(pairs), "groups": n_units}  # pairs count as their own group when ungrouped
    baselines = {"longer_wins": {"accuracy": float(lw.mean()), "ci": list(bootstrap_ci(lw, unit, n_units))},
                 "coin": {"accuracy": 0.5}}
    return info, baselines
