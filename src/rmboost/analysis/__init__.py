"""Analyses of an experiment run (paper §5.5) and the self-contained HTML report.

`analyze_run(run_dir)` reads a RUN_DIR written by `rmboost experiment` and returns the JSON-able
analysis (lengths, diversity, β, generation cost); `write_report(run_dir)` turns the run and its
analysis into one HTML file with no external resources. Imported lazily, so `rmboost --help`
does not load numpy, matplotlib or jinja2.
"""

from __future__ import annotations

from typing import Any

__all__ = ["analyze_run", "load_analysis", "write_report"]


def __getattr__(name: str) -> Any:
    if name in ("analyze_run", "load_analysis"):
        from rmboost.analysis import run

        return getattr(run, name)
    if name == "write_report":
        from rmboost.analysis.report import write_report

        return write_report
    raise AttributeError(f"module 'rmboost.analysis' has no attribute {name!r}")
