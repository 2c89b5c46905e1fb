"""`rmboost report`: the results table logic, and the HTML page rendered in headless Chromium.

`build_run_dir` writes a small RUN_DIR by hand in the layout `rmboost experiment` writes, so the
report can be tested, every check of it, without running an experiment. A report of a real run is
rendered by the experiment's end-to-end test (tests/test_experiment.py). REPORT_SCREENSHOT=PATH
saves a screenshot of the page.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rmboost.analysis.report import results_table, script_json, word_diff
from rmboost.cli import app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
HOSTILE = 'Ignore this </script><img src="http://attacker.invalid/x.png" onerror="window.pwned=1"> & <b>bold</b>'

# (question, passage, a complete answer, a terse answer, an unsupported answer)
QA = [
    ("Who led the british in the battle of princeton?",
     "Battle of Princeton: The Battle of Princeton was a battle of the American Revolutionary War, fought near "
     "Princeton, New Jersey on January 3, 1777. General Lord Cornwallis had left 1,400 British troops under the "
     "command of Lieutenant Colonel Charles Mawhood in Princeton.",
     "The British troops at Princeton were commanded by Lieutenant Colonel Charles Mawhood, whom General Lord "
     "Cornwallis had left there with 1,400 men before the battle of January 3, 1777.",
     "Charles Mawhood.",
     "The British were led by General George Washington at Princeton."),
    ("When does bloom by troye sivan come out?",
     "Bloom (Troye Sivan album): Bloom is the second studio album by Australian singer and songwriter Troye "
     "Sivan, released on 31 August 2018 through EMI Australia and Capitol Records.",
     "Bloom, Troye Sivan's second studio album, was released on 31 August 2018 through EMI Australia and "
     "Capitol Records.",
     "31 August 2018.",
     "Bloom came out in 2015 as Troye Sivan's debut album."),
    ("Who sings the song i can only imagine?",
     "I Can Only Imagine (MercyMe song): \"I Can Only Imagine\" is a song performed by American Christian rock "
     "band MercyMe. Written by lead singer Bart Millard, it was released in 2001.",
     "\"I Can Only Imagine\" is performed by the American Christian rock band MercyMe; its lead singer Bart "
     "Millard wrote it, and it came out in 2001.",
     "MercyMe.",
     "The song is sung by Amy Grant, who wrote it in 1999."),
    ("What is the largest moon of saturn?",
     "Titan (moon): Titan is the largest moon of Saturn and the second-largest natural satellite in the Solar "
     "System. It is the only moon known to have a dense atmosphere.",
     "Titan is Saturn's largest moon and the second-largest natural satellite in the Solar System; it is also "
     "the only moon known to have a dense atmosphere.",
     "Titan.",
     "Saturn's largest moon is Europa, which is covered in ice."),
    ("When was the first iphone released?",
     "iPhone (1st generation): The first iPhone was announced by Steve Jobs on January 9, 2007 and released in "
     "the United States on June 29, 2007.",
     "Apple released the first iPhone in the United States on June 29, 2007, after Steve Jobs announced it on "
     "January 9, 2007.",
     "June 29, 2007.",
     "The first iPhone was released in 2005 in Japan."),
    ("Where is the great barrier reef located?",
     "Great Barrier Reef: The Great Barrier Reef is the world's largest coral reef system, located in the Coral "
     "Sea off the coast of Queensland, Australia.",
     "The Great Barrier Reef lies in the Coral Sea, off the coast of Queensland in north-eastern Australia, and "
     "is the world's largest coral reef system.",
     "Off Queensland.",
     "The Great Barrier Reef is in the Caribbean Sea near Belize."),
]
ASPECTS = ["relevance_coherence", "factuality", "completeness"]


def _prompt(i: int) -> str:
    q, passage = QA[i % len(QA)][:2]
    return f"Question: {q}\n\nPassages:\n[1] {passage}"


def _inputs(i: int) -> dict[str, str]:
    q, passage = QA[i % len(QA)][:2]
    return {"question": q, "passages": f"[1] {passage}"}


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _pair(method: str, i: int, y1: str, y2: str, label: str, aspects: list[str], seed: int = 0) -> dict[str, Any]:
    chosen, rejected = (y2, y1) if label == "better" else (y1, y2)
    return {
        "id": f"qaf-{i:04d}", "prompt": _prompt(i), "chosen": chosen, "rejected": rejected, "method": method,
        "task": "qa_feedback", "label": label, "aspect_mode": "model-selects" if aspects else "none",
        "aspects": aspects, "y1_source": "model", "y1": y1, "y2": y2, "model": "SmolLM2-135M-Instruct",
        "seed": seed, "tokens_in": 900 + 10 * i, "tokens_out": 80 + i, "request_ids": [f"r{i}a", f"r{i}b"],
        "inputs": _inputs(i),
    }


def variant_pairs(name: str, n: int) -> list[dict[str, Any]]:
    """Pairs in each method's shape, built from the QA table above (deterministic)."""
    rows = []
    for i in range(n):
        _, _, full, terse, wrong = QA[i % len(QA)]
        label = "better" if i % 2 == 0 else "worse"
        if name.startswith("rmboost"):
            y1 = terse if label == "better" else full
            y2 = full if label == "better" else full.replace(",", "").rsplit(" ", 6)[0] + "."
            aspects = [] if name == "rmboost-no-aspect" else ASPECTS[i % 3 : i % 3 + 1 + (i % 2)]
            rows.append(_pair("rmboost", i, y1, y2, label, aspects))
        elif name == "rlcd":
            rows.append(_pair("rlcd", i, full, wrong, "worse", []))
        else:  # rlaif: two samples, the judge picked one
            rows.append(_pair("rlaif", i, terse, wrong if i % 3 else terse + " " + wrong, "worse" if i % 2 else "better", []))
    return rows


def real_pairs(n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        _, _, full, terse, wrong = QA[i % len(QA)]
        group = f"qaf-{i % len(QA):04d}"
        chosen, rejected = (full, wrong) if i % 2 == 0 else (terse, wrong)
        rows.append({"id": f"{group}-{i}", "prompt": _prompt(i), "chosen": chosen, "rejected": rejected,
                     "method": "human", "group": group, "inputs": _inputs(i)})
    return rows


def _summary(name: str, method: str, pairs: int, filtered: int, judge: bool) -> dict[str, Any]:
    steps = {"rmboost": ["y1", "y2"], "rlcd": ["y1", "y2"], "rlaif": ["sample"]}[method]
    usage = {s: {"calls": pairs + 1, "cache_hits": 1, "tokens_in": 1000 * (pairs + 1), "tokens_out": 90 * (pairs + 1),
                 "cached_tokens_in": 1000, "cached_tokens_out": 90} for s in steps}
    judge_usage = {"filter": {"calls": 2 * (pairs + filtered), "cache_hits": 0, "tokens_in": 1500 * (pairs + filtered),
                              "tokens_out": 12 * (pairs + filtered), "cached_tokens_in": 0, "cached_tokens_out": 0}} if judge else {}
    return {
        "output": f"gen/{name}/pairs.jsonl", "failures_file": f"gen/{name}/pairs.failures.jsonl", "method": method,
        "task": "qa_feedback", "model": "SmolLM2-135M-Instruct", "prompts": pairs + filtered + 1, "resumed": 0,
        "pairs_written": pairs, "pairs_total": pairs, "failures": {"echoes_instruction": 1}, "failures_by_step": {"y2": 1},
        "filtered": filtered, "filter_rate": round(filtered / (pairs + filtered), 4) if judge else None,
        "usage": usage, "judge_usage": judge_usage, "cost_usd": {"total": 0.0123, "this_run": 0.01} if judge else None,
        "llm_calls": 20, "cache_hits": 2, "wall_seconds": 123.4, "labels": {"better": pairs // 2, "worse": pairs - pairs // 2},
    }


# name -> (method, ablation, pairs, filtered by the judge, has beta.jsonl)
FIXTURE_VARIANTS = {
    "rmboost": ("rmboost", None, 8, 2, True),
    "rlcd": ("rlcd", None, 6, 1, True),
    "rlaif": ("rlaif", None, 5, 0, False),
    "rmboost-no-aspect": ("rmboost", "no-aspect", 4, 1, False),
}


def build_run_dir(root: Path, *, hostile: bool = True) -> Path:
    """A RUN_DIR in the experiment's layout, with realistic pair rows and every cell state.

    rmboost and rlcd have beta.jsonl, rlaif has none (β = 1 by construction), the no-aspect
    ablation has no summary file (its numbers come from results.json). One rlcd response holds
    HTML/JS that must come out as text.
    """
    run = root / "run"
    (run / "data").mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text("name: fixture_run\ntask: qa_feedback\n", encoding="utf-8")
    _jsonl(run / "data" / "real_train.jsonl", real_pairs(10))
    _jsonl(run / "data" / "test.jsonl", real_pairs(6))
    variants, generation = [], {}
    for name, (method, ablation, n, filtered, has_beta) in FIXTURE_VARIANTS.items():
        pairs = variant_pairs(name, n)
        if hostile and name == "rlcd":
            pairs[1]["rejected"] = pairs[1]["y2"] = HOSTILE
        d = run / "gen" / name
        _jsonl(d / "pairs.jsonl", pairs)
        if filtered:
            _jsonl(d / "pairs.filtered.jsonl", [{**p, "id": f"{p['id']}-f"} for p in variant_pairs(name, filtered)])
        if name != "rmboost-no-aspect":
            (d / "pairs.summary.json").write_text(json.dumps(_summary(name, method, n, filtered, True), indent=2), "utf-8")
        if has_beta:
            _jsonl(d / "beta.jsonl", [
                {"id": p["id"], "logp_conditional": -40.0 - i, "logp_unconditional": -40.0 - i - (i - 3) * 0.5,
                 "tokens": 20 + i, "log_beta": (i - 3) * 0.5 * (1 if method == "rmboost" else 2)}
                for i, p in enumerate(pairs)])
        variants.append({"name": name, "method": method, "ablation": ablation, "pairs_file": f"gen/{name}/pairs.jsonl"})
        generation[name] = {"pairs": n, "failures": 1, "filtered": filtered, "filter_rate": filtered / (n + filtered),
                            "tokens_in": 5000, "tokens_out": 500, "judge_tokens_in": 3000, "judge_tokens_out": 30,
                            "cost_usd": None, "wall_seconds": 60.0}

    def cell(variant: str, setting: str, seed: int, status: str, acc: float | None = None, error: str | None = None):
        c = {"variant": variant, "setting": setting, "seed": seed, "status": status, "accuracy": acc,
             "ci": [acc - 0.06, acc + 0.06] if acc is not None else None, "train_pairs": 10 if acc else 0,
             "eval_file": f"rm/{variant}__{setting}__s{seed}/eval.json" if acc is not None else None}
        if error:
            c["error"] = error
        return c

    cells = [
        cell("real", "real", 0, "ok", 0.58), cell("real", "real", 1, "ok", 0.56),
        cell("rmboost", "syn", 0, "ok", 0.61), cell("rmboost", "syn", 1, "ok", 0.59),
        cell("rmboost", "real+syn", 0, "ok", 0.63), cell("rmboost", "real+syn", 1, "ok", 0.65),
        cell("rlcd", "syn", 0, "ok", 0.55), cell("rlcd", "syn", 1, "failed", error="CUDA out of memory"),
        cell("rlcd", "real+syn", 0, "ok", 0.60), cell("rlcd", "real+syn", 1, "ok", 0.62),
        cell("rlaif", "syn", 0, "no_data"), cell("rlaif", "syn", 1, "no_data"),
        cell("rlaif", "real+syn", 0, "failed", error="trainer crashed"), cell("rlaif", "real+syn", 1, "failed", error="x"),
        cell("rmboost-no-aspect", "syn", 0, "pending"), cell("rmboost-no-aspect", "syn", 1, "pending"),
        cell("rmboost-no-aspect", "real+syn", 0, "pending"), cell("rmboost-no-aspect", "real+syn", 1, "pending"),
    ]
    table = [
        {"variant": "real", "setting": "real", "mean": 0.57, "ci": [0.55, 0.59], "per_seed": {"0": 0.58, "1": 0.56}, "seeds_ok": 2},
        {"variant": "rmboost", "setting": "syn", "mean": 0.60, "ci": [0.58, 0.62], "per_seed": {"0": 0.61, "1": 0.59}, "seeds_ok": 2},
        {"variant": "rmboost", "setting": "real+syn", "mean": 0.64, "ci": [0.62, 0.66], "per_seed": {"0": 0.63, "1": 0.65}, "seeds_ok": 2},
        {"variant": "rlcd", "setting": "syn", "mean": 0.55, "ci": None, "per_seed": {"0": 0.55}, "seeds_ok": 1},
        {"variant": "rlcd", "setting": "real+syn", "mean": 0.61, "ci": [0.59, 0.63], "per_seed": {"0": 0.60, "1": 0.62}, "seeds_ok": 2},
    ]
    results = {
        "name": "fixture_run", "task": "qa_feedback", "command": "rmboost experiment configs/fixture.yaml",
        "created": "2026-11-23T10:00:00", "updated": "2026-11-23T12:30:00",
        "generator": {"backend": "llamacpp", "model": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        "judge": {"backend": "llamacpp", "model": "SmolLM2-135M-Instruct.Q4_1.gguf", "mode": "logprobs"},
        "rm": {"backbone": "minilm", "epochs": 2, "lr": 2e-5},
        "test": {"path": "data/test.jsonl", "pairs": 6, "groups": 6},
        "baselines": {"longer_wins": {"accuracy": 0.501, "ci": [0.436, 0.563]}, "coin": {"accuracy": 0.5}},
        "variants": variants, "settings": ["real", "syn", "real+syn"], "seeds": [0, 1],
        "cells": cells, "table": table, "generation": generation,
        # Paired differences (rmboost.comparisons): only rmboost in real+syn is detectably best.
        "comparisons": [
            _paired("syn", "rmboost", "real", 0.03, -0.01, 0.07, 0.2), _paired("syn", "rlcd", "real", -0.02, -0.06, 0.02, 0.4),
            _paired("syn", "rmboost", "rlcd", 0.05, -0.002, 0.10, 0.07),
            _paired("real+syn", "rmboost", "real", 0.07, 0.03, 0.11, 0.001), _paired("real+syn", "rlcd", "real", 0.04, 0.0, 0.08, 0.06),
            _paired("real+syn", "rmboost", "rlcd", 0.03, 0.01, 0.05, 0.02),
        ],
        "best": {"syn": None, "real+syn": "rmboost"},
        "power": {"available": True, "alpha": 0.05, "power": 0.8, "pairs": 6, "questions": 6, "pairs_per_question": 1.0,
                  "icc": 0.0, "design_effect": 1.0, "pair_variance": 0.3, "seeds": 2, "seed_sd": 0.012,
                  "basis": "median over 6 paired comparisons", "mdd_test_set": 0.63, "mdd": 0.631},
    }
    (run / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return run


def _paired(setting: str, a: str, b: str, diff: float, lo: float, hi: float, p: float) -> dict[str, Any]:
    return {"setting": setting, "a": a, "b": b, "difference": diff, "ci95": [lo, hi], "p_value": p,
            "detected": (lo > 0 or hi < 0) and p < 0.05, "permutation": "exact", "seeds": [2, 2]}


# ---------------------------------------------------------------------------------------------
# Pure functions


def test_word_diff_marks_insertions_and_deletions_and_rebuilds_y2():
    ops = word_diff("the cat sat", "the black cat sat down")
    assert ops == [["=", "the "], ["+", "black "], ["=", "cat sat "], ["+", "down"]]
    ops = word_diff("Paris is in Germany.", "Paris is in France.")
    assert ops == [["=", "Paris is in "], ["-", "Germany."], ["+", "France."]]
    y1, y2 = "a b  c\nd e", "a x c\nd e f"
    assert "".join(t for op, t in word_diff(y1, y2) if op != "-") == y2


def test_script_json_cannot_close_the_script_tag():
    text = str(script_json({"t": HOSTILE, "u": "a\u2028b"}))
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"t": HOSTILE, "u": "a\u2028b"}


def test_results_table_cells_best_and_states(tmp_path):
    results = json.loads((build_run_dir(tmp_path) / "results.json").read_text())
    t = results_table(results)
    assert t["columns"] == ["syn", "real+syn"]
    assert [r["name"] for r in t["rows"]] == list(FIXTURE_VARIANTS)
    assert t["real"]["state"] == "ok" and t["real"]["mean"] == pytest.approx(0.57)
    rows = {r["name"]: dict(zip(t["columns"], r["cells"], strict=True)) for r in t["rows"]}
    assert rows["rmboost"]["syn"]["state"] == "ok"
    # "best" needs a detected paired difference (results["best"]), never the highest mean alone:
    # rmboost has the top mean in both columns but is detectably best only in real+syn.
    assert rows["rmboost"]["real+syn"]["best"] and not rows["rmboost"]["syn"]["best"]
    assert not any(c["best"] for r in t["rows"] for c in r["cells"] if r["name"] != "rmboost")
    assert not any(c["best"] for r in results_table({**results, "best": {}})["rows"] for c in r["cells"])
    assert rows["rmboost"]["syn"]["vs_real"]["ci95"] == [-0.01, 0.07] and not rows["rmboost"]["syn"]["vs_real"]["detected"]
    assert rows["rmboost"]["syn"]["delta"] == pytest.approx(0.03)
    assert rows["rlcd"]["syn"]["notes"] == ["1 of 2 seeds failed"]
    assert rows["rlaif"]["syn"]["state"] == "no_data" and rows["rlaif"]["syn"]["mean"] is None
    assert rows["rlaif"]["real+syn"]["state"] == "failed" and "trainer crashed" in rows["rlaif"]["real+syn"]["errors"][0]
    assert rows["rmboost-no-aspect"]["syn"]["state"] == "pending"

    # Without the table, the mean over the ok seeds is computed from the cells.
    t2 = results_table({**results, "table": []})
    rl = dict(zip(t2["columns"], next(r for r in t2["rows"] if r["name"] == "rlcd")["cells"], strict=True))
    assert rl["real+syn"]["mean"] == pytest.approx(0.61) and rl["real+syn"]["ci"] is None
    assert rl["syn"]["mean"] == pytest.approx(0.55)


# ---------------------------------------------------------------------------------------------
# The CLI


def _rmboost(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("rmboost")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "rmboost.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})


def _lines(path: Path) -> int:
    return sum(1 for line in path.open() if line.strip()) if path.is_file() else 0


def test_report_errors_are_one_red_line(tmp_path):
    res = _rmboost("report", str(tmp_path / "nope"))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: no such run directory"]
    (tmp_path / "empty").mkdir()
    res = _rmboost("report", str(tmp_path / "empty"))
    assert res.returncode == 2 and "no results.json" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "empty" / "results.json").write_text("{not json")
    res = _rmboost("report", str(tmp_path / "empty"))
    assert res.returncode == 2 and "not valid JSON" in res.stderr


# ---------------------------------------------------------------------------------------------
# The page in headless Chromium


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    """Render the report through the CLI (which computes analysis.json) and open it in Chromium."""
    from playwright.sync_api import sync_playwright

    run = build_run_dir(tmp_path_factory.mktemp("report"))
    out = run / "out" / "page.html"
    # In process (the same Typer app the console script runs), so the MiniLM that computes the
    # missing analysis.json loads into a process that has torch imported already.
    res = CliRunner().invoke(app, ["report", str(run), "-o", str(out), "--max-pairs", "7"])
    assert res.exit_code == 0, res.output
    assert f"report written to {out}" in res.output
    assert (run / "analysis.json").is_file() and (run / "figures" / "lengths.png").is_file()
    assert out.is_file() and not (run / "report.html").exists()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # The page's own CSP would hide requests and injected scripts; bypass it so the checks
        # below show that the page itself attempts no request and runs no injected code.
        page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        outside: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else outside.append(r.url))
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:"))
                   else route.abort())
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(out.as_uri())
        page.wait_for_load_state("load")
        yield {"page": page, "run": run, "outside": outside, "errors": errors,
               "results": json.loads((run / "results.json").read_text())}
        if shot := os.environ.get("REPORT_SCREENSHOT"):
            page.screenshot(path=shot, full_page=True)
        browser.close()


@pytest.mark.browser
@pytest.mark.slow
def test_page_renders_results_table(report_page):
    page, results = report_page["page"], report_page["results"]
    assert page.title() == f"rmboost · {results['name']}"
    rows = page.locator("#results-table tbody tr")
    assert rows.count() == len(results["variants"]) + 1
    assert "Real only" in rows.nth(0).inner_text()
    assert "57.0" in rows.nth(0).inner_text()
    best = page.locator("#results-table td.best")
    assert best.count() == 1 and "rmboost" in best.nth(0).locator("xpath=..").inner_text()
    rmboost_row = rows.nth(1).inner_text()
    assert "60.0" in rmboost_row and "[58.0, 62.0]" in rmboost_row and "s0 61.0 · s1 59.0" in rmboost_row
    assert "+3.0 [-1.0, +7.0] vs real" in rmboost_row and "+7.0 [+3.0, +11.0] vs real ✓" in rmboost_row
    paired = page.locator("table.paired")
    assert paired.count() == 2
    # real+syn: rmboost vs real, rmboost vs rlcd and (mirrored) rlcd vs rmboost
    assert paired.nth(1).locator("td.detected").count() == 3
    assert "best in real+syn: rmboost" in page.locator("#results").inner_text()
    assert "smallest difference this run could detect" in page.locator("#results").inner_text().lower()
    assert "1 of 2 seeds failed" in rows.nth(2).inner_text()
    assert rows.nth(3).locator(".badge.nodata").count() == 1 and rows.nth(3).locator(".badge.failed").count() == 1
    assert rows.nth(4).locator(".badge.pending").count() == 2
    foot = page.locator("#results-table tfoot").inner_text()
    assert "Longer response wins" in foot and "50.1" in foot and "Coin" in foot
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in page.locator("header").inner_text()
    header = page.locator("header").inner_text()
    assert "rmboost experiment configs/fixture.yaml" in header
    assert f"rmboost report {report_page['run']} -o {report_page['run'] / 'out' / 'page.html'} --max-pairs 7" in header


@pytest.mark.browser
@pytest.mark.slow
def test_page_figures_load(report_page):
    page = report_page["page"]
    sizes = page.eval_on_selector_all("img.fig", "imgs => imgs.map(i => [i.alt, i.complete, i.naturalWidth])")
    names = [alt for alt, _, _ in sizes]
    assert names == ["length-ratio histograms", "beta distributions", "diversity", "tokens per variant", "filter rates"]
    assert all(complete and width > 200 for _, complete, width in sizes), sizes
    beta = page.locator("#beta table").inner_text()
    assert "not available" in beta and "Pr(y|x)" in beta


@pytest.mark.browser
@pytest.mark.slow
def test_pair_browser_filters_and_searches(report_page):
    page, run = report_page["page"], report_page["run"]
    results = report_page["results"]
    counts = {v["name"]: min(7, _lines(run / v["pairs_file"])) for v in results["variants"]}
    total = sum(counts.values()) + min(7, _lines(run / "data" / "real_train.jsonl"))
    count = page.locator("#pair-count")
    assert count.inner_text() == f"showing {total} of {total} matching pairs ({total} embedded)"
    assert page.locator("article.pair").count() == total

    name = "rmboost"
    assert counts[name] == 7  # capped by --max-pairs 7 (the fixture has 8)
    page.select_option("#variant-filter", name)
    assert count.inner_text().startswith(f"showing {counts[name]} of {counts[name]} ")
    variants = page.eval_on_selector_all("article.pair", "els => els.map(e => e.dataset.variant)")
    assert variants == [name] * counts[name]
    first = page.locator("article.pair").first
    assert first.locator(".side.chosen pre").inner_text() and first.locator(".side.rejected pre").inner_text()
    assert first.locator(".chip.better").inner_text() == "y2 better"
    assert first.locator(".chip").nth(1).inner_text() == "relevance_coherence"
    assert first.locator(".diff ins").count() >= 1  # terse y1 -> full y2
    page.locator("article.pair").nth(1).locator(".diff del").first.wait_for()

    page.select_option("#variant-filter", "")
    # fixture: the reef question is pair 5 of rmboost, rlcd and the real pairs (rlaif has 5 pairs)
    term = "coral reef"
    search(page, term)
    shown = page.eval_on_selector_all("article.pair", "els => els.map(e => e.textContent.toLowerCase())")
    assert shown and all(term.lower() in text for text in shown)
    assert count.inner_text().startswith(f"showing {len(shown)} of {len(shown)} ")
    assert len(shown) == 3
    search(page, "no pair says this xyzzy")
    assert count.inner_text().startswith("showing 0 of 0 ")
    assert page.locator(".empty").inner_text() == "No pair matches."
    search(page, "")
    assert count.inner_text().startswith(f"showing {total} of {total} ")


def search(page: Any, term: str) -> None:
    """Type into the search box and wait until the (debounced) filter has run for it."""
    page.fill("#search", term)
    page.wait_for_function("q => document.getElementById('pair-count').dataset.query === q", arg=term.strip().lower())


@pytest.mark.browser
@pytest.mark.slow
def test_untrusted_text_stays_text_and_nothing_leaves_the_machine(report_page):
    page = report_page["page"]
    page.select_option("#variant-filter", "rlcd")
    search(page, "attacker.invalid")
    assert page.locator("#pair-count").inner_text().startswith("showing 1 of 1 ")
    assert page.locator("article.pair .side.rejected pre").inner_text() == HOSTILE
    assert page.locator("article.pair img").count() == 0
    assert page.evaluate("window.pwned === undefined")
    assert report_page["errors"] == []
    assert report_page["outside"] == []
    csp = page.get_attribute('meta[http-equiv="Content-Security-Policy"]', "content")
    assert "default-src 'none'" in csp and "img-src data:" in csp
