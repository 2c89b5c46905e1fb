"""Render the generation instructions from Jinja2 templates (templates/*.j2) and a task spec.

The structure follows the RMBoost paper (role, task description, guideline with aspects,
inputs in tags, answer in <response> tags); the wording is ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jinja2

from rmboost.llm.types import Message
from rmboost.tasks import Aspect, TaskSpec

AspectMode = Literal["model-selects", "sample", "none"]
ASPECT_MODES: tuple[str, ...] = ("model-selects", "sample", "none")
Label = Literal["better", "worse"]

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("rmboost", "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
    auto_reload=False,  # the packaged templates do not change under a running job (saves a stat per render)
)


def format_value(value: Any) -> str:
    """Render an input value as prompt text.

    Strings pass through; a list of passages ([title, sentence, ...] lists or {title, content}
    dicts, as in QA-Feedback) becomes numbered "[i] title: text" lines; other lists one item a line.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, dict):
        return _format_passage(value)
    if isinstance(value, list | tuple):
        if any(isinstance(v, list | tuple | dict) for v in value):
            return "\n".join(f"[{i}] {_format_passage(v)}" for i, v in enumerate(value, 1))
        return "\n".join(str(v).strip() for v in value)
    return str(value)


def _format_passage(passage: Any) -> str:
    if isinstance(passage, dict):
        title = str(passage.get("title") or "").strip()
        body = str(passage.get("content") or passage.get("text") or "").strip()
    elif isinstance(passage, list | tuple) and passage:
        title = str(passage[0]).strip()
        sentences = [str(s) for s in passage[1:]]
        # QA-Feedback's first sentence repeats the title on a line of its own; drop that echo.
        if sentences and title and sentences[0].startswith(title + "\n"):
            sentences[0] = sentences[0][len(title) :]
        body = " ".join(s.strip() for s in sentences if s.strip())
    else:
        return str(passage).strip()
    return f"{title}: {body}" if title else body


def _context(task: TaskSpec, row: dict[str, Any], aspect_mode: AspectMode) -> dict[str, Any]:
    reference = row.get(task.reference_field) if task.reference_field else None
    return {
        "task": task,
        "noun": task.response_noun,
        "aspects": list(task.aspects) if aspect_mode != "none" else [],
        "inputs": [
            {"tag": f.tag, "value": format_value(row.get(f.name))}
            for f in task.inputs
            if format_value(row.get(f.name))
        ],
        "reference": format_value(reference) if reference else "",
    }


def _render(template: str, **ctx: Any) -> list[Message]:
    text = _env.get_template(template).render(**ctx)
    text = "\n".join(line.rstrip() for line in text.splitlines())
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return [{"role": "user", "content": text.strip()}]


def first_response_messages(
    task: TaskSpec, row: dict[str, Any], aspect_mode: AspectMode = "model-selects"
) -> list[Message]:
    """The instruction for y1: a good response to x."""
    return _render("first_response.j2", **_context(task, row, aspect_mode))


def rewrite_messages(
    task: TaskSpec,
    row: dict[str, Any],
    y1: str,
    label: Label,
    aspect_mode: AspectMode = "model-selects",
    targets: Sequence[Aspect] = (),
) -> list[Message]:
    """The instruction for y2: rewrite y1 into a better or worse response along aspects."""
    if aspect_mode == "sample" and not targets:
        raise ValueError("aspect mode 'sample' needs the sampled target aspects")
    return _render(
        "rewrite.j2",
        **_context(task, row, aspect_mode),
        label=label,
        mode=aspect_mode,
        targets=list(targets),
        y1=y1.strip(),
    )


def contrast_messages(
    task: TaskSpec, row: dict[str, Any], polarity: Literal["positive", "negative"]
) -> list[Message]:
    """RLCD's contrasting instructions: a good response, or a bad one."""
    return _render("contrast.j2", **_context(task, row, "model-selects"), polarity=polarity)


def judge_messages(
    task: TaskSpec, row: dict[str, Any], first: str, second: str, mode: str = "text"
) -> list[Message]:
    """RLAIF's side-by-side comparison of two responses."""
    return _render(
        "judge.j2", **_context(task, row, "model-selects"), first=first.strip(), second=second.strip(), mode=mode
    )


def rating_messages(task: TaskSpec, row: dict[str, Any], candidate: str) -> list[Message]:
    """A 1-10 rating of one response (West-of-N's LLM scorer)."""
    return _render("rating.j2", **_context(task, row, "model-selects"), candidate=candidate.strip())
