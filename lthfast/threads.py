"""How many CPU threads torch computes with: what a process is allowed, shared out among the
processes of one sweep, and pinned to one for deterministic CPU runs.

torch's own default is one intra-op thread per core of the machine, whatever this process may
use: under SLURM (several tasks per node, ``TaskPlugin=task/none``), with ``sweep --workers N``
or beside a second terminal's run, every process then runs a thread per core and they thrash
(one ResNet-20 digits level: 18 s alone on one thread, 143 s beside another CPU-bound process on
torch's default). So a process takes, in this order:

1. ``--threads N`` (``Runtime.threads``): exactly N;
2. ``OMP_NUM_THREADS``, when set: the user (or a test harness) said how many, per process;
3. the CPUs it is allowed: ``SLURM_CPUS_PER_TASK`` when SLURM set it, bounded by this process's
   CPU affinity (``os.sched_getaffinity``; ``os.cpu_count`` where there is none).

``sweep --workers N`` gives each worker ``allowed // N`` threads (at least one) unless the user
set a count by 1. or 2., which is then each worker's.

Deterministic CPU runs use one intra-op thread, whatever the flags say. CPU kernels split their
reductions (convolution weight gradients, batch-norm statistics, sums) into one partial sum per
thread, so the rounding and hence every weight depend on the thread count: the same
``--deterministic`` run gave other bytes in a 1-thread sweep worker than in a 2-thread process.
Rewriting those reductions is not ours to do (they live in oneDNN and ATen), so deterministic
means one thread: the same bytes in any process, worker or SLURM task. It costs the speed of the
other cores, which is what ``--deterministic`` trades away anyway. CUDA runs are unaffected
(their determinism is cuBLAS' and cuDNN's; their CPU threads only feed the device).

    python -c "from lthfast.threads import allowed_cpus, worker_threads; \\
               print(allowed_cpus(), worker_threads(None, 2))"
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

from .errors import UserError

DETERMINISTIC_CPU_THREADS = 1  # see the module docstring: reductions depend on the thread count


def _positive(value: Optional[str]) -> Optional[int]:
    try:
        n = int(value) if value else 0
    except ValueError:
        return None
    return n if n >= 1 else None


def allowed_cpus(environ: Mapping[str, str] = os.environ) -> int:
    """The CPUs this process may use: its affinity, bounded by SLURM's CPUs per task."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS has no affinity
        cpus = os.cpu_count() or 1
    slurm = _positive(environ.get("SLURM_CPUS_PER_TASK"))
    return max(1, min(cpus, slurm) if slurm else cpus)


def explicit_threads(threads: Optional[int], environ: Mapping[str, str] = os.environ
                     ) -> Optional[int]:
    """A per-process count the user gave (``--threads``, else ``OMP_NUM_THREADS``), or None."""
    if threads is not None:
        check_threads(threads)
        return threads
    return _positive(environ.get("OMP_NUM_THREADS"))


def check_threads(threads: Optional[int]) -> None:
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")


def process_threads(threads: Optional[int], environ: Mapping[str, str] = os.environ) -> int:
    """Intra-op threads of a process that runs alone (not one of a sweep's workers)."""
    return explicit_threads(threads, environ) or allowed_cpus(environ)


def worker_threads(threads: Optional[int], workers: int,
                   environ: Mapping[str, str] = os.environ) -> int:
    """Intra-op threads of each of a sweep's ``workers`` processes: the user's count, or the
    allowed CPUs divided among them so that together they use each core once."""
    return explicit_threads(threads, environ) or max(1, allowed_cpus(environ) // max(1, workers))


def training_threads(threads: Optional[int], device_type: str, deterministic: bool,
                     environ: Mapping[str, str] = os.environ) -> int:
    """What torch is set to for a run: one thread for deterministic CPU runs, else as above."""
    if deterministic and device_type == "cpu":
        check_threads(threads)
        return DETERMINISTIC_CPU_THREADS
    return process_threads(threads, environ)


def apply(threads: Optional[int], device_type: str, deterministic: bool) -> int:
    """Set torch's intra-op threads for a run; returns the count."""
    import torch

    n = training_threads(threads, device_type, deterministic)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
