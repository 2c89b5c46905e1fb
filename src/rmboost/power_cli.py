"""`rmboost power`: how many test pairs, questions and seeds a comparison of two reward models needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from rmboost import options_cli
from rmboost.cli_support import USER_ERRORS, fail, out
from rmboost.options import at_least, option, reuse
from rmboost.power import Design


def as_share(x: float) -> float:
    """An accuracy given as 0.6 or as 60 (percent), as a share."""
    return x / 100 if x > 1 else x


def accuracy_check(x: float) -> str | None:
    return None if 0 < as_share(x) < 1 else f"must be a share in (0, 1) or a percentage, got {x:g}"


@dataclass
class PowerOptions:
    """`rmboost power`'s flags. Accuracies may be shares or percentages; differences and SDs are points."""

    accuracy: float = option(0.6, check=accuracy_check, help="Accuracy of the models compared (0.6 or 60).")
    difference: list[float] | None = option(None, flags=("--difference", "-d"), help="Difference to detect, in points; repeatable (default 1, 2, 3).")
    pairs: int | None = option(None, check=at_least(1), help="Test pairs you have: the seeds column and the detectable difference use it.")
    pairs_per_question: float | None = option(None, check=at_least(1), help="Test pairs per question (prompt); 1 = independent pairs.")
    questions: int | None = option(None, check=at_least(1), help="Questions in your test set (with --pairs: sets pairs per question).")
    test: Path | None = option(None, help="A pair file: pairs and pairs per question (its `group` column) from it; not with --pairs, --questions or --pairs-per-question.")
    icc: float = reuse(Design, "icc")
    seeds: int = reuse(Design, "seeds")
    seed_sd: float = option(0.0, check=at_least(0), help="SD of one model's accuracy over seeds, in points.")
    discordance: float | None = option(None, help="Share of pairs the two models disagree on (default: independent errors, 2p(1-p)).")
    alpha: float = reuse(Design, "alpha")
    power: float = reuse(Design, "power")


def check_sources(opts: PowerOptions) -> None:
    """One source for each number: --test gives the pairs and the pairs per question, --pairs with
    --questions or --pairs-per-question gives them by hand; any two that overlap are refused."""
    given = [f for f, v in (("--pairs", opts.pairs), ("--questions", opts.questions),
                            ("--pairs-per-question", opts.pairs_per_question)) if v is not None]
    if opts.test is not None and given:
        raise ValueError(f"--test {opts.test} gives the pairs and pairs per question; drop {' and '.join(given)}, or --test")
    if opts.questions is not None and opts.pairs_per_question is not None:
        raise ValueError("--questions (with --pairs) and --pairs-per-question both set pairs per question: give one")
    if opts.questions is not None and opts.pairs is None:
        raise ValueError("--questions sets pairs per question together with --pairs: give --pairs too")


@options_cli.command(PowerOptions)
def power(opts: PowerOptions) -> None:
    """Test pairs, questions and seeds needed to detect a difference between two reward models."""
    from rmboost.power import plan, undetectable

    p = as_share(opts.accuracy)
    pairs, questions, m = opts.pairs, opts.questions, opts.pairs_per_question
    try:
        check_sources(opts)
        if opts.test is not None:
            from rmboost.rm.data import read_pairs
            from rmboost.rm.evaluate import resampling_units
            from rmboost.stats import cluster_size

            rows = read_pairs(opts.test, "none")
            unit, n_units, _ = resampling_units(rows)
            pairs, questions, m = len(rows), n_units, cluster_size(unit, n_units)
        elif m is None:
            m = pairs / questions if pairs and questions else 1.0
        # Unequal question sizes: the design effect takes the size-weighted m, counting questions the mean.
        mean = pairs / questions if pairs and questions else m
        design = Design(pairs=pairs or 1, pairs_per_question=m, icc=opts.icc, seeds=opts.seeds,
                        seed_sd=opts.seed_sd / 100, alpha=opts.alpha, power=opts.power, question_size=mean)
        result = plan([d / 100 for d in (opts.difference or [1.0, 2.0, 3.0])], p, design, opts.discordance)
    except USER_ERRORS as exc:
        raise fail(str(exc)) from None
    models = (f"for a difference d, models at {100 * p:.1f}% -/+ d/2 with independent errors "
              "(--discordance sets how often they disagree)" if result["discordance_assumed_independent"]
              else f"the two models disagree on {100 * result['discordance']:.1f}% of pairs")
    out.print(
        f"assumptions: accuracy {100 * p:.1f}%; {models}; "
        f"{mean:.2f} pairs per question{'' if abs(m - mean) < 0.005 else f' (size-weighted {m:.2f})'}, "
        f"ICC {opts.icc:.2f} -> design effect {design.design_effect:.2f}; "
        f"{opts.seeds} seed(s) per model, seed SD {opts.seed_sd:.1f} points; {opts.alpha:.0%} two-sided, "
        f"{opts.power:.0%} power",
        highlight=False,
    )
    table = Table(title="to detect a paired difference between two reward models")
    for col in ("difference", "disagree on", "test pairs", "questions",
                f"seeds per model at {pairs} pairs" if pairs else "seeds"):
        table.add_column(col, justify="right")
    for row in result["rows"]:
        seeds = ("-" if not pairs else "no number (test set too small)" if row["seeds_at_pairs"] is None
                 else "give --seed-sd" if not opts.seed_sd else str(row["seeds_at_pairs"]))
        table.add_row(
            f"{100 * row['difference']:g} point{'' if round(100 * row['difference'], 9) == 1 else 's'}",
            f"{100 * row['discordance']:.1f}%",
            "no number (seed noise too large)" if row["pairs"] is None else f"{row['pairs']:,}",
            "-" if row["questions"] is None else f"{row['questions']:,}",
            seeds,
        )
    out.print(table)
    if pairs:
        units = round(questions or design.questions)
        reason = undetectable(units, pairs, opts.alpha)
        found = (f"not available ({reason})" if reason else f"{100 * result['mdd']:.1f} points")
        out.print(f"with {pairs:,} pairs ({units:,} questions) and {opts.seeds} seed(s): "
                  f"smallest detectable difference {found}", highlight=False)
