"""`rmboost report RUN_DIR`: registered on the main app at the end of rmboost/cli.py."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from rmboost.cli_support import fail as _fail
from rmboost.cli_support import out

MAX_PAIRS = 300  # the report module's default, repeated so --help stays light


def report(
    run_dir: Annotated[Path, typer.Argument(help="An experiment's RUN_DIR (with results.json).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="HTML file (default RUN_DIR/report.html).")] = None,
    max_pairs: Annotated[int, typer.Option(help="Pairs per variant embedded in the pair browser.")] = MAX_PAIRS,
    reanalyze: Annotated[bool, typer.Option(help="Recompute analysis.json even when it exists.")] = False,
) -> None:
    """Write one self-contained HTML report for a run: results table, analyses and a pair browser."""
    from rmboost.analysis.report import write_report
    from rmboost.analysis.run import analyze_run, load_run

    if max_pairs < 0:
        raise _fail("--max-pairs must be >= 0")
    command = _command(run_dir, output, max_pairs, reanalyze)
    try:
        load_run(run_dir)  # a wrong path fails before any work
        if reanalyze:
            analyze_run(run_dir)
        path = write_report(run_dir, output, max_pairs=max_pairs, command=command)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise _fail(str(exc)) from None
    out.print(f"report written to {path}")


def _command(run_dir: Path, output: Path | None, max_pairs: int, reanalyze: bool) -> str:
    """The command line that reproduces this report, for the page's header."""
    parts = ["rmboost", "report", shlex.quote(str(run_dir))]
    if output is not None:
        parts += ["-o", shlex.quote(str(output))]
    if max_pairs != MAX_PAIRS:
        parts += ["--max-pairs", str(max_pairs)]
    if reanalyze:
        parts.append("--reanalyze")
    return " ".join(parts)
