"""Reward-augmented preference data (arXiv 2410.08067): condition each pair on a goal quality score.

A training pair (x, y_w, y_l) with quality scores (s_w, s_l) becomes two rows:

    goal s_w:  prompt = goal(s_w) + x,  chosen = y_w, rejected = y_l
    goal s_l:  prompt = goal(s_l) + x,  chosen = y_l, rejected = y_w     (swapped)

Asked for an answer of quality s_l, the answer that has quality s_l is the right one; so DPO on
the doubled data learns what each score level looks like instead of only "y_w beats y_l", and a
good rejected response is no longer simply pushed down. At inference the policy is asked for the
top of the scale (`rmboost sample`).

The goal is a short instruction naming the target score (a configurable template), written as a
system message (`system`) or put in front of the user turn (`user`). Both rows of a pair are
built from the ORIGINAL prompt, so the goal appears exactly once in each, and the second row
really swaps the responses (both are easy to get wrong when the second row is derived from the
first).

The test split is never augmented: `--split test` writes each pair once, unswapped, under the
top-of-scale goal (the condition the policy is evaluated under) and needs no scores.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmboost.data.inputs import InputError
from rmboost.data.pairs import atomic_write_jsonl, sidecar
from rmboost.rm.data import _implicit_prompt, _messages, _numbered_rows, get_field, message_text

DEFAULT_GOAL_TEMPLATE = (
    "Write a response that would be rated {score} for overall quality on a scale from "
    "{low} (poor) to {high} (excellent)."
)
VARIANTS = ("system", "user")
SCORE_SOURCES = "columns, judge or rm:PATH"
RM_MAPPINGS = ("quantile", "linear")
NA_WORDS = {"", "n/a", "na", "none", "null", "nan"}


def format_score(value: float) -> str:
    """8.0 -> '8', 7.25 -> '7.25': integral scores print without a decimal point."""
    value = float(value)
    if value.is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def json_number(value: float) -> int | float:
    """An integral score as an int (8, not 8.0) in the written rows too."""
    value = float(value)
    return int(value) if value.is_integer() else value


def parse_scale(text: str) -> tuple[float, float]:
    """'1-10' -> (1.0, 10.0); also '0..1' or '1:7'."""
    match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(?:-|\.\.|:|,)\s*(-?\d+(?:\.\d+)?)\s*", text)
    if not match:
        raise ValueError(f"--scale {text!r}: expected LOW-HIGH, e.g. 1-10")
    low, high = float(match.group(1)), float(match.group(2))
    if not low < high:
        raise ValueError(f"--scale {text!r}: LOW must be below HIGH")
    return low, high


@dataclass(frozen=True)
class GoalSpec:
    """How a goal score is put into a prompt: the variant, the template and the scale."""

    variant: str = "system"
    template: str = DEFAULT_GOAL_TEMPLATE
    low: float = 1.0
    high: float = 10.0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"--variant {self.variant!r}: use system or user")
        if "{score}" not in self.template:
            raise ValueError("--goal-template must contain {score} (and may use {low} and {high})")
        try:
            self.template.format(score="8", low="1", high="10")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"--goal-template {self.template!r}: only {{score}}, {{low}} and {{high}} may be used "
                f"(write literal braces as {{{{ and }}}}): {exc}"
            ) from None
        if not self.low < self.high:
            raise ValueError(f"goal scale {self.low}-{self.high}: LOW must be below HIGH")

    @property
    def scale(self) -> str:
        return f"{format_score(self.low)}-{format_score(self.high)}"

    def text(self, score: float) -> str:
        return self.template.format(score=format_score(score), low=format_score(self.low), high=format_score(self.high))

    def condition(self, prompt: str | list[dict[str, Any]], score: float) -> str | list[dict[str, Any]]:
        """The prompt with the goal added once; the input is never modified.

        `system`: a plain prompt becomes [system goal, user prompt]; a conversation gets the goal as
        its system message (in front of an existing system message's text). `user`: the goal goes
        in front of the last user turn (the one the response answers), separated by a blank line.
        """
        goal = self.text(score)
        if self.variant == "user":
            if isinstance(prompt, str):
                return f"{goal}\n\n{prompt}"
            msgs = [dict(m) for m in prompt]
            last = max((i for i, m in enumerate(msgs) if m.get("role") == "user"), default=None)
            if last is None:
                raise ValueError("the prompt has no user turn to put the goal in front of")
            msgs[last]["content"] = f"{goal}\n\n{msgs[last]['content']}"
            return msgs
        if isinstance(prompt, str):
            return [{"role": "system", "content": goal}, {"role": "user", "content": prompt}]
        msgs = [dict(m) for m in prompt]
        if msgs and msgs[0].get("role") == "system":
            msgs[0]["content"] = f"{goal}\n\n{msgs[0]['content']}" if msgs[0]["content"] else goal
            return msgs
        return [{"role": "system", "content": goal}, *msgs]

    def as_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "template": self.template, "low": self.low, "high": self.high}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> GoalSpec | None:
        """The spec recorded in a relabelled row (None for a plain pair)."""
        if "goal_variant" not in row:
            return None
        return cls(row["goal_variant"], row["goal_template"], float(row["goal_low"]), float(row["goal_high"]))


# ---------------------------------------------------------------------------------------------
# Reading pairs and scores


@dataclass
class SourcePair:
    """One input row with its prompt and responses in their original (plain or chat) format."""

    where: str  # "file, line N"
    index: int
    row: dict[str, Any]
    prompt: str | list[dict[str, Any]]
    chosen: str | list[dict[str, Any]]
    rejected: str | list[dict[str, Any]]

    @property
    def id(self) -> str:
        rid = self.row.get("id")
        return str(rid) if rid not in (None, "") else f"row-{self.index}"


def split_pair(row: dict[str, Any], where: str, index: int) -> SourcePair:
    """prompt/chosen/rejected of a row; an implicit-prompt conversation is split at the shared turns."""
    for name in ("chosen", "rejected"):
        if name not in row or row[name] is None:
            raise InputError(f"{where}: missing field {name!r}")
        if not isinstance(row[name], str):
            _messages(row[name], where, name)
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    if prompt is None:
        implicit = _implicit_prompt(row)
        if implicit is None:
            raise InputError(f"{where}: missing field 'prompt'")
        prompt, chosen, rejected = implicit
    elif not isinstance(prompt, str):
        _messages(prompt, where, "prompt")
    # TRL wants one format per row: a chat prompt with chat responses.
    if not isinstance(prompt, str) or not isinstance(chosen, str) or not isinstance(rejected, str):
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        chosen = [{"role": "assistant", "content": chosen}] if isinstance(chosen, str) else chosen
        rejected = [{"role": "assistant", "content": rejected}] if isinstance(rejected, str) else rejected
    return SourcePair(where, index, row, prompt, chosen, rejected)


def read_source_pairs(path: str | Path) -> list[SourcePair]:
    path = Path(path)
    pairs = [split_pair(row, where, i) for i, (where, row) in enumerate(_numbered_rows(path))]
    if not pairs:
        raise InputError(f"{path}: no pairs in the file")
    return pairs


def read_score(row: dict[str, Any], column: str, where: str, spec: GoalSpec, flag: str) -> float:
    """A score from a column (dotted paths reach into dicts): a finite number on the goal scale."""
    try:
        value = get_field(row, column)
    except KeyError:
        raise InputError(f"{where}: missing score column {column!r} (set {flag})") from None
    number = _number(value)
    if number is None:
        raise InputError(f"{where}: score column {column!r} must be a number, got {value!r}")
    if not spec.low <= number <= spec.high:
        raise InputError(
            f"{where}: score column {column!r} is {format_score(number)}, outside the goal scale {spec.scale} (set --scale)"
        )
    return number


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def fine_grained_mean(row: dict[str, Any], column: str, where: str) -> float | None:
    """Mean of per-aspect ratings (a list, a dict of aspect -> rating, or one number).

    None when any rating is missing ("N/A", null): such a pair is dropped, as one would drop a
    response with an unrated aspect. Anything else that is not a number is an error.
    """
    try:
        value = get_field(row, column)
    except KeyError:
        raise InputError(f"{where}: missing fine-grained column {column!r}") from None
    items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else [value]
    if not items:
        raise InputError(f"{where}: fine-grained column {column!r} is empty")
    numbers = []
    for item in items:
        if item is None or (isinstance(item, str) and item.strip().lower() in NA_WORDS):
            return None
        number = _number(item)
        if number is None:
            raise InputError(f"{where}: fine-grained column {column!r} holds {item!r}, not a number or N/A")
        numbers.append(number)
    return sum(numbers) / len(numbers)


# ---------------------------------------------------------------------------------------------
# Building the relabelled rows


SCORE_COLUMNS = ("score_chosen", "score_rejected")
_OUT_FIRST = ("prompt", "chosen", "rejected", "id", "goal_score", "goal_swapped", *SCORE_COLUMNS)


def goal_row(
    pair: SourcePair,
    spec: GoalSpec,
    goal: float,
    *,
    swapped: bool,
    split: str,
    scores: tuple[float, float] | None,
    drop: Sequence[str] = (),
) -> dict[str, Any]:
    """One output row, always built from the pair's original prompt (so the goal appears once)."""
    chosen, rejected = (pair.rejected, pair.chosen) if swapped else (pair.chosen, pair.rejected)
    prompt = spec.condition(pair.prompt, goal)
    if isinstance(prompt, list) and isinstance(chosen, str):  # the system variant made a plain row chat
        chosen = [{"role": "assistant", "content": chosen}]
        rejected = [{"role": "assistant", "content": rejected}]
    out: dict[str, Any] = {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "id": pair.id + (("#l" if swapped else "#w") if split == "train" else ""),
        "goal_score": json_number(goal),
        "goal_swapped": swapped,
    }
    if scores is not None:
        s_w, s_l = scores
        out["score_chosen"], out["score_rejected"] = (json_number(s_l), json_number(s_w)) if swapped else (json_number(s_w), json_number(s_l))
    out.update(
        goal_variant=spec.variant, goal_template=spec.template, goal_low=json_number(spec.low),
        goal_high=json_number(spec.high),
        source_id=pair.id, split=split,
    )
    # The input's own score columns described the unswapped pair: score_chosen/score_rejected replace them.
    skip = {*_OUT_FIRST, *(c for c in drop if "." not in c)}
    for key, value in pair.row.items():
        if key not in skip and key not in out:
            out[key] = value
    return out


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
# Score sources


def round_score(value: float, digits: int | None) -> float:
    return float(round(value, digits)) if digits is not None else float(value)


def map_rewards(rewards: Sequence[float], spec: GoalSpec, mapping: str = "quantile") -> list[float]:
    """Reward-model outputs (any real numbers) -> the goal scale.

    `quantile`: a response's rank among all scored responses, spread evenly over [low, high]
    (ties share their mean rank), so the goals use the whole scale whatever the reward's units;
    `linear`: min-max scaling of the rewards onto [low, high].
    """
    if mapping not in RM_MAPPINGS:
        raise ValueError(f"--rm-mapping {mapping!r}: use quantile or linear")
    n = len(rewards)
    if n == 0:
        return []
    span = spec.high - spec.low
    if mapping == "linear":
        lo, hi = min(rewards), max(rewards)
        if hi == lo:
            return [spec.low + span / 2] * n
        return [spec.low + span * (r - lo) / (hi - lo) for r in rewards]
    if n == 1:
        return [spec.low + span / 2]
    order = sorted(range(n), key=lambda i: rewards[i])
    ranks = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and rewards[order[j + 1]] == rewards[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return [spec.low + span * r / (n - 1) for r in ranks]


def _response_text(value: str | list[dict[str, Any]]) -> str:
    if isinstance(value, str):
        return value
    return "\n\n".join(m["content"] for m in value if m.get("role") == "assistant") or value[-1]["content"]


def rm_scores(
    pairs: Sequence[SourcePair], model: str | Path, spec: GoalSpec, mapping: str = "quantile",
    digits: int | None = 0, batch_size: int = 32,
) -> tuple[list[tuple[float, float]], dict[str, Any]]:
    """Scores from a reward model trained by `rmboost train-rm`, mapped onto the goal scale."""
    from rmboost.rm.score import RewardScorer

    scorer = RewardScorer(model, batch_size=batch_size)
    prompts = [scorer.prompt_for(p.row, default=message_text(p.prompt, p.where, "prompt")) for p in pairs]
    texts = [_response_text(p.chosen) for p in pairs] + [_response_text(p.rejected) for p in pairs]
    rewards = scorer.score(prompts + prompts, texts)
    # Map over DISTINCT (prompt, response): a response in several pairs counts once in the ranks.
    keys = list(zip(prompts + prompts, texts, strict=True))
    distinct = list(dict.fromkeys(keys))
    value = dict(zip(keys, rewards, strict=True))
    mapped = dict(zip(distinct, map_rewards([value[k] for k in distinct], spec, mapping), strict=True))
    goal = [round_score(mapped[k], digits) for k in keys]
    n = len(pairs)
    info = {"source": f"rm:{model}", "mapping": mapping, "responses_scored": len(distinct),
            "reward_range": [min(rewards), max(rewards)]}
    return list(zip(goal[:n], goal[n:], strict=True)), info


async def judge_scores(
    pairs: Sequence[SourcePair], task_name: str, judge_opts: Any, spec: GoalSpec, *, seed: int = 0,
    cache_path: Path | None = None, concurrency: int = 1, digits: int | None = 0, judge_backend: Any = None,
    progress: Any = None,
) -> tuple[list[tuple[float, float] | None], dict[str, Any]]:
    """Scores from the LLM judge's 1-10 rating of each response (validated; see Judge.rate).

    Each distinct (task inputs, response) is rated once, under an id derived from its content, so
    a response shared by several pairs costs one call and a re-run costs none (the cache).
    A response the judge could not rate leaves its pairs without a score (they are removed).
    """
    from rmboost.filtering import _judge_row
    from rmboost.llm.cache import RequestCache
    from rmboost.methods.common import StepFailed
    from rmboost.methods.judge import make_judge
    from rmboost.tasks import load_task

    if (spec.low, spec.high) != (1.0, 10.0):
        raise ValueError(f"--scores-from judge rates on 1-10, but the goal scale is {spec.scale}: use --scale 1-10")
    rows = [_judge_row(p.row, p.index, p.where.split(",")[0]) for p in pairs]
    task = load_task(task_name)
    cache = RequestCache(cache_path) if cache_path else None
    judge = make_judge(judge_opts, task, seed, cache, concurrency, backend=judge_backend)
    todo: dict[str, tuple[dict[str, Any], str]] = {}
    keys: list[tuple[str, str]] = []
    for pair, row in zip(pairs, rows, strict=True):
        inputs = json.dumps({k: v for k, v in row.items() if k != "id"}, sort_keys=True, ensure_ascii=False)
        pair_keys = []
        for response in (pair.chosen, pair.rejected):
            text = _response_text(response)
            key = hashlib.sha1(f"{inputs}\x1e{text}".encode()).hexdigest()[:16]
            todo.setdefault(key, ({**row, "id": f"rate-{key}"}, text))
            pair_keys.append(key)
        keys.append((pair_keys[0], pair_keys[1]))
    results: dict[str, float | None] = {}
    failures: Counter[str] = Counter()
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def one(key: str, row: dict[str, Any], text: str) -> None:
        async with semaphore:
            try:
                value, _ = await judge.rate(row, text, index=0, step="score")
                results[key] = round_score(value, digits)
            except StepFailed as fail:
                results[key] = None
                failures[fail.reason] += 1
            if progress is not None:
                progress()

    try:
        await judge.ctx.llm.backend.check()
        await asyncio.gather(*(one(k, r, t) for k, (r, t) in todo.items()))
    finally:
        await judge.ctx.llm.backend.aclose()
        if cache is not None:
            cache.close()
    scores: list[tuple[float, float] | None] = []
    for kc, kr in keys:
        sc, sr = results.get(kc), results.get(kr)
        scores.append(None if sc is None or sr is None else (sc, sr))
    usage = judge.ctx.llm.usage.as_dict()
    info = {"source": "judge", "mode": judge.mode, "responses_scored": len(todo), "judge_failures": dict(failures),
            "usage": usage}
    return scores, info


# ---------------------------------------------------------------------------------------------
# The job


@dataclass
class RelabelConfig:
    """What `rmboost relabel` does; the CLI fills it from flags."""

    input: Path
    output: Path
    spec: GoalSpec = field(default_factory=GoalSpec)
    split: str | None = None  # None: train, but refuse a file that looks like a test split
    scores_from: str = "columns"  # columns | judge | rm:PATH
    chosen_score: str = "chosen_score"
    rejected_score: str = "rejected_score"
    digits: int | None = None  # round scores to this many decimals (None: columns as given, else 0)
    rm_mapping: str = "quantile"
    fine_grained: tuple[str, str] | None = None  # (chosen column, rejected column)
    drop_ties: bool = False
    task: str = "qa_feedback"  # whose guideline the judge applies
    judge: Any = None  # JudgeOptions
    seed: int = 0
    cache: Path | None = None
    concurrency: int = 1


def looks_like_test(path: Path) -> bool:
    stem = path.name.split(".")[0].lower()
    return re.search(r"(^|[-_])(test|testing|heldout|held-out)($|[-_])", stem) is not None


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


def run_relabel(cfg: RelabelConfig, log: Any = None, judge_backend: Any = None, progress: Any = None) -> dict[str, Any]:
    """Read, score, filter, double and write; returns the summary (also saved beside the output).

    Every row is read and validated (scores, fine-grained columns) before anything is written,
    and the output is written atomically, so a bad row costs nothing but the message.
    """
    started = time.perf_counter()
    say = log or (lambda _m: None)
    if cfg.output.suffix != ".jsonl":
        raise ValueError(f"--output {cfg.output}: use a .jsonl file name")
    if cfg.output.resolve() == Path(cfg.input).resolve():
        raise ValueError("--output must differ from the input file")
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
        if cfg.scores_from == "columns":
            flags = ("--chosen-score", "--rejected-score")
            scores = [
                (
                    round_score(read_score(p.row, cfg.chosen_score, p.where, spec, flags[0]), cfg.digits),
                    round_score(read_score(p.row, cfg.rejected_score, p.where, spec, flags[1]), cfg.digits),
                )
                for p in pairs
            ]
            drop = [cfg.chosen_score, cfg.rejected_score]
            info = {"source": f"columns:{cfg.chosen_score},{cfg.rejected_score}"}
        elif cfg.scores_from == "judge":
            if cfg.judge is None:
                raise ValueError("--scores-from judge needs judge options")
            say(f"rating {len(pairs)} pairs with the judge ({cfg.judge.mode} mode)")
            scores, info = asyncio.run(
                judge_scores(
                    pairs, cfg.task, cfg.judge, spec, seed=cfg.seed, cache_path=cfg.cache,
                    concurrency=cfg.concurrency, digits=0 if cfg.digits is None else cfg.digits,
                    judge_backend=judge_backend, progress=progress,
                )
            )
        elif cfg.scores_from.startswith("rm:"):
            say(f"scoring {len(pairs)} pairs with the reward model {cfg.scores_from[3:]}")
            scores, info = rm_scores(
                pairs, cfg.scores_from[3:], spec, cfg.rm_mapping, 0 if cfg.digits is None else cfg.digits
            )
        else:
            raise ValueError(f"--scores-from {cfg.scores_from!r}: use {SCORE_SOURCES}")
    rows, removed = relabel_pairs(
        pairs, spec, scores, split=split, drop_ties=cfg.drop_ties, fine_grained=cfg.fine_grained,
        drop_columns=drop,
    )
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(cfg.output, rows)
    removed_path = sidecar(cfg.output, "filtered")
    if removed or removed_path.exists():
        atomic_write_jsonl(removed_path, removed)
    kept = [s for s in (scores or []) if s is not None]
    kept_rows = [r for r in rows if not r["goal_swapped"]] if split == "train" else []
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
    sidecar(cfg.output, "summary").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    return summary
