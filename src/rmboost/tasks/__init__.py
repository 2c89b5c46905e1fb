"""Task specs: what the inputs are, how they are shown, and the aspects a response is judged on.

Built-in specs live in `tasks/builtin/*.yaml`; a user adds a task by passing the path of a YAML
file with the same keys (see README, "Your own task").
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml


class TaskError(ValueError):
    """A task name or task file is wrong; the message says what and where."""


@dataclass(frozen=True)
class Aspect:
    name: str
    title: str
    description: str


@dataclass(frozen=True)
class InputField:
    name: str
    tag: str
    required: bool = True


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    role: str
    goal: str
    guideline: str
    aspects: tuple[Aspect, ...]
    inputs: tuple[InputField, ...]
    prompt_template: str
    response_noun: str = "response"
    reference_field: str | None = None
    source: str = "builtin"
    extra: dict[str, Any] = field(default_factory=dict)

    def aspect(self, name: str) -> Aspect:
        for a in self.aspects:
            if a.name == name:
                return a
        known = ", ".join(a.name for a in self.aspects)
        raise TaskError(f"task {self.name!r} has no aspect {name!r} (known: {known})")

    def render_prompt(self, row: dict[str, Any]) -> str:
        """The prompt x as a reward model or policy sees it (not the generation instruction)."""
        values = {f.name: row.get(f.name, "") for f in self.inputs}
        return _compiled(self.prompt_template).render(**values).strip()

    def missing_fields(self, row: dict[str, Any]) -> list[str]:
        return [f.name for f in self.inputs if f.required and _is_blank(row.get(f.name))]


_jinja = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)


@functools.lru_cache(maxsize=64)
def _compiled(source: str) -> jinja2.Template:
    """Compile a prompt template once, not once per row (compiling cost ~10x the rendering)."""
    return _jinja.from_string(source)


_REQUIRED_KEYS = ("name", "role", "goal", "guideline", "aspects", "inputs", "prompt_template")


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def builtin_task_names() -> list[str]:
    folder = resources.files("rmboost.tasks") / "builtin"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_task(name_or_path: str | Path) -> TaskSpec:
    """A built-in task by name, or a user task from a YAML file path."""
    text = str(name_or_path)
    if text in builtin_task_names():
        data = (resources.files("rmboost.tasks") / "builtin" / f"{text}.yaml").read_text("utf-8")
        return task_from_dict(yaml.safe_load(data), source="builtin")
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise TaskError(f"task file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text("utf-8"))
        except yaml.YAMLError as exc:
            raise TaskError(f"task file {path} is not valid YAML: {exc}") from exc
        return task_from_dict(data, source=str(path))
    known = ", ".join(builtin_task_names())
    raise TaskError(f"unknown task {text!r}: use one of {known}, or the path of a task YAML file")


def task_from_dict(data: Any, source: str = "dict") -> TaskSpec:
    if not isinstance(data, dict):
        raise TaskError(f"task {source}: expected a mapping at the top level")
    missing = [k for k in _REQUIRED_KEYS if not data.get(k)]
    if missing:
        raise TaskError(f"task {source}: missing key(s) {', '.join(missing)}")
    try:
        aspects = tuple(
            Aspect(
                name=str(a["name"]),
                title=str(a.get("title", a["name"])),
                description=" ".join(str(a["description"]).split()),
            )
            for a in data["aspects"]
        )
        inputs = tuple(
            InputField(
                name=str(f["name"]), tag=str(f.get("tag", f["name"])), required=bool(f.get("required", True))
            )
            for f in data["inputs"]
        )
    except (KeyError, TypeError) as exc:
        raise TaskError(
            f"task {source}: each aspect needs name and description, each input a name ({exc})"
        ) from exc
    try:
        _jinja.parse(data["prompt_template"])
    except jinja2.TemplateSyntaxError as exc:
        raise TaskError(f"task {source}: prompt_template is not valid Jinja2: {exc}") from exc
    known = {"description", "response_noun", "reference_field", *_REQUIRED_KEYS}
    return TaskSpec(
        name=str(data["name"]),
        description=" ".join(str(data.get("description", "")).split()),
        role=" ".join(str(data["role"]).split()),
        goal=" ".join(str(data["goal"]).split()),
        guideline=" ".join(str(data["guideline"]).split()),
        aspects=aspects,
        inputs=inputs,
        prompt_template=str(data["prompt_template"]),
        response_noun=str(data.get("response_noun", "response")),
        reference_field=data.get("reference_field"),
        source=source,
        extra={k: v for k, v in data.items() if k not in known},
    )
