"""Stage 5: the results table - variants down, settings across, mean accuracy over seeds with a 95% interval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rmboost.runfolder import REAL, TEST_FILE


def summarize_table(cells_done: list[dict[str, Any]], run: Path, test: Path) -> list[dict[str, Any]]:
    """One row per (variant, setting): mean over seeds, per-seed numbers, and a 95% interval.

    The interval resamples test questions (pairs when ungrouped) of the per-pair outcome averaged
    over the seeds, so it reflects the test set's size, not only the seeds' spread.
    """
    import numpy as np

    from rmboost.rm.data import read_pairs
    from rmboost.rm.evaluate import bootstrap_ci, outcomes, resampling_units

    pairs = read_pairs(test, "none")
    unit, n_units, _ = resampling_units(pairs)
    table = []
    keys = list(dict.fromkeys((c["variant"], c["setting"]) for c in cells_done))
    for variant, setting in keys:
        group = [c for c in cells_done if c["variant"] == variant and c["setting"] == setting]
        ok = [c for c in group if c["status"] == "ok"]
        row: dict[str, Any] = {"variant": variant, "setting": setting, "seeds_ok": len(ok),
                               "per_seed": {str(c["seed"]): c["accuracy"] for c in ok}}
        if ok:
            per_pair = []
            for c in ok:
                r = json.loads((run / c["eval_file"]).read_text("utf-8"))["rewards"]
                per_pair.append(outcomes(r["chosen"], r["rejected"]))
            mean_outcome = np.mean(per_pair, axis=0)
            row["mean"] = float(np.mean([c["accuracy"] for c in ok]))
            row["std"] = float(np.std([c["accuracy"] for c in ok], ddof=1)) if len(ok) > 1 else None
            row["ci"] = list(bootstrap_ci(mean_outcome, unit, n_units))
        else:
            row.update(mean=None, std=None, ci=None,
                       status=next((c["status"] for c in group if c["status"] != "pending"), "pending"))
        table.append(row)
    return table


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
    return "\n".join(text)


def heldout_info(test: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """results.json's `test` (pairs, questions) and `baselines` (longer-wins with its interval, coin)."""
    from rmboost.rm.data import read_pairs
    from rmboost.rm.evaluate import bootstrap_ci, longer_wins, resampling_units

    pairs = read_pairs(test, "none")
    unit, n_units, _ = resampling_units(pairs)
    lw = longer_wins(pairs)
    info = {"path": TEST_FILE, "pairs": len(pairs), "groups": len({p.group for p in pairs})}
    baselines = {"longer_wins": {"accuracy": float(lw.mean()), "ci": list(bootstrap_ci(lw, unit, n_units))},
                 "coin": {"accuracy": 0.5}}
    return info, baselines
