"""One declaration per option: dataclass fields carry their help, flags, choices and checks.

Every setting a user can give - a command-line flag or a key of an experiment's YAML file - is
a field of the config dataclass of the job it feeds (GenerateConfig, TrainRMConfig, JudgeOptions,
BackendOptions, ...), declared with `option()`. From those fields:

- `rmboost.options_cli.command(Config)` makes the Typer command: one flag (or argument) per
  field. A field declared with `group()` nests another options dataclass (BackendOptions,
  JudgeOptions) whose fields become flags too, optionally under a prefix (`judge_` makes
  `JudgeOptions.mode` the flag `--judge-mode`).
- `load()` / `check_settings()` check a YAML mapping against the same fields: unknown keys (with
  a did-you-mean hint), types and choices, each error naming the key path.

The rules that keep this one source of truth:
- A default is written once, on the field. A command that needs another default or another help
  text for a shared group says so explicitly in its `group(..., defaults=..., help=...)`.
- A flag whose spelling differs from the field name says so in `flags`; a flag whose value needs
  converting (`--shard 1/4` -> (1, 4)) declares `cli_type` and `parse` on the field, and a field
  given by several flags names a small dataclass of them as its `cli_type` (relabel's GoalFlags ->
  GoalSpec). Nothing copies Typer parameters into a config by hand.
- The same setting in another dataclass is `reuse(Owner, "name")`, not a second declaration
  (GenerateConfig.n is MethodSettings.n; the experiment's `generation.n` is GenerateConfig.n).
- Checks (`choices`, `check`) run on the command line and in YAML alike, so a bad value is one
  line naming the flag or the key, before any work; `validate()` runs them on a config built in
  code.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
KEY = "rmboost.option"


class OptionError(ValueError):
    """A bad setting, named by its flag or its key path."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a field declares besides its type and default (kept in the field's metadata)."""

    help: str = ""
    flags: tuple[str, ...] = ()  # option names when they differ from --field-name
    argument: bool = False  # a positional argument instead of an option
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # returns what is wrong ("must be >= 0"), or None
    noun: str | None = None  # names the value in errors: "unknown aspect mode 'x'"
    cli: bool = True  # a command-line flag
    yaml: bool = True  # a key of an experiment section
    cli_type: Any = None  # what the command line reads, when not the field's type (a dataclass: its flags)
    cli_default: Any = None  # the flag's default when cli_type is given
    parse: Callable[[Any], Any] | None = None  # command-line value -> field value
    prefix: str = ""  # group: flag names are prefix + field name
    only: tuple[str, ...] | None = None  # group: the fields that become flags (default: all)
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)  # group: this command's defaults
    helps: dict[str, str] = dataclasses.field(default_factory=dict)  # group: this command's help texts


def option(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    help: str = "",
    flags: Sequence[str] = (),
    argument: bool = False,
    choices: Iterable[str] | None = None,
    check: Callable[[Any], str | None] | None = None,
    noun: str | None = None,
    cli: bool = True,
    yaml: bool = True,
    cli_type: Any = None,
    cli_default: Any = None,
    parse: Callable[[Any], Any] | None = None,
) -> Any:
    """A dataclass field that is also a flag and a YAML key (see the module docstring)."""
    spec = Spec(help=help, flags=tuple(flags), argument=argument, choices=tuple(choices) if choices else None,
                check=check, noun=noun, cli=cli, yaml=yaml, cli_type=cli_type, cli_default=cli_default,
                parse=parse)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={KEY: spec})


def group(
    cls: type,
    *,
    prefix: str = "",
    only: Sequence[str] | None = None,
    defaults: dict[str, Any] | None = None,
    help: dict[str, str] | None = None,
) -> Any:
    """A field holding another options dataclass whose fields become this command's flags.

    `defaults` and `help` change them for this command only (and `defaults` for the dataclass
    too: the field's default is `cls(**defaults)`).
    """
    defaults = dict(defaults or {})
    spec = Spec(prefix=prefix, only=tuple(only) if only is not None else None, defaults=defaults,
                helps=dict(help or {}))
    return dataclasses.field(default_factory=functools.partial(cls, **defaults), metadata={KEY: spec})


def at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v is None or v >= low else f"must be >= {low:g}"


def nucleus_mass(v: float) -> str | None:
    """A nucleus-sampling mass in (0, 1]."""
    return None if 0 < v <= 1 else f"must be in (0, 1], got {v}"


def fraction(v: float) -> str | None:
    """A share in [0, 1)."""
    return None if 0 <= v < 1 else f"must be in [0, 1), got {v}"


# ---------------------------------------------------------------------------------------------
# Reading declarations


@dataclasses.dataclass(frozen=True)
class Setting:
    """One declared field with its resolved type."""

    name: str
    type: Any
    field: dataclasses.Field
    spec: Spec

    @property
    def required(self) -> bool:
        return self.field.default is dataclasses.MISSING and self.field.default_factory is dataclasses.MISSING

    def default(self) -> Any:
        if self.field.default is not dataclasses.MISSING:
            return self.field.default
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return dataclasses.MISSING


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def settings(cls: type, *, only: Iterable[str] | None = None, skip: Iterable[str] = (),
             surface: str | None = None) -> dict[str, Setting]:
    """The fields of `cls` (those on `surface` "cli" or "yaml" when given), in declaration order."""
    hints, wanted, skip = _hints(cls), set(only) if only is not None else None, set(skip)
    found = {}
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(KEY, Spec())
        if f.name in skip or (wanted is not None and f.name not in wanted):
            continue
        if surface is not None and not getattr(spec, surface):
            continue
        found[f.name] = Setting(f.name, hints[f.name], f, spec)
    return found


def reuse(cls: type, name: str) -> Any:
    """The declaration of `cls`'s field `name`, for another dataclass carrying the same setting."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata)


def pick(cls: type[T], source: Any, **values: Any) -> T:
    """Build `cls` from the attributes of `source` that it declares (plus `values`)."""
    names = {f.name for f in dataclasses.fields(cls)} - set(values)
    return cls(**{n: getattr(source, n) for n in names if hasattr(source, n)}, **values)


# ---------------------------------------------------------------------------------------------
# Checking values (command line and YAML)


def _choices_text(choices: Sequence[str]) -> str:
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


def check_choice(value: Any, s: Setting, where: str) -> None:
    """`choices` and `check` of a field; raises OptionError naming `where`."""
    if value is None:
        return
    if s.spec.choices is not None and value not in s.spec.choices:
        noun = s.spec.noun or s.name.replace("_", " ")
        raise OptionError(f"{where}: unknown {noun} {value!r} (use {_choices_text(s.spec.choices)})")
    if s.spec.check is not None and (problem := s.spec.check(value)):
        raise OptionError(f"{where} {problem}")


def validate(config: Any, where: str = "") -> None:
    """Every declared choice and check of a built config, nested groups included.

    For configs built in code (tests, the experiment); the command line checks as it builds.
    """
    for s in settings(type(config)).values():
        value = getattr(config, s.name)
        path = f"{where}.{s.name}" if where else s.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate(value, path)
        else:
            check_choice(value, s, path)


def union_members(tp: Any) -> list[Any]:
    """The members of a union type (`str | None` -> [str, NoneType]); any other type alone."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return list(typing.get_args(tp))
    return [tp]


def type_text(tp: Any) -> str:
    parts = [m for m in union_members(tp) if m is not type(None)]
    text = " | ".join(m.__name__ if isinstance(m, type) and not typing.get_args(m) else str(m) for m in parts)
    return text.replace("typing.", "")


def _matches(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp) or tp
    if origin in (str, Path):
        return isinstance(value, str)
    if origin is bool:
        return isinstance(value, bool)
    if origin is int:  # YAML's true/false are ints to Python; only a bool field takes them
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return isinstance(value, list) and (len(args) != 1 or all(_matches(v, args[0]) for v in value))
    if origin is dict or dataclasses.is_dataclass(origin):
        return isinstance(value, dict)
    return isinstance(origin, type) and isinstance(value, origin)


def check_value(value: Any, s: Setting, where: str) -> None:
    """A YAML value against its field: type, then choices and checks."""
    members = union_members(s.type)
    if value is None:
        if type(None) in members or Any in members:
            return
        raise OptionError(f"{where}: a value is required")
    if not any(_matches(value, m) for m in members if m is not type(None)):
        raise OptionError(f"{where}: expected {type_text(s.type)}, got {value!r}")
    check_choice(value, s, where)


def did_you_mean(key: Any, known: Iterable[str]) -> str:
    """The hint after an unknown key: " (did you mean 'x'?)", or " (known: a, b, ...)" when none is close."""
    known = list(known)
    close = difflib.get_close_matches(str(key), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"


def check_settings(data: Any, known: dict[str, Setting], where: str, *, deep: bool = True) -> dict[str, Any]:
    """Unknown keys (with a suggestion) and wrong values fail here, named by their path.

    Returns the mapping as given (defaults are not filled in: they stay on the dataclass).
    With `deep=False` only the keys are checked (the caller checks the values).
    """
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OptionError(f"{where}: expected a mapping of settings, got {data!r}")
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise OptionError(f"{path}: unknown setting{did_you_mean(key, known)}")
        if deep:
            check_value(value, known[key], path)
    return dict(data)


def load(cls: type[T], data: Any, where: str) -> T:
    """`cls` from a YAML mapping: every key checked, missing required keys named."""
    known = settings(cls, surface="yaml")
    values = check_settings(data, known, where)
    missing = [s.name for s in known.values() if s.required and s.name not in values]
    if missing:
        raise OptionError(f"{where or 'config'}: missing {', '.join(repr(m) for m in missing)}")
    for key, value in values.items():
        setting = known[key]
        if dataclasses.is_dataclass(setting.type) and isinstance(value, dict):  # a group: its defaults first
            values[key] = load(setting.type, {**setting.spec.defaults, **value}, f"{where}.{key}" if where else key)
        elif isinstance(value, str) and Path in union_members(setting.type):  # YAML has no paths, only strings
            values[key] = Path(value)
    return cls(**values)
