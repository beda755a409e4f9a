"""Launchers: where the runs of a sweep execute. In this process (default), as local jobs through
submitit, or as a SLURM job array through submitit.

Every run is keyed by its config hash and every stage is skipped once done and locked while in
use, so any mix of launchers on a shared filesystem trains each stage once, and a job that is
pre-empted or times out is simply submitted again (submitit's ``checkpoint`` hook re-queues it;
the rerun resumes from the stage's last checkpoint).

    lthfast sweep sweeps/fig2_3_cifar10.toml --launcher slurm --partition gpu --gpus-per-task 1 \\
        --time-min 240 --array-parallelism 32
    lthfast sweep sweeps/demo_digits.toml --launcher local
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable, Optional

from ..errors import UserError
from .jobs import LaunchOptions, RunPoint, _executor  # noqa: F401  (the launchers' job parts)
from ..registry import Registry

LAUNCHERS = Registry("launcher")  # name -> fn(sweep, runtime, options) -> summary path


def local_gpus(device: str, cuda_count: int, visible: Optional[str]) -> list[int]:
    """The GPUs (as submitit's ``visible_gpus`` names them: indices of the machine) that local
    jobs are spread over, one GPU each, round robin; [] for CPU runs. submitit's local executor
    hides every GPU from a job that asks for none (CUDA_VISIBLE_DEVICES=""), so a job on
    ``cuda`` must ask for one."""
    from .workers import pinned

    if not device.startswith("cuda"):
        return []
    devices = [device] if ":" in device else [f"cuda:{i}" for i in range(cuda_count)]
    ids = [pinned(d, visible)[0]["CUDA_VISIBLE_DEVICES"] for d in devices]
    if not all(i.isdigit() for i in ids):
        raise UserError(f"--launcher local pins jobs to GPUs by index; CUDA_VISIBLE_DEVICES="
                        f"{visible} names them otherwise")
    return [int(i) for i in ids]


def _submit(cluster: str) -> Callable:
    def launch(spec, rt, options: LaunchOptions) -> Path:
        from .records import check_failed, summary_path, write_summary
        from .spec import check_runtimes

        if cluster == "slurm":  # scheduler check, job states, collecting: lthfast.sweep.slurm
            from .slurm import submit_array
            return submit_array(spec, rt, options)

        check_runtimes(spec, rt)  # with the sweep's device: a bad grid fails before submitting
        points = list(spec.points())
        runtime = {f.name: getattr(rt, f.name) for f in dataclasses.fields(rt)
                   if f.name != "progress"}  # a terminal's progress bar does not travel
        folder = Path(options.logs or Path(rt.out) / "submitit")
        gpus = local_gpus(rt.device, _cuda_count(), os.environ.get("CUDA_VISIBLE_DEVICES")) \
            if cluster == "local" else []
        jobs: list = [None] * len(points)
        for k, gpu in enumerate(gpus or [None]):  # local on GPUs: point i on GPU i mod N
            share = list(range(k, len(points), len(gpus) or 1))
            if not share:
                continue
            own = runtime | ({"device": "cuda"} if gpu is not None else {})  # its only GPU
            submitted = _executor(cluster, folder, options, gpu).map_array(
                RunPoint(), [spec.command] * len(share), [points[i] for i in share],
                [own] * len(share))
            for i, job in zip(share, submitted):
                jobs[i] = job
        print(f"submitted {len(jobs)} {cluster} job(s): {jobs[0].job_id.split('_')[0]} "
              f"(logs in {folder})", file=sys.stderr, flush=True)
        summary = summary_path(spec, rt.out, points)
        if cluster == "slurm" and not options.wait:
            records = [{"flags": p, "status": "submitted", "job": j.job_id}
                       for p, j in zip(points, jobs)]
        else:
            records = []
            for point, job in zip(points, jobs):
                try:
                    records.append(job.result() | {"job": job.job_id})
                except Exception as exc:  # the job died: its logs say why
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                    records.append({"flags": point, "status": "error", "job": job.job_id,
                                    "error": f"job failed: {first} (logs: {folder})"})
                if records[-1]["status"] == "ok":
                    print(records[-1]["artifact"])
        write_summary(summary, spec, records, launcher=cluster)
        print(summary)
        check_failed(records, summary)
        return summary
    return launch


LAUNCHERS.register("local")(_submit("local"))
LAUNCHERS.register("slurm")(_submit("slurm"))


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@LAUNCHERS.register("inprocess")
def inprocess(spec, rt, options: LaunchOptions) -> Path:
    """Here; with several GPUs (or ``--workers N``) one worker process per device."""
    from .runner import run_sweep
    from .workers import worker_devices

    devices = () if options.pack else worker_devices(rt.device, options.workers, _cuda_count())
    return run_sweep(spec, rt, devices, pack=options.pack)
