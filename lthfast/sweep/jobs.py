"""Submitit jobs of a sweep: how they are submitted (``LaunchOptions``), what each runs
(``RunPoint``, re-queued as is on pre-emption or time-out) and the executor that submits them.
Shared by the launchers (``lthfast.sweep.launch``) and the SLURM array follower
(``lthfast.sweep.slurm``), which import it and not each other.

    python -c "from lthfast.sweep.jobs import LaunchOptions; LaunchOptions(time_min=30).check()"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import UserError


@dataclass(frozen=True)
class LaunchOptions:
    """How jobs are submitted (submitit launchers only)."""

    partition: Optional[str] = None
    time_min: int = 240
    gpus_per_task: int = 0
    cpus_per_task: int = 2
    array_parallelism: int = 16
    wait: bool = False  # slurm: wait for the array to finish and collect its results
    logs: Optional[Path] = None  # default: OUT/submitit
    workers: int = 0  # inprocess: worker processes (0: one per GPU where there are several)
    pack: bool = False  # inprocess, imp sweeps: pack compatible runs across points

    def check(self) -> None:
        if self.partition is not None and not self.partition.strip():
            raise UserError("--partition must name a SLURM partition")
        if self.time_min < 1 or self.cpus_per_task < 1 or self.array_parallelism < 1:
            raise UserError("--time-min, --cpus-per-task and --array-parallelism must be >= 1")
        if self.gpus_per_task < 0:
            raise UserError(f"--gpus-per-task must be >= 0, got {self.gpus_per_task}")
        if self.workers < 0:
            raise UserError(f"--workers must be >= 0 (0: one per GPU), got {self.workers}")


class RunPoint:
    """One grid point as a submitit job: builds its request, runs it through the API, returns
    its record. Re-queued (same arguments) when SLURM pre-empts it or its time runs out."""

    def __call__(self, command: str, point: dict, runtime: dict) -> dict:
        from ..experiments.common import Runtime
        from ..progress import PlainProgress
        from .records import run_point

        # plain progress lines in the job's log; the record carries the point's wall time
        return run_point(command, point, Runtime(**runtime, progress=PlainProgress()))

    def checkpoint(self, *args: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args)


def _executor(cluster: str, folder: Path, options: LaunchOptions, gpu: Optional[int] = None):
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher local/slurm needs submitit: pip install 'lthfast[cluster]'") \
            from None
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params: dict[str, Any] = {"timeout_min": options.time_min, "name": "lthfast",
                              "cpus_per_task": options.cpus_per_task}
    if cluster == "slurm":
        params |= {"slurm_array_parallelism": options.array_parallelism,
                   "gpus_per_node": options.gpus_per_task}
        if options.partition:
            params["slurm_partition"] = options.partition
    if gpu is not None:  # local: this job's one GPU (the controller's shell exports it; the
        # AutoExecutor does not pass on the local executor's own visible_gpus)
        params["local_setup"] = [f"export CUDA_VISIBLE_DEVICES={gpu}"]
    executor.update_parameters(**params)
    return executor
