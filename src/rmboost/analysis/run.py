"""Reading a RUN_DIR and computing its analysis.json.

The experiment writes results.json, data/ and gen/<variant>/; everything here only reads them,
and a missing optional piece (a variant's beta.jsonl, its summary, its pairs) is reported as
not available instead of failing the whole analysis.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from rmboost.analysis import beta as beta_mod
from rmboost.analysis.costs import from_results, generation_costs
from rmboost.analysis.diversity import Encoder, diversity_analysis
from rmboost.analysis.lengths import length_analysis
from rmboost.data.messages import response_text
from rmboost.data.pairs import atomic_write_json, sidecar
from rmboost.runfolder import REAL, RunFolder, Variant, read_jsonl

ANALYSIS_VERSION = 1
# rlaif and west-of-n sample both responses from Pr(y|x) itself, so β = 1 by construction.
UNCONDITIONAL_METHODS = {"rlaif", "west-of-n"}


def text_of(value: Any) -> str:
    """A response (or prompt) as display text, by `rmboost.data.messages.response_text`; a missing one is ""."""
    return "" if value is None else response_text(value)


@dataclass
class Run:
    """What a RUN_DIR holds, read once."""

    dir: Path
    results: dict[str, Any]
    variants: list[Variant] = field(default_factory=list)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.dir)

    def pairs_path(self, v: Variant) -> Path:
        return self.folder.pairs(v)

    def pairs(self, v: Variant) -> list[dict[str, Any]]:
        return read_jsonl(self.pairs_path(v))

    def real_pairs(self) -> list[dict[str, Any]]:
        return read_jsonl(self.folder.real_train)


def load_run(run_dir: Path) -> Run:
    """Read results.json; fail with a clear message when `run_dir` is not a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    path = RunFolder(run_dir).results
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no results.json (is this a RUN_DIR written by `rmboost experiment`?)")
    try:
        results = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(results, dict):
        raise ValueError(f"{path}: expected a JSON object")
    for key in ("cells", "variants", "table", "comparisons"):  # what the report iterates
        if key in results and not isinstance(results[key], list):
            raise ValueError(f"{path}: {key!r} should be a list, got {type(results[key]).__name__}")
    variants = [
        Variant(v["name"], v.get("method"), v.get("ablation"), v.get("pairs_file"))
        for v in results.get("variants") or [] if isinstance(v, dict) and v.get("name")
    ]
    gen = RunFolder(run_dir).gen
    if not variants and gen.is_dir():  # an older or partial results.json
        variants = [Variant(p.name) for p in sorted(gen.iterdir()) if p.is_dir()]
    return Run(run_dir, results, variants)


def _pair_texts(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(text_of(r.get("chosen")), text_of(r.get("rejected"))) for r in rows]


def _sample(pairs: list[tuple[str, str]], k: int, seed: int = 0) -> list[tuple[str, str]]:
    if len(pairs) <= k:
        return pairs
    return random.Random(seed).sample(pairs, k)


def _beta(run: Run, v: Variant) -> tuple[dict[str, Any], list[float]]:
    path = run.folder.beta(v.name)
    if not path.is_file():
        if v.method in UNCONDITIONAL_METHODS:
            reason = f"{v.method} samples its responses from Pr(y|x) itself (β = 1 by construction)"
        else:
            reason = "no beta.jsonl (not computed, or the backend gives no log-probabilities)"
        return {"available": False, "reason": reason}, []
    logs, per_token = beta_mod.beta_values(read_jsonl(path))
    return beta_mod.beta_summary(logs, per_token), logs


def _generation(run: Run, v: Variant) -> dict[str, Any]:
    summary_path = sidecar(run.pairs_path(v), "summary")
    filtered_path = sidecar(run.pairs_path(v), "filtered")
    kept = len(run.pairs(v)) if run.pairs_path(v).is_file() else None
    filtered = len(read_jsonl(filtered_path)) if filtered_path.is_file() else None
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text("utf-8"))
        except json.JSONDecodeError:
            summary = None
        if isinstance(summary, dict):
            return {"available": True, "source": "pairs.summary.json", **generation_costs(summary, kept, filtered)}
    entry = (run.results.get("generation") or {}).get(v.name)
    if isinstance(entry, dict):
        return {"available": True, "source": "results.json", **from_results(entry)}
    return {"available": False, "reason": "no pairs.summary.json"}


def analyze_run(
    run_dir: Path, encoder: Encoder | None = None, *, embed: bool = True, diversity_pairs: int = 500,
    embed_pairs: int = 200, write: bool = True,
) -> dict[str, Any]:
    """Lengths, diversity, β and generation cost for every variant and the real training pairs.

    `encoder` maps texts to embeddings (default: the embedded MiniLM, loaded only when needed;
    `embed=False` skips embeddings). Diversity is measured on a seeded sample of the same number
    of pairs for every group (at most `diversity_pairs`), since distinct-n falls with more text;
    embeddings use the first `embed_pairs` of that sample (MiniLM does ~25 texts/s on 2 CPU cores).
    Writes RUN_DIR/analysis.json and the figures as RUN_DIR/figures/*.png unless `write=False`.
    """
    run = load_run(run_dir)
    pair_sets: dict[str, list[tuple[str, str]]] = {}
    real = run.real_pairs()
    if real:
        pair_sets[REAL] = _pair_texts(real)
    for v in run.variants:
        pair_sets[v.name] = _pair_texts(run.pairs(v))

    lengths = {name: length_analysis(pairs) for name, pairs in pair_sets.items()}

    non_empty = [len(p) for p in pair_sets.values() if p]
    k = min([diversity_pairs, *non_empty]) if non_empty else 0
    encoder_name = None
    encoder_error = None
    if embed and encoder is None and k:
        try:
            from rmboost.analysis.diversity import default_encoder

            encoder = default_encoder()
        except (OSError, ImportError, ValueError) as exc:
            encoder_error = f"{type(exc).__name__}: {exc}"
    if embed and encoder is not None:
        encoder_name = getattr(encoder, "name", type(encoder).__name__)
    diversity = {
        name: diversity_analysis(_sample(pairs, k), encoder if embed else None, embed_pairs)
        for name, pairs in pair_sets.items() if pairs
    }

    betas: dict[str, dict[str, Any]] = {}
    values: dict[str, list[float]] = {}
    for v in run.variants:
        betas[v.name], values[v.name] = _beta(run, v)
    edges = beta_mod.common_edges(list(values.values()))
    for name, vals in values.items():
        if betas[name].get("available"):
            counts, _ = np.histogram(vals, bins=edges)
            betas[name]["histogram"] = {"edges": edges, "counts": [int(c) for c in counts]}

    analysis = {
        "version": ANALYSIS_VERSION,
        "run": run.results.get("name") or run.dir.name,
        "created": datetime.now().isoformat(timespec="seconds"),
        "groups": list(pair_sets),
        "pairs": {name: len(p) for name, p in pair_sets.items()},
        "lengths": lengths,
        "diversity": {
            "sample_pairs": k,
            "embed_pairs": min(k, embed_pairs),
            "encoder": encoder_name,
            "encoder_error": encoder_error,
            "groups": diversity,
        },
        "beta": betas,
        "generation": {v.name: _generation(run, v) for v in run.variants},
    }
    if write:
        from rmboost.analysis.plots import save_figures

        atomic_write_json(run.folder.analysis, analysis, indent=1)
        save_figures(analysis, run.folder.figures)
    return analysis


def _inputs_newer_than(run_dir: Path, mtime: float) -> bool:
    """True when a pair, β or summary file changed after the analysis was written."""
    folder = RunFolder(run_dir)
    files = [folder.real_train, *folder.gen.glob("*/*.json*")]
    return any(f.is_file() and f.stat().st_mtime > mtime for f in files)


def load_analysis(run_dir: Path, encoder: Encoder | None = None) -> dict[str, Any]:
    """RUN_DIR/analysis.json when it is there and current, else a fresh analysis (written)."""
    path = RunFolder(Path(run_dir)).analysis
    if path.is_file() and not _inputs_newer_than(Path(run_dir), path.stat().st_mtime):
        try:
            analysis = json.loads(path.read_text("utf-8"))
            if isinstance(analysis, dict) and analysis.get("version") == ANALYSIS_VERSION:
                return analysis
        except json.JSONDecodeError:
            pass
    return analyze_run(Path(run_dir), encoder)
