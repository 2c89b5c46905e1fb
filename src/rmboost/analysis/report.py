"""`rmboost report RUN_DIR`: one self-contained HTML page for an experiment run.

Everything is inline (CSS, JS, figures as base64 PNG, pairs as JSON), so the file can be mailed
or archived and opens offline. Pair texts are untrusted model output: Jinja2 autoescapes the
page, the embedded JSON has `<`, `>` and `&` escaped, and the browser script only ever sets
`textContent`.
"""

from __future__ import annotations

import base64
import difflib
import json
import re
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from rmboost import __version__
from rmboost.analysis.run import Run, load_analysis, load_run, text_of
from rmboost.comparisons import comparison_matrices, lookup
from rmboost.power import describe_power
from rmboost.runfolder import REAL
from rmboost.stats import format_p

MAX_PAIRS = 300
DASH = "\u2013"  # what a cell without a number shows
_env = jinja2.Environment(
    loader=jinja2.PackageLoader("rmboost", "analysis/templates"),
    autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.ChainableUndefined,  # a missing optional field renders as nothing
)
_env.filters["p"] = format_p


# ---------------------------------------------------------------------------------------------
# Results table


def pct(x: float | None, digits: int = 1) -> str:
    return DASH if x is None or isinstance(x, jinja2.Undefined) else f"{100 * x:.{digits}f}"


def _cell(results: dict[str, Any], variant: str, setting: str) -> dict[str, Any]:
    """One table cell: mean over seeds with its CI, or why there is no number."""
    cells = [c for c in results.get("cells") or [] if c.get("variant") == variant and c.get("setting") == setting]
    entry = next((t for t in results.get("table") or []
                  if t.get("variant") == variant and t.get("setting") == setting), None)
    statuses = [c.get("status") for c in cells]
    errors = [f"seed {c.get('seed')}: {c.get('error') or 'failed'}" for c in cells if c.get("status") == "failed"]
    per_seed = {str(c.get("seed")): c.get("accuracy") for c in cells if c.get("status") == "ok" and c.get("accuracy") is not None}
    mean = ci = None
    if entry and entry.get("mean") is not None:
        mean, ci = entry["mean"], entry.get("ci")
        per_seed = {str(k): v for k, v in (entry.get("per_seed") or per_seed).items() if v is not None}
    elif per_seed:
        mean = statistics.fmean(per_seed.values())
    if mean is not None:
        state = "ok"
    elif "failed" in statuses:
        state = "failed"
    elif "pending" in statuses or "running" in statuses:
        state = "pending"
    elif cells and all(s == "no_data" for s in statuses):
        state = "no_data"
    else:
        state = "missing"
    notes = []
    if state == "ok":
        if errors:
            notes.append(f"{len(errors)} of {len(cells)} seeds failed")
        if statuses.count("pending"):
            notes.append(f"{statuses.count('pending')} seeds pending")
    train = sorted({c.get("train_pairs") for c in cells if c.get("train_pairs")})
    return {
        "state": state, "mean": mean, "ci": ci, "per_seed": per_seed, "errors": errors, "notes": notes,
        "seeds": len(cells), "train_pairs": train, "best": False,
        "tooltip": _tooltip(per_seed, ci, errors, train),
    }


def _tooltip(per_seed: dict[str, float], ci: Any, errors: list[str], train: list[int]) -> str:
    lines = [f"seed {s}: {pct(a)}%" for s, a in per_seed.items()]
    if ci:
        lines.append(f"95% CI {pct(ci[0])} to {pct(ci[1])}")
    if train:
        lines.append("train pairs: " + ", ".join(str(t) for t in train))
    return "\n".join(lines + errors)


def results_table(results: dict[str, Any]) -> dict[str, Any]:
    """Rows = variants (and the real-only reference), columns = the non-real settings."""
    columns = [s for s in results.get("settings") or ["syn", "real+syn"] if s != REAL]
    names = [v["name"] for v in results.get("variants") or [] if isinstance(v, dict) and v.get("name")]
    if not names:
        names = list(dict.fromkeys(c.get("variant") for c in results.get("cells") or [] if c.get("variant") != REAL))
    meta = {v["name"]: v for v in results.get("variants") or [] if isinstance(v, dict) and v.get("name")}
    real = _cell(results, REAL, REAL)
    rows = []
    for name in names:
        cells = [_cell(results, name, s) for s in columns]
        for setting, c in zip(columns, cells, strict=True):
            c["delta"] = c["mean"] - real["mean"] if c["mean"] is not None and real["mean"] is not None else None
            # Paired difference to real-only and the "best" mark: detected only when the interval excludes 0 and p < 0.05.
            c["vs_real"] = lookup(results.get("comparisons") or [], setting, name, REAL)
            c["best"] = (results.get("best") or {}).get(setting) == name
        m = meta.get(name, {})
        rows.append({"name": name, "method": m.get("method"), "ablation": m.get("ablation"), "cells": cells})
    baselines = results.get("baselines") or {}
    return {"columns": columns, "rows": rows, "real": real, "has_real": bool(real["seeds"] or real["mean"] is not None),
            "longer": baselines.get("longer_wins"), "coin": baselines.get("coin")}


# ---------------------------------------------------------------------------------------------
# Pair browser

_TOKEN = re.compile(r"\S+\s*|\s+")


def word_diff(a: str, b: str) -> list[list[str]]:
    """y1 -> y2 as [op, text] runs: "=" kept, "-" deleted from y1, "+" inserted in y2.

    Words are compared without their whitespace but keep it in the output, so joining the "="
    and "+" runs gives back b exactly.
    """
    wa, wb = _TOKEN.findall(a), _TOKEN.findall(b)
    sm = difflib.SequenceMatcher(None, [w.strip() for w in wa], [w.strip() for w in wb], autojunk=False)
    ops: list[list[str]] = []

    def emit(op: str, text: str) -> None:
        if not text:
            return
        if ops and ops[-1][0] == op:
            ops[-1][1] += text
        else:
            ops.append([op, text])

    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            emit("=", "".join(wb[j1:j2]))
        else:
            emit("-", "".join(wa[i1:i2]))
            emit("+", "".join(wb[j1:j2]))
    return ops


def _browser_row(variant: str, row: dict[str, Any], prompt_index: dict[str, int]) -> dict[str, Any]:
    prompt = text_of(row.get("prompt"))
    p = prompt_index.setdefault(prompt, len(prompt_index))
    y1, y2 = row.get("y1"), row.get("y2")
    label = row.get("label")
    entry: dict[str, Any] = {
        "v": variant, "id": str(row.get("id", "")), "p": p,
        "chosen": text_of(row.get("chosen")), "rejected": text_of(row.get("rejected")),
        "label": label if label in ("better", "worse") else None,
        "aspects": [str(a) for a in row.get("aspects") or []],
        "diff": None,
    }
    if isinstance(y1, str | list) and isinstance(y2, str | list):
        entry["diff"] = word_diff(text_of(y1), text_of(y2))
    return entry


def browser_data(run: Run, max_pairs: int = MAX_PAIRS) -> dict[str, Any]:
    """The first `max_pairs` pairs of every variant (and of the real training pairs), in file order.

    File order is the input order, so the same prompts appear in every variant. Prompts are
    stored once and referenced by index: QA-Feedback prompts carry long passages.
    """
    prompt_index: dict[str, int] = {}
    pairs: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {}
    groups = [(v.name, run.pairs(v)) for v in run.variants] + [(REAL, run.real_pairs())]
    for name, rows in groups:
        if name == REAL and not rows:
            continue
        counts[name] = {"embedded": min(len(rows), max_pairs), "total": len(rows)}
        pairs.extend(_browser_row(name, r, prompt_index) for r in rows[:max_pairs])
    return {"prompts": list(prompt_index), "pairs": pairs, "counts": counts, "max_pairs": max_pairs}


def script_json(data: Any) -> Markup:
    """JSON that is safe inside <script>: no "</script>", no "<!--", no HTML entities."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return Markup(text)


# ---------------------------------------------------------------------------------------------
# Page


def _asset(name: str) -> Markup:
    return Markup(_env.loader.get_source(_env, name)[0])  # type: ignore[union-attr]


def pcts(x: float | None) -> str:
    """A share as a whole percentage with its sign, or a dash."""
    return DASH if _missing(x) else f"{100 * x:.0f}%"


def _missing(x: Any) -> bool:
    return x is None or isinstance(x, jinja2.Undefined)


def _fmt_int(x: Any) -> str:
    return DASH if _missing(x) else f"{round(x):,}"


def _fmt_num(x: Any, digits: int = 2) -> str:
    return DASH if _missing(x) else f"{x:.{digits}f}"


def render_report(run: Run, analysis: dict[str, Any], max_pairs: int = MAX_PAIRS,
                  command: str | None = None) -> str:
    from rmboost.analysis.plots import colors, make_figures

    results = run.results
    figures = {k: "data:image/png;base64," + base64.b64encode(v).decode() for k, v in make_figures(analysis).items()}
    browser = browser_data(run, max_pairs)
    variant_colors = colors([REAL, *[v.name for v in run.variants]])
    template = _env.get_template("report.html.j2")
    return template.render(
        r=results, a=analysis, table=results_table(results), figures=figures,
        matrices=comparison_matrices(results), power_text=describe_power(results["power"]) if results.get("power") else None,
        browser=browser, browser_json=script_json(browser),
        colors=variant_colors, colors_json=script_json(variant_colors),
        css=_asset("report.css"), js=_asset("report.js"),
        pct=pct, pcts=pcts, fmt_int=_fmt_int, fmt_num=_fmt_num,
        generated=datetime.now().isoformat(timespec="seconds"), version=__version__,
        report_command=command or f"rmboost report {run.dir}",
    )


def write_report(run_dir: Path, output: Path | None = None, *, max_pairs: int = MAX_PAIRS,
                 encoder: Any = None, command: str | None = None) -> Path:
    """Write RUN_DIR/report.html (or `output`); computes analysis.json first when it is missing."""
    if output is not None and Path(output).suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"-o {output}: the report is an HTML file; use a .html name")
    run = load_run(Path(run_dir))
    analysis = load_analysis(run.dir, encoder)
    html = render_report(run, analysis, max_pairs=max_pairs, command=command)
    out = Path(output) if output else run.folder.report
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out
