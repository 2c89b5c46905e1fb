"""The command line from the options dataclasses: `command(Config)` makes a Typer command.

The flags are the fields declared with `option()` (rmboost.options), one flag (or argument) per
field, in field order, and the decorated function receives a built, checked `Config`:

- A field whose type is itself a dataclass declared with `group()` becomes that dataclass's
  flags, optionally with a prefix (`judge_` makes `JudgeOptions.mode` the flag `--judge-mode`);
  a field whose declared flag is the prefix itself is the group's switch (`BatchOptions.enabled`
  is `--batch`). A group's `defaults` and `help` are this command's defaults and help texts.
- A field that takes a list (`base_url: str | list[str] | None`) is a repeatable flag
  (`--base-url a --base-url b`); given once, such a field gets the single value.
- A field with `cli_type` reads that type and converts it with `parse` (`--shard 1/4` -> (1, 4));
  a `cli_type` that is a dataclass is read as its flags (relabel's GoalFlags -> GoalSpec).
- The field's `choices` and `check` run before the command does: a bad value is one red line
  naming the flag, and exit code 2.

Typer stays the command-line library (rather than TRL's argparse-based HfArgumentParser/TrlParser):
the commands, their `--help` pages and exit codes stay as they were, and Typer already builds a
command from a function signature; we only build that signature from the dataclass.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from rmboost.cli_support import USER_ERRORS, fail
from rmboost.options import OptionError, Setting, Spec, check_choice, settings, union_members

T = TypeVar("T")


def _repeated(tp: Any) -> Any:
    """The `list[X]` member of a field's type (`str | list[str] | None`): a repeatable flag."""
    return next((m for m in union_members(tp) if typing.get_origin(m) is list), None)


def _one_or_many(values: list[Any], s: Setting) -> Any:
    """A repeatable flag's values: one, when the field also takes a single value
    (`str | list[str]`) -> that value; else the list."""
    single = typing.get_args(_repeated(s.type))[0]
    return values[0] if len(values) == 1 and single in union_members(s.type) else list(values)


@dataclasses.dataclass
class _Param:
    """One command-line parameter and where its value goes."""

    name: str  # the Python name Typer passes back
    path: tuple[str, ...]  # field names from the command's dataclass down
    setting: Setting
    flag: str  # what errors call it
    parameter: inspect.Parameter


@dataclasses.dataclass
class _Group:
    cls: type
    path: tuple[str, ...]
    spec: Spec


def _flags(flags: tuple[str, ...], prefix: str) -> tuple[str, ...]:
    """A group's flags under its prefix; a flag that already names the prefix (`--batch` in the
    `batch_` group: the group's on/off switch) is kept as declared."""
    if not prefix:
        return flags
    dashed = prefix.replace("_", "-")

    def prefixed(name: str) -> str:
        if name == "--" + dashed.rstrip("-") or name.startswith("--" + dashed):
            return name
        return f"--no-{dashed}{name[5:]}" if name.startswith("--no-") else f"--{dashed}{name[2:]}"

    out = []
    for decl in flags:
        names = [n for n in decl.split("/") if n.startswith("--")]  # short flags do not carry over
        if names:
            out.append("/".join(prefixed(n) for n in names))
    return tuple(out)


def _cli_params(cls: type, prefix: str = "", path: tuple[str, ...] = (), spec: Spec | None = None,
                groups: list[_Group] | None = None) -> list[_Param]:
    outer = spec or Spec()
    params: list[_Param] = []
    for s in settings(cls, only=outer.only, surface="cli").values():
        target = s.spec.cli_type or s.type
        if dataclasses.is_dataclass(target):
            if groups is not None:
                groups.append(_Group(target, (*path, s.name), s.spec))
            params += _cli_params(target, prefix + s.spec.prefix, (*path, s.name), s.spec, groups)
            continue
        name = prefix + s.name
        help_text = outer.helps.get(s.name, s.spec.help)
        if s.spec.cli_type is not None:
            annotation, default = s.spec.cli_type, s.spec.cli_default
        elif (many := _repeated(s.type)) is not None:  # given several times: --base-url a --base-url b
            annotation, default = many | None, None
        else:
            annotation = s.type
            default = outer.defaults.get(s.name, s.default())
        if s.spec.argument:
            info = typer.Argument(help=help_text)
        else:
            info = typer.Option(*_flags(s.spec.flags, prefix), help=help_text)
        parameter = inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY,
            default=inspect.Parameter.empty if default is dataclasses.MISSING else default,
            annotation=typing.Annotated[annotation, info],
        )
        long_flags = [d.split("/")[0] for d in _flags(s.spec.flags, prefix) if d.startswith("--")]
        flag = s.name.upper() if s.spec.argument else (long_flags[0] if long_flags else "--" + name.replace("_", "-"))
        params.append(_Param(name, (*path, s.name), s, flag, parameter))
    return params


def _build(cls: type[T], values: dict[str, Any], params: list[_Param], groups: list[_Group]) -> T:
    """The command's config from Typer's values: parse, check, then nest the groups."""
    tree: dict[tuple[str, ...], dict[str, Any]] = {(): {}}
    for g in groups:
        tree[g.path] = dict(g.spec.defaults)
    for p in params:
        value = values[p.name]
        if p.setting.spec.parse is not None:
            value = p.setting.default() if value is None else p.setting.spec.parse(value)
        elif p.setting.spec.cli_type is None and _repeated(p.setting.type) is not None:
            if not value:  # not given: the field's (or the group's) default
                if p.setting.required:
                    raise OptionError(f"{p.flag}: give at least one")
                continue
            value = _one_or_many(value, p.setting)
        check_choice(value, p.setting, p.flag)
        tree[p.path[:-1]][p.path[-1]] = value
    for g in reversed(groups):  # innermost first
        built = g.cls(**tree.pop(g.path))
        tree[g.path[:-1]][g.path[-1]] = g.spec.parse(built) if g.spec.parse else built
    return cls(**tree[()])


def command(cls: type[T]) -> Callable[[Callable[[T], Any]], Callable[..., Any]]:
    """Decorate `fn(config)` into a Typer command whose flags are `cls`'s fields.

    A value that fails its declared checks (or its `parse`) is one red line and exit code 2.
    """

    def decorate(fn: Callable[[T], Any]) -> Callable[..., Any]:
        groups: list[_Group] = []
        params = _cli_params(cls, groups=groups)
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise TypeError(f"{cls.__name__}: two flags share a name in {names}")

        @functools.wraps(fn, assigned=("__module__", "__name__", "__qualname__", "__doc__"), updated=())
        def run(**values: Any) -> Any:
            try:
                config = _build(cls, values, params, groups)
            except USER_ERRORS as exc:
                raise fail(str(exc)) from None
            return fn(config)

        run.__signature__ = inspect.Signature([p.parameter for p in params])  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.parameter.annotation for p in params}
        return run

    return decorate
