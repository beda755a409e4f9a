"""Sweeps: a TOML file names one command, its shared flags, and a grid; every grid point is a run.

The paper is thousands of short runs that differ in one or two flags (subset kind × size × t_r ×
replicates). A sweep file says that once::

    command = "imp"                 # any lthfast command that trains: imp, scores
    [flags]                         # shared by every run
    dataset = "cifar10"
    steps = 200
    replicates = 4
    [grid]                          # the cross product of these lists, in this order
    subset = ["random", "easy", "hard"]
    size = [1024, 2048, 3200]

Every grid point is turned into the command's typed request and checked before the first run
starts (lazily, up to ``MAX_RUNS`` points), so a typo or a value of the wrong type fails at once,
not after a day of training; so are its runtime flags (``loader``, ``checkpoint_every``, ...), on
the sweep's device once the command names it, and a flag the command does not use is refused
(its points would be one run). ``--dry-run`` prints the commands in the CLI's own words, from
the flags' metadata (``lthfast.options``). A flag's old name (``Opt.aliases``, e.g.
``el2n_models``) is read as its name, so old files keep meaning what they meant.
``--root``, ``--out`` and ``--device`` belong to the sweep command, not to the file. How the
points run: ``lthfast.sweep.runner`` (in this process), ``lthfast.sweep.workers`` (one process
per device), ``lthfast.sweep.launch`` (submitit jobs); ``--smoke`` runs the same grid at CPU
scale (``lthfast.sweep.smoke``).

    lthfast sweep sweeps/fig2_3_cifar10.toml --dry-run          # prints the 24 commands
    lthfast sweep sweeps/fig2_3_cifar10.toml --smoke --dry-run  # the same 24, at smoke scale
"""

from __future__ import annotations

import itertools
import json
import math
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from ..errors import UserError

MAX_RUNS = 100_000  # more grid points than this is a mistake, not a sweep
PER_SWEEP = ("root", "out", "device")  # flags of the sweep command itself


@dataclass(frozen=True)
class Sweep:
    path: Path
    command: str
    argument: Optional[str]  # the positional argument, e.g. "el2n" for scores
    flags: dict[str, Any]
    grid: dict[str, list]
    scale: str = "full"  # or "smoke" (lthfast.sweep.smoke.smoke_sweep)

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.grid.values())

    def points(self) -> Iterator[dict[str, Any]]:
        """Every run's values, lazily: shared flags, then one combination of the grid."""
        keys = list(self.grid)
        for values in itertools.product(*(self.grid[k] for k in keys)):
            point = self.flags | dict(zip(keys, values))
            yield point | ({"kind": self.argument} if self.argument else {})

    def command_lines(self, root: Path, out: Path, device: Optional[str]) -> list[str]:
        """The runs as ``lthfast`` command lines, in the words of the real CLI; every point's
        runtime flags are first checked on the device the commands would run on."""
        from ..experiments.common import Runtime, default_device

        check_runtimes(self, Runtime(root=Path(root), out=Path(out),
                                     device=device or default_device()))
        common = {"root": str(root), "out": str(out)} | ({"device": device} if device else {})
        return [command_line(self.command, point | common) for point in self.points()]


def command_line(command: str, values: dict[str, Any]) -> str:
    """A point as an ``lthfast`` command line, in the CLI's words (from the same flag metadata
    the CLI is built from: ``lthfast.options``); ``kind`` is scores' positional argument."""
    from ..options import aliases, argv, opts
    from ..api import REQUESTS
    from ..runtime import options as runtime_options

    cls = REQUESTS[command]
    by_name = {o.name: o for o in opts(cls) + runtime_options()}
    renamed = aliases(cls)
    words = [command]
    for name, value in values.items():
        option = by_name.get(renamed.get(name, name))
        if option is None:
            raise UserError(f"lthfast {command} has no option --{name.replace('_', '-')}")
        words += [str(value)] if option.opt.argument else argv(option, value)
    return "lthfast " + shlex.join(words)


def load_sweep(path: Path) -> Sweep:
    """Parse a sweep file and check every one of its runs; nothing runs or is written."""
    from ..api import REQUESTS
    from ..options import aliases

    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"sweep file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"sweep file {path} is a directory") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"malformed sweep file {path}: {exc}") from None
    unknown = set(raw) - {"command", "argument", "flags", "grid"}
    if unknown:
        raise UserError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))} "
                        "(expected command, argument, flags, grid)")
    command = raw.get("command")
    if command not in REQUESTS:
        raise UserError(f"{path}: 'command' must be one of {', '.join(REQUESTS)}, got {command!r}")
    argument = raw.get("argument")
    if command == "scores" and not isinstance(argument, str):
        from ..experiments.scores import SCORES

        kinds = " or ".join(f'"{k}"' for k in SCORES)
        raise UserError(f"{path}: command 'scores' needs argument = {kinds}")
    if command != "scores" and argument is not None:
        raise UserError(f"{path}: command '{command}' takes no argument (got {argument!r})")
    flags, grid = raw.get("flags", {}), raw.get("grid", {})
    if not isinstance(flags, dict) or not isinstance(grid, dict):
        raise UserError(f"{path}: [flags] and [grid] must be tables")
    renamed = aliases(REQUESTS[command])
    flags, grid = new_names(path, flags, renamed), new_names(path, grid, renamed)
    for name in list(flags) + list(grid):
        if name in PER_SWEEP:
            raise UserError(f"{path}: '{name}' belongs to the sweep command "
                            f"(lthfast sweep FILE --{name} ...), not to the file")
    for name, value in flags.items():
        if isinstance(value, (list, dict)):
            raise UserError(f"{path}: flag '{name}' must be a single value (lists go in [grid])")
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: grid entry '{name}' must be a non-empty list")
        if any(isinstance(v, (list, dict)) for v in values):
            raise UserError(f"{path}: grid entry '{name}' must list single values")
        seen = [v for i, v in enumerate(values) if (v, type(v)) in
                {(w, type(w)) for w in values[:i]}]
        if seen:  # the same run twice: a typo, or a grid that means less than it says
            raise UserError(f"{path}: grid entry '{name}' lists {seen[0]!r} twice")
    both = set(flags) & set(grid)
    if both:
        raise UserError(f"{path}: {', '.join(sorted(both))} in both [flags] and [grid]")
    if argument is not None and "kind" in set(flags) | set(grid):
        # the argument is the kind of every run: a 'kind' beside it would be overwritten
        raise UserError(f"{path}: the {command} kind is the file's argument ({argument!r}); "
                        "'kind' cannot be in [flags] or [grid] (one file per kind)")
    spec = Sweep(path=Path(path), command=command, argument=argument, flags=flags, grid=grid)
    if spec.size > MAX_RUNS:
        raise UserError(f"{path}: the grid has {spec.size:,} runs, more than the limit of "
                        f"{MAX_RUNS:,}; split it into several files")
    return check_points(spec)


def new_names(path: Path, table: dict[str, Any], renamed: dict[str, str]) -> dict[str, Any]:
    """A table with every flag's old name (``Opt.aliases``, e.g. ``el2n_models``) replaced by
    its name, in place: an old file means what it meant, and its points, command lines and
    summary say each flag one way (the summary's hash does not depend on the spelling)."""
    for name in dict.fromkeys(renamed.values()):
        spelled = [key for key in table if renamed.get(key, key) == name]
        if len(spelled) > 1:
            raise UserError(f"{path}: {' and '.join(spelled)} are one flag ({name}, the "
                            "others its old names): give it once")
    return {renamed.get(key, key): value for key, value in table.items()}


def check_points(spec: Sweep) -> Sweep:
    """Every point turned into its typed request and checked; the first bad one is the error.
    Runtime flags are checked too, those that depend on the device once it is known
    (``check_runtimes``)."""
    from ..api import request_from

    for i, point in enumerate(spec.points(), 1):
        try:
            request_from(spec.command, point)
        except UserError as exc:
            raise point_error(spec, i, point, exc) from None
    return spec


def check_runtimes(spec: Sweep, rt) -> None:
    """Every point's runtime flags with the sweep's runtime ``rt`` (its device), as each run
    will take them (``api.with_flags``): e.g. ``cuda_graph = true`` on a CPU sweep fails here,
    before the first run, not at its point."""
    from ..runtime import checked, sweep_flags, with_flags

    runtime = sweep_flags()
    seen: set[str] = set()  # grid points mostly share their runtime flags
    for i, point in enumerate(spec.points(), 1):
        try:
            flags = checked({name: value for name, value in point.items() if name in runtime})
            key = json.dumps(flags, sort_keys=True)
            if key not in seen:
                with_flags(rt, flags)
                seen.add(key)
        except UserError as exc:
            raise point_error(spec, i, point, exc) from None


def point_error(spec: Sweep, i: int, point: dict[str, Any], exc: UserError) -> UserError:
    scale = " (smoke scale)" if spec.scale != "full" else ""
    return UserError(f"{spec.path}{scale}: run {i} ({describe(point)}): {exc}")


def describe(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())
