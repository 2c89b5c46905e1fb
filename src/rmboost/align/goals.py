"""Goal scores in prompts (reward-augmented DPO, arXiv 2410.08067): the format and the swap.

A goal is a short instruction naming the target quality score (a configurable template with
`{score}`, `{low}` and `{high}`), written as a system message (`system`) or put in front of the
last user turn (`user`). `GoalSpec` is that format; `goal_row` builds one relabelled row from a
pair: at the chosen response's score as is, or at the rejected one's with the responses swapped.
Both rows of a pair are built from the ORIGINAL prompt, so the goal appears exactly once in each
and the second row really swaps the responses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rmboost.data.messages import SourcePair, Text, chat_response, last_user_turn, user_turn
from rmboost.options import option

DEFAULT_GOAL_TEMPLATE = (
    "Write a response that would be rated {score} for overall quality on a scale from "
    "{low} (poor) to {high} (excellent)."
)
VARIANTS = ("system", "user")


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

    def user_prefix(self, score: float) -> str:
        """What the `user` variant puts in front of the user turn ("" for `system`).

        Cutting a long prompt must keep it whole (see align.policy.fit_prompt)."""
        return f"{self.text(score)}\n\n" if self.variant == "user" else ""

    def condition(self, prompt: Text, score: float) -> Text:
        """The prompt with the goal added once; the input is never modified.

        `system`: a plain prompt becomes [system goal, user prompt]; a conversation gets the goal as
        its system message (in front of an existing system message's text). `user`: the goal goes
        in front of the last user turn (the one the response answers), separated by a blank line.
        """
        goal = self.text(score)
        if self.variant == "user":
            if isinstance(prompt, str):
                return self.user_prefix(score) + prompt
            msgs = [dict(m) for m in prompt]
            last = last_user_turn(msgs)
            if last is None:
                raise ValueError("the prompt has no user turn to put the goal in front of")
            msgs[last]["content"] = self.user_prefix(score) + msgs[last]["content"]
            return msgs
        if isinstance(prompt, str):
            return [{"role": "system", "content": goal}, *user_turn(prompt)]
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


SCORE_COLUMNS = ("score_chosen", "score_rejected")
_OUT_FIRST = ("prompt", "chosen", "rejected", "id", "goal_score", "goal_swapped", *SCORE_COLUMNS)


_GOAL = GoalSpec()


@dataclass
class GoalFlags:
    """A GoalSpec as `relabel` takes it on the command line (the scale as one LOW-HIGH flag)."""

    variant: str = option(_GOAL.variant, help="Where the goal goes: system (a system message) or user (in front of the user turn).")
    goal_template: str | None = option(
        None, flags=("--goal-template",),
        help="Goal instruction with {score} (and {low}, {high}); default: 'Write a response that would be rated {score} ...'.",
    )
    scale: str = option(f"{_GOAL.low:g}-{_GOAL.high:g}", help="Goal score scale LOW-HIGH; the top is what `sample` asks for.")

    def spec(self) -> GoalSpec:
        low, high = parse_scale(self.scale)
        return GoalSpec(variant=self.variant, template=self.goal_template or _GOAL.template, low=low, high=high)


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
    if isinstance(prompt, list):  # the system variant makes a plain row chat: one format per row
        chosen, rejected = chat_response(chosen), chat_response(rejected)
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
