"""Sweeps: a TOML file of one command's grid, checked whole, then run point by point.

One module per job: ``spec`` (the file: load, check every point, dry-run command lines),
``runner`` (the points in this process; progress and the summary), ``records`` (a point's
record and the one summary writer), ``workers`` and ``lifeline`` (one process per device, dying
with the sweep), ``launch`` and ``jobs`` (where points run: here, submitit jobs, SLURM arrays),
``slurm`` (arrays followed and collected) and ``smoke`` (any grid at CPU scale). The names
below are the package's front door; inside lthfast, modules import the module that defines
a name, so the import graph stays acyclic.

    lthfast sweep sweeps/fig2_3_cifar10.toml --dry-run   # prints the 24 commands
"""

from .launch import LAUNCHERS, LaunchOptions
from .runner import in_this_process, packed_in_this_process, run_sweep
from .smoke import smoke_sweep
from .spec import (MAX_RUNS, PER_SWEEP, Sweep, check_points, check_runtimes, command_line,
                   describe, load_sweep, point_error)

__all__ = ["LAUNCHERS", "LaunchOptions", "MAX_RUNS", "PER_SWEEP", "Sweep", "check_points",
           "check_runtimes", "command_line", "describe", "in_this_process", "load_sweep",
           "packed_in_this_process", "point_error", "run_sweep", "smoke_sweep"]
