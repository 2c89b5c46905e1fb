"""Task specs: what the inputs are, how they are shown, and the aspects a response is judged on.

Built-in specs live in `tasks/builtin/*.yaml`; a user adds a task by passing the path of a YAML
file with the same keys (see README, "Your own task"). A key the loader does not know, at the top
or inside an aspect or input, is an error naming the file and the key: a typo, or the stray key a
comma in unquoted flow-mapping text makes, would otherwise be dropped without a word.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml

from rmboost.options import did_you_mean


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
_TOP_KEYS = ("name", "description", "role", "goal", "guideline", "response_noun", "inputs", "reference_field",
             "prompt_template", "aspects")
_ASPECT_KEYS = ("name", "title", "description")
_INPUT_KEYS = ("name", "tag", "required")

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
    _check_keys(data, _TOP_KEYS, source, "")
    missing = [k for k in _REQUIRED_KEYS if not data.get(k)]
    if missing:
        raise TaskError(f"task {source}: missing key(s) {', '.join(missing)}")
    for section, known in (("aspects", _ASPECT_KEYS), ("inputs", _INPUT_KEYS)):
        if not isinstance(data[section], list):
            raise TaskError(f"task {source}: {section}: expected a list of mappings")
        for i, entry in enumerate(data[section]):
            where = f"{section}[{i}]" + (f" ({entry['name']})" if isinstance(entry, dict) and entry.get("name") else "")
            if not isinstance(entry, dict):
                raise TaskError(f"task {source}: {where}: expected a mapping, got {entry!r}")
            _check_keys(entry, known, source, where)
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
    )


def _check_keys(entry: dict[Any, Any], known: tuple[str, ...], source: str, where: str) -> None:
    """An unknown key fails, named by file and path; a key with no value hints at the unquoted comma."""
    for key, value in entry.items():
        if key not in known:
            comma = "; a comma in unquoted text starts a new key: quote the text" if value is None else ""
            raise TaskError(f"task {source}: {where + ': ' if where else ''}unknown key {key!r}"
                            f"{did_you_mean(key, known)}{comma}")
