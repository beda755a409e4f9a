"""What a flag is, said once: its help, panel, env var, bounds and old spellings, carried in
``field(metadata={"opt": Opt(...)})`` on the request and runtime dataclasses. The CLI
(``lthfast.cli``) builds its options from it, sweep files and the API are checked by it
(``check_values``: types, then bounds, with one message per kind of mistake), and dry-run
command lines are rendered from it (``argv``), so none of them declares a flag again.

    python -c "from lthfast.requests import ImpRequest; from lthfast.options import opts; \\
               print([o.flag for o in opts(ImpRequest)])"
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import UserError

RUN = "What to run"
OVERRIDES = "Overrides of the preset"
RUNTIME = "Runtime (how to run, never part of a run's identity)"


@dataclass(frozen=True)
class Opt:
    """One flag. ``switch``: a bool shown as ``--name`` alone (no value; its default is off), or
    with ``negatable`` as ``--name/--no-name``. ``aliases``: old field names, accepted from the
    CLI (hidden) and from sweep files, never shown."""

    help: str
    panel: str = RUN
    env: Optional[str] = None
    min: Optional[float] = None  # value >= min
    above: Optional[float] = None  # value > above
    max: Optional[float] = None  # value <= max
    below: Optional[float] = None  # value < below
    aliases: tuple[str, ...] = ()
    negatable: bool = False  # bools (and Optional[bool]): --name/--no-name
    argument: bool = False  # the CLI takes it as the command's positional argument

    def but(self, **changes: Any) -> "Opt":
        return dataclasses.replace(self, **changes)


def field(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with its flag's metadata (``Opt``)."""
    return dataclasses.field(default=default, metadata={"opt": Opt(help, **meta)})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Option:
    """A field of a dataclass that is a flag: its name, type, default and ``Opt``."""

    name: str
    hint: Any
    default: Any
    opt: Opt

    @property
    def flag(self) -> str:
        return flag(self.name)

    @property
    def base(self) -> Any:
        """The type without Optional."""
        return base_type(self.hint)


def base_type(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and \
        type(None) in typing.get_args(hint)


def opts(cls: type) -> list[Option]:
    """The flags of a dataclass (its fields with an ``Opt``), in field order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "opt" not in f.metadata:
            continue
        default, hint = f.metadata.get("cli_default", "same"), hints[f.name]
        if default == "same":
            default = f.default
        elif default is None and not optional(hint):
            hint = Optional[hint]
        out.append(Option(f.name, hint, default, f.metadata["opt"]))
    return out


def aliases(cls: type) -> dict[str, str]:
    """Old name -> field name, for every flag of ``cls`` that was renamed."""
    return {old: o.name for o in opts(cls) for old in o.opt.aliases}


OK = {bool: lambda v: isinstance(v, bool),
      int: lambda v: isinstance(v, int) and not isinstance(v, bool),
      float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
      str: lambda v: isinstance(v, str), Path: lambda v: isinstance(v, (str, Path))}
NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
         Path: "a path"}


def coerce(option: Option, value: Any) -> Any:
    """``value`` as the option's type (an int for a float, a str for a Path), or UserError."""
    if value is None and optional(option.hint):
        return None
    kind = option.base
    if not OK[kind](value):
        raise UserError(f"{option.flag} takes {kind.__name__ if kind is not Path else 'a path'}"
                        f" ({NAMES[kind]}), got {value!r}")
    return kind(value) if kind in (float, Path) else value


def check_bounds(option: Option, value: Any) -> None:
    """The option's bounds, one message each: ``--flag must be >= n, got v``."""
    if value is None or isinstance(value, (bool, str, Path)):
        return
    o = option.opt
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{option.flag} must be a finite number, got {value}")
    for ok, words, bound in ((o.min is None or value >= o.min, ">=", o.min),
                             (o.above is None or value > o.above, ">", o.above),
                             (o.max is None or value <= o.max, "<=", o.max),
                             (o.below is None or value < o.below, "<", o.below)):
        if not ok:
            shown = f"{bound:g}" if isinstance(bound, float) else bound
            raise UserError(f"{option.flag} must be {words} {shown}, got {value}")


def check_types(obj: Any) -> None:
    """Every flag of a frozen dataclass instance checked against its type, from its
    ``__post_init__``: an int in a float field becomes a float, a str in a Path field a Path;
    anything else of the wrong type is a UserError (``ImpRequest(steps=2.0)`` never runs)."""
    for option in opts(type(obj)):
        value = getattr(obj, option.name)
        typed = coerce(option, value)
        if typed is not value:
            object.__setattr__(obj, option.name, typed)


def check_bounds_of(obj: Any) -> None:
    """Every flag's own bounds (``Opt.min`` / ``above`` / ``max``, finite numbers): the one
    place a flag's own rule is checked; rules between flags are the request's ``check``."""
    for option in opts(type(obj)):
        check_bounds(option, getattr(obj, option.name))


def argv(option: Option, value: Any) -> list[str]:
    """A value as the CLI's words: ``--size 256``; a bool as its switch (``--compile`` /
    ``--no-compile``); a false switch that cannot be negated is its default, left out."""
    if not isinstance(value, bool):
        return [option.flag, str(value)]
    if value:
        return [option.flag]
    if option.opt.negatable:
        return ["--no-" + option.flag[2:]]
    if not option.default:
        return []
    raise UserError(f"{option.flag} is on by default and cannot be switched off")
