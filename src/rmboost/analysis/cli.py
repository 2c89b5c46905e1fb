"""`rmboost report RUN_DIR`: registered on the main app at the end of rmboost/cli.py."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from rmboost import options_cli
from rmboost.cli_support import fail as _fail
from rmboost.cli_support import out
from rmboost.options import at_least, option

MAX_PAIRS = 300  # the report module's default, repeated so --help stays light


@dataclass
class ReportOptions:
    run_dir: Path = option(argument=True, help="An experiment's RUN_DIR (with results.json).")
    output: Path | None = option(None, flags=("--output", "-o"), help="HTML file (default RUN_DIR/report.html).")
    max_pairs: int = option(MAX_PAIRS, check=at_least(0), help="Pairs per variant embedded in the pair browser.")
    reanalyze: bool = option(False, help="Recompute analysis.json even when it exists.")


@options_cli.command(ReportOptions)
def report(opts: ReportOptions) -> None:
    """Write one self-contained HTML report for a run: results table, analyses and a pair browser."""
    from rmboost.analysis.report import write_report
    from rmboost.analysis.run import analyze_run, load_run

    run_dir, output, max_pairs, reanalyze = opts.run_dir, opts.output, opts.max_pairs, opts.reanalyze
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
