"""Reward-augmented preference data (arXiv 2410.08067): condition each pair on a goal quality score.

A training pair (x, y_w, y_l) with quality scores (s_w, s_l) becomes two rows:

    goal s_w:  prompt = goal(s_w) + x,  chosen = y_w, rejected = y_l
    goal s_l:  prompt = goal(s_l) + x,  chosen = y_l, rejected = y_w     (swapped)

Asked for an answer of quality s_l, the answer that has quality s_l is the right one; so DPO on
the doubled data learns what each score level looks like instead of only "y_w beats y_l", and a
good rejected response is no longer simply pushed down. At inference the policy is asked for the
top of the scale (`rmboost sample`).

The goal format and the building of one row (the swap) are `rmboost.align.goals`; where the
scores come from (columns, a reward model, the judge) is `rmboost.align.scores`. This module is
the job: read, score, filter, double, write.

The test split is never augmented: `--split test` writes each pair once, unswapped, under the
top-of-scale goal (the condition the policy is evaluated under) and needs no scores.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmboost import options
from rmboost.align.goals import GoalFlags, GoalSpec, format_score, goal_row
from rmboost.align.scores import fine_grained_mean, judge_scores, read_score, rm_scores, round_score
from rmboost.data.inputs import InputError
from rmboost.data.messages import SourcePair, read_source_pairs
from rmboost.data.pairs import atomic_write_jsonl, input_written_over, sidecar, write_summary
from rmboost.methods.judge import CONNECTION, JudgeOptions
from rmboost.options import at_least, group, option
from rmboost.tasks import load_task

SCORE_SOURCES = "columns, judge or rm:PATH"


# ---------------------------------------------------------------------------------------------
# Filtering and doubling


def relabel_pairs(
    pairs: Sequence[SourcePair],
    spec: GoalSpec,
    scores: Sequence[tuple[float, float] | None] | None,
    *,
    split: str = "train",
    drop_ties: bool = False,
    fine_grained: tuple[str, str] | None = None,
    drop_columns: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(relabelled rows, removed rows with a reason).

    Train: each kept pair gives the goal-s_w row and the swapped goal-s_l row. A pair is removed
    when its fine-grained mean for chosen is below rejected's (or has an N/A rating), when its
    score could not be obtained (score None), or, with `drop_ties`, when s_w == s_l.
    Test: every pair once, unswapped, at the top goal; no scores, no filter.
    """
    if split not in ("train", "test"):
        raise ValueError(f"--split {split!r}: use train or test")
    drop = [*drop_columns, *(fine_grained or ())]
    if split == "test":
        return [goal_row(p, spec, spec.high, swapped=False, split="test", scores=None, drop=drop) for p in pairs], []
    if scores is None or len(scores) != len(pairs):
        raise ValueError("relabelling a training split needs one (chosen, rejected) score pair per row")
    out: list[dict[str, Any]] = []
    removed: list[dict[str, Any]] = []
    for pair, score in zip(pairs, scores, strict=True):
        reason: str | None = None
        detail: dict[str, Any] = {}
        if score is None:
            reason = "no_score"
        elif fine_grained is not None:
            mc = fine_grained_mean(pair.row, fine_grained[0], pair.where)
            mr = fine_grained_mean(pair.row, fine_grained[1], pair.where)
            detail = {"fine_grained_chosen": mc, "fine_grained_rejected": mr}
            if mc is None or mr is None:
                reason = "fine_grained_na"
            elif mc < mr:
                reason = "fine_grained_chosen_below_rejected"
        if reason is None and drop_ties and score is not None and score[0] == score[1]:
            reason = "tie"
        if reason is not None:
            removed.append({**pair.row, "relabel": {"reason": reason, "scores": score, **detail}})
            continue
        assert score is not None
        out.append(goal_row(pair, spec, score[0], swapped=False, split="train", scores=score, drop=drop))
        out.append(goal_row(pair, spec, score[1], swapped=True, split="train", scores=score, drop=drop))
    return out, removed


# ---------------------------------------------------------------------------------------------
# The job


def score_source_check(source: str) -> str | None:
    ok = source in ("columns", "judge") or (source.startswith("rm:") and len(source) > 3)
    return None if ok else f"{source!r}: use {SCORE_SOURCES}"


@dataclass
class FineGrainedColumns:
    """`relabel`'s two per-aspect rating columns, given together or not at all."""

    chosen_fine_grained: str | None = option(None, help="Column of the chosen response's per-aspect ratings (list, dict or number); with --rejected-fine-grained keeps pairs whose chosen mean >= rejected mean.")
    rejected_fine_grained: str | None = option(None, help="Column of the rejected response's per-aspect ratings.")

    def pair(self) -> tuple[str, str] | None:
        if (self.chosen_fine_grained is None) != (self.rejected_fine_grained is None):
            raise ValueError("give both --chosen-fine-grained and --rejected-fine-grained, or neither")
        return (self.chosen_fine_grained, self.rejected_fine_grained) if self.chosen_fine_grained else None  # type: ignore[return-value]


@dataclass
class RelabelConfig:
    """What `rmboost relabel` does: its flags, in this order."""

    input: Path = option(argument=True, help="Pairs (.jsonl/.parquet/...): prompt, chosen, rejected (plain or chat) and, with --scores-from columns, their scores.")
    output: Path = option(flags=("--output", "-o"), help="Relabelled pairs (.jsonl); <name>.summary.json and, if any pair is removed, <name>.filtered.jsonl beside it.")
    spec: GoalSpec = option(default_factory=GoalSpec, cli_type=GoalFlags, parse=GoalFlags.spec)
    split: str | None = option(None, choices=("train", "test"), help="train (double and swap) or test (never augmented: each pair once at the top goal). Default train, but a file that looks like a test split must say so.")
    scores_from: str = option("columns", check=score_source_check, help="columns (--chosen-score/--rejected-score), judge (the LLM judge rates each response 1-10) or rm:PATH (a train-rm model, rewards mapped onto the scale).")
    chosen_score: str = option("chosen_score", help="Column with the chosen response's score (dotted paths reach into dicts).")
    rejected_score: str = option("rejected_score", help="Column with the rejected response's score.")
    digits: int | None = option(None, flags=("--score-digits",), check=at_least(0), help="Round scores to this many decimals (default: columns as given, judge/rm to whole numbers).")
    rm_mapping: str = option("quantile", choices=("quantile", "linear"), noun="mapping", help="rm: quantile (rank among all responses, spread over the scale) or linear (min-max).")
    fine_grained: tuple[str, str] | None = option(None, cli_type=FineGrainedColumns, parse=FineGrainedColumns.pair)
    drop_ties: bool = option(False, help="Remove pairs whose two scores are equal (kept by default: both rows then say 'equally good at this score').")
    task: str = option("qa_feedback", help="Task whose guideline the judge applies.")
    # The judge is the only model here: its connection defaults are the backend's own, and it
    # rates single responses, where log-probabilities (the expected score) suit small models.
    judge: JudgeOptions = group(
        JudgeOptions, prefix="judge_", only=(*CONNECTION, "mode", "temperature"),
        defaults={"backend": "llamacpp", "api_key_env": "OPENAI_API_KEY", "mode": "logprobs"},
        help={"backend": "Judge backend: llamacpp (embedded model by default) or openai.",
              "mode": "logprobs (expected score from the next-token probabilities of 1-10) or text (parse the <score> tag).",
              "temperature": "Judge sampling temperature (text mode; 0: greedy)."},
    )
    concurrency: int = option(1, check=at_least(1), help="Judge requests in flight.")
    seed: int = option(0)
    cache: Path | None = option(None, help="Request cache (SQLite); default ~/.cache/rmboost/llm-cache.sqlite.")


def looks_like_test(path: Path) -> bool:
    """A file name with a test word among its parts: test.jsonl, qaf_test.parquet, v1.test-set.jsonl."""
    name = re.sub(r"(\.(jsonl|json|parquet|csv|gz|zst|arrow))+$", "", path.name.lower())
    return re.search(r"(^|[-_.])(test|testing|heldout|held-out)($|[-_.])", name) is not None


def resolve_split(cfg: RelabelConfig, pairs: Sequence[SourcePair]) -> str:
    """The split to treat the file as; guards against doubling a test split by accident."""
    if cfg.split is not None and cfg.split not in ("train", "test"):
        raise ValueError(f"--split {cfg.split!r}: use train or test")
    marked = next((p for p in pairs if str(p.row.get("split", "")).lower() == "test"), None)
    if cfg.split == "train" and marked is not None:
        raise InputError(
            f"{marked.where}: this row is marked split=test; the test split is never augmented "
            "(use --split test, which adds the top goal without doubling)"
        )
    if cfg.split is not None:
        return cfg.split
    if marked is not None or looks_like_test(cfg.input):
        raise InputError(
            f"{cfg.input} looks like a test split, and the test split is never augmented: pass --split test "
            "(each pair once, at the top goal, not doubled or swapped) or --split train if it is training data"
        )
    return "train"


def get_scores(
    cfg: RelabelConfig, pairs: Sequence[SourcePair], say: Any, judge_backend: Any = None, progress: Any = None
) -> tuple[list[tuple[float, float] | None], dict[str, Any], list[str]]:
    """(chosen, rejected) scores per pair from cfg.scores_from, what they came from, and the input
    columns they replace in the output."""
    spec = cfg.spec
    digits = 0 if cfg.digits is None else cfg.digits  # columns are taken as given unless asked
    if cfg.scores_from == "columns":
        flags = ("--chosen-score", "--rejected-score")
        scores: list[tuple[float, float] | None] = [
            (
                round_score(read_score(p.row, cfg.chosen_score, p.where, spec, flags[0]), cfg.digits),
                round_score(read_score(p.row, cfg.rejected_score, p.where, spec, flags[1]), cfg.digits),
            )
            for p in pairs
        ]
        info = {"source": f"columns:{cfg.chosen_score},{cfg.rejected_score}"}
        return scores, info, [cfg.chosen_score, cfg.rejected_score]
    if cfg.scores_from == "judge":
        if cfg.judge is None:
            raise ValueError("--scores-from judge needs judge options")
        say(f"rating {len(pairs)} pairs with the judge ({cfg.judge.mode} mode)")
        scores, info = asyncio.run(
            judge_scores(
                pairs, cfg.task, cfg.judge, spec, seed=cfg.seed, cache_path=cfg.cache,
                concurrency=cfg.concurrency, digits=digits, judge_backend=judge_backend, progress=progress,
            )
        )
        return scores, info, []
    if cfg.scores_from.startswith("rm:"):
        say(f"scoring {len(pairs)} pairs with the reward model {cfg.scores_from[3:]}")
        rm, info = rm_scores(pairs, cfg.scores_from[3:], spec, cfg.rm_mapping, digits)
        return list(rm), info, []
    raise ValueError(f"--scores-from {cfg.scores_from!r}: use {SCORE_SOURCES}")


def check_config(cfg: RelabelConfig) -> None:
    """Options and their combinations, checked before any file is read or message printed (the
    command line has checked each flag alone; a config built in code is checked here)."""
    options.validate(cfg)
    if cfg.output.suffix != ".jsonl":
        raise ValueError(f"--output {cfg.output}: use a .jsonl file name")
    if written := input_written_over((cfg.output, sidecar(cfg.output, "filtered"), sidecar(cfg.output, "summary")),
                                     [cfg.input]):
        raise ValueError(f"--output {cfg.output} writes {written.name}, which is the input file: choose another --output")
    if cfg.split == "test":  # the test split needs no scores
        return
    if cfg.scores_from == "judge":
        if (cfg.spec.low, cfg.spec.high) != (1.0, 10.0):
            raise ValueError(f"--scores-from judge rates on 1-10, but the goal scale is {cfg.spec.scale}: use --scale 1-10")
        load_task(cfg.task)  # an unknown task or a bad task file: TaskError names it
    elif cfg.scores_from.startswith("rm:"):
        model = Path(cfg.scores_from[3:])
        if not (model / "config.json").is_file():
            raise FileNotFoundError(f"reward model not found: {model} (expected a folder written by `rmboost train-rm`)")


def run_relabel(cfg: RelabelConfig, log: Any = None, judge_backend: Any = None, progress: Any = None) -> dict[str, Any]:
    """Read, score, filter, double and write; returns the summary (also saved beside the output).

    The options are checked first (`check_config`); every row is read and validated (scores,
    fine-grained columns) before anything is written, and the output is written atomically, so a
    bad row costs nothing but the message.
    """
    started = time.perf_counter()
    say = log or (lambda _m: None)
    check_config(cfg)
    spec = cfg.spec
    pairs = read_source_pairs(cfg.input)
    split = resolve_split(cfg, pairs)
    info: dict[str, Any] = {"source": cfg.scores_from}
    scores: list[tuple[float, float] | None] | None = None
    drop: list[str] = []
    if split == "train":
        if cfg.fine_grained is not None:  # validate every row before paying for any score
            for p in pairs:
                for column in cfg.fine_grained:
                    fine_grained_mean(p.row, column, p.where)
        scores, info, drop = get_scores(cfg, pairs, say, judge_backend, progress)
    rows, removed = relabel_pairs(
        pairs, spec, scores, split=split, drop_ties=cfg.drop_ties, fine_grained=cfg.fine_grained,
        drop_columns=drop,
    )
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(cfg.output, rows)
    removed_path = sidecar(cfg.output, "filtered")
    if removed or removed_path.exists():
        atomic_write_jsonl(removed_path, removed)
    kept_rows = [r for r in rows if not r["goal_swapped"]] if split == "train" else []
    kept = ([(r["score_chosen"], r["score_rejected"]) for r in kept_rows] if split == "train"
            else [s for s in (scores or []) if s is not None])  # the pairs written, not those --drop-ties removed
    summary = {
        "input": str(cfg.input),
        "output": str(cfg.output),
        "split": split,
        "goal": spec.as_dict(),
        "scores": info,
        "pairs_in": len(pairs),
        "pairs_kept": len(pairs) - len(removed),
        "rows_out": len(rows),
        "removed": dict(Counter(r["relabel"]["reason"] for r in removed)),
        "removed_file": str(removed_path) if removed else None,
        "ties": sum(1 for r in kept_rows if r["score_chosen"] == r["score_rejected"]),
        "chosen_scored_lower": sum(1 for r in kept_rows if r["score_chosen"] < r["score_rejected"]),
        "goal_scores": dict(sorted(Counter(format_score(r["goal_score"]) for r in rows).items(),
                                   key=lambda kv: float(kv[0]))),
        "mean_score_chosen": round(sum(s[0] for s in kept) / len(kept), 4) if kept else None,
        "mean_score_rejected": round(sum(s[1] for s in kept) / len(kept), 4) if kept else None,
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    write_summary(cfg.output, summary)
    return summary
