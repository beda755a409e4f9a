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

Every flag is checked against the command before anything runs, so a typo fails at once, not
after a day of training. Runs execute in this process one after another (torch.compile caches
and the data already on the device are reused); a run that fails with a user error is reported
and the sweep goes on; a diverged run is a result, not a failure. Finished stages are skipped,
so rerunning a sweep trains only what is missing.

    lthfast sweep sweeps/fig2_cifar10.toml --dry-run   # prints the 9 commands
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

# Commands a sweep may run: the ones that train and print a run artifact.
SWEEPABLE = ("imp", "scores")


@dataclass(frozen=True)
class Sweep:
    command: str
    argument: str | None  # the positional argument, e.g. "el2n" for scores
    flags: dict[str, Any]
    grid: dict[str, list]

    def runs(self) -> list[list[str]]:
        """The argv of every run: shared flags, then one combination of the grid."""
        keys = list(self.grid)
        out = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            flags = self.flags | dict(zip(keys, values))
            argv = [self.command] + ([self.argument] if self.argument else [])
            for name, value in flags.items():
                argv += flag_argv(name, value)
            out.append(argv)
        return out


def flag_argv(name: str, value: Any) -> list[str]:
    """TOML key/value -> CLI words: booleans are switches (``--compile`` / ``--no-compile``)."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else ["--no-" + name.replace("_", "-")]
    return [flag, str(value)]


def load_sweep(path: Path, options: dict[str, set[str]]) -> Sweep:
    """Parse and check a sweep file. ``options``: command -> the flags it accepts."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"sweep file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"malformed sweep file {path}: {exc}") from None
    unknown = set(raw) - {"command", "argument", "flags", "grid"}
    if unknown:
        raise UserError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))} "
                        "(expected command, argument, flags, grid)")
    command = raw.get("command")
    if command not in SWEEPABLE:
        raise UserError(f"{path}: 'command' must be one of {', '.join(SWEEPABLE)}, got {command!r}")
    argument = raw.get("argument")
    if command == "scores" and not isinstance(argument, str):
        raise UserError(f"{path}: command 'scores' needs argument = \"el2n\" or \"forgetting\"")
    flags, grid = raw.get("flags", {}), raw.get("grid", {})
    if not isinstance(flags, dict) or not isinstance(grid, dict):
        raise UserError(f"{path}: [flags] and [grid] must be tables")
    for name, value in list(flags.items()) + list(grid.items()):
        if "--" + name.replace("_", "-") not in options[command]:
            raise UserError(f"{path}: '{command}' has no flag --{name.replace('_', '-')}")
    for name, value in flags.items():
        if isinstance(value, (list, dict)):
            raise UserError(f"{path}: flag '{name}' must be a single value (lists go in [grid])")
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: grid entry '{name}' must be a non-empty list")
        if any(isinstance(v, (list, dict)) for v in values):
            raise UserError(f"{path}: grid entry '{name}' must list single values")
    both = set(flags) & set(grid)
    if both:
        raise UserError(f"{path}: {', '.join(sorted(both))} in both [flags] and [grid]")
    return Sweep(command=command, argument=argument, flags=flags, grid=grid)
