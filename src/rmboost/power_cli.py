"""`rmboost power`: how many test pairs, questions and seeds a comparison of two reward models needs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rmboost.cli_support import USER_ERRORS, fail, out


def _fraction(x: float, name: str) -> float:
    """Accept 0.6 or 60 (percent) for accuracies; points are always points."""
    value = x / 100 if x > 1 else x
    if not 0 < value < 1:
        raise ValueError(f"{name} must be a share in (0, 1) or a percentage, got {x}")
    return value


def power(
    accuracy: Annotated[float, typer.Option(help="Accuracy of the models compared (0.6 or 60).")] = 0.6,
    difference: Annotated[list[float] | None, typer.Option("--difference", "-d", help="Difference to detect, in points; repeatable (default 1, 2, 3).")] = None,
    pairs: Annotated[int | None, typer.Option(help="Test pairs you have: the seeds column and the detectable difference use it.")] = None,
    pairs_per_question: Annotated[float | None, typer.Option(help="Test pairs per question (prompt); 1 = independent pairs.")] = None,
    questions: Annotated[int | None, typer.Option(help="Questions in your test set (with --pairs: sets pairs per question).")] = None,
    test: Annotated[Path | None, typer.Option(help="A pair file: pairs and pairs per question (its `group` column) from it.")] = None,
    icc: Annotated[float, typer.Option(help="Intra-question correlation of the per-pair difference (eval-rm and experiment runs report it).")] = 0.0,
    seeds: Annotated[int, typer.Option(help="Training seeds per model, averaged.")] = 1,
    seed_sd: Annotated[float, typer.Option(help="SD of one model's accuracy over seeds, in points.")] = 0.0,
    discordance: Annotated[float | None, typer.Option(help="Share of pairs the two models disagree on (default: independent errors, 2p(1-p)).")] = None,
    alpha: Annotated[float, typer.Option(help="Two-sided significance level.")] = 0.05,
    target_power: Annotated[float, typer.Option("--power", help="Power wanted.")] = 0.8,
) -> None:
    """Test pairs, questions and seeds needed to detect a difference between two reward models."""
    from rmboost.power import Design, plan

    try:
        p = _fraction(accuracy, "--accuracy")
        m = pairs_per_question
        if test is not None:
            from rmboost.rm.data import read_pairs
            from rmboost.rm.evaluate import resampling_units
            from rmboost.stats import cluster_size

            rows = read_pairs(test, "none")
            unit, n_units, _ = resampling_units(rows)
            pairs, questions, m = pairs or len(rows), n_units, cluster_size(unit, n_units)
        elif m is None:
            m = pairs / questions if pairs and questions else 1.0
        design = Design(pairs=pairs or 1, pairs_per_question=m, icc=icc, seeds=seeds, seed_sd=seed_sd / 100,
                        alpha=alpha, power=target_power)
        result = plan([d / 100 for d in (difference or [1.0, 2.0, 3.0])], p, design, discordance)
    except USER_ERRORS as exc:
        raise fail(str(exc)) from None
    q = result["discordance"]
    out.print(
        f"assumptions: accuracy {100 * p:.1f}%; the two models disagree on {100 * q:.1f}% of pairs"
        f"{' (independent errors; --discordance)' if result['discordance_assumed_independent'] else ''}; "
        f"{m:.2f} pairs per question, ICC {icc:.2f} -> design effect {design.design_effect:.2f}; "
        f"{seeds} seed(s) per model, seed SD {seed_sd:.1f} points; {alpha:.0%} two-sided, {target_power:.0%} power",
        highlight=False,
    )
    table = Table(title="to detect a paired difference between two reward models")
    for col in ("difference", "test pairs", "questions", f"seeds per model at {pairs} pairs" if pairs else "seeds"):
        table.add_column(col, justify="right")
    for row in result["rows"]:
        table.add_row(
            f"{100 * row['difference']:g} point{'' if round(100 * row['difference'], 9) == 1 else 's'}",
            "no number (seed noise too large)" if row["pairs"] is None else f"{row['pairs']:,}",
            "-" if row["questions"] is None else f"{row['questions']:,}",
            ("no number (test set too small)" if row["seeds_at_pairs"] is None else str(row["seeds_at_pairs"])) if pairs else "-",
        )
    out.print(table)
    if pairs:
        out.print(f"with {pairs:,} pairs ({questions or design.questions:,.0f} questions) and {seeds} seed(s): smallest detectable "
                  f"difference {100 * result['mdd']:.1f} points", highlight=False)
