"""One worker per GPU: the points of a sweep fanned out to worker processes, each pinned to one
device, each taking the next point from a shared queue when it finishes one.

On a machine with several visible GPUs, ``lthfast sweep`` starts one worker per GPU (``--workers
N`` sets the number; with ``--device cpu`` the workers share the CPU, which is how the tests run
them). A worker on ``cuda:k`` runs with ``CUDA_VISIBLE_DEVICES`` naming only that GPU, so nothing
it or a library does can touch another one. Stages are keyed by config hash and locked, so two
workers never train one stage twice (grid points that share a pre-training wait for each other).

Why plain ``multiprocessing`` (spawn) and not submitit's local executor: submitit starts every
job at once, with one fixed set of GPUs per executor, so N workers pulling from one queue (the
load balancing that a grid of runs 100x apart in cost needs) would need a scheduler of our own
on top; a queue and N processes is that scheduler. Finished points stream back as they end, so
progress, ETA and the sweep's record are live, and Ctrl-C reaches every worker (same process
group; a SIGTERM to the sweep is passed on), which stops as a CLI run would.

    lthfast sweep sweeps/fig2_3_cifar10.toml              # 4 GPUs: 4 workers
    lthfast sweep sweeps/demo_digits.toml --smoke --workers 2 --device cpu
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import signal
from typing import Iterator, Optional, Sequence

from ..errors import Interrupted, UserError
from ..threads import worker_threads

POLL_S = 1.0  # how often the parent looks for a worker that died without a word
STOP_S = 60.0  # how long a stopped worker may take to leave its stage cleanly


def worker_devices(device: str, workers: int, cuda_count: int) -> list[str]:
    """The device of each worker process; [] runs the sweep in this process. ``workers`` 0:
    one per visible GPU when ``device`` is plain ``cuda`` and there are several, else none."""
    if workers < 0:
        raise UserError(f"--workers must be >= 0 (0: one per GPU), got {workers}")
    if workers == 0:
        return [f"cuda:{i}" for i in range(cuda_count)] if device == "cuda" and \
            cuda_count > 1 else []
    if workers == 1:
        return []
    if device == "cuda":  # more workers than GPUs share them, round robin
        return [f"cuda:{i % max(cuda_count, 1)}" for i in range(workers)]
    return [device] * workers  # cpu, or all on one named GPU


def pinned(device: str, visible: Optional[str], cpu_share: int = 1) -> tuple[dict[str, str], str]:
    """(environment, device) of a worker: ``cuda:k`` becomes ``cuda`` with only the k-th of
    this process's visible GPUs visible (``visible``: its CUDA_VISIBLE_DEVICES, if set); a CPU
    worker gets ``cpu_share`` threads (N workers each with every core would thrash)."""
    if not device.startswith("cuda:"):
        return ({"OMP_NUM_THREADS": str(cpu_share)} if device == "cpu" else {}), device
    k = int(device.split(":", 1)[1])
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else None
    if ids is not None and k >= len(ids):
        raise UserError(f"{device}: only {len(ids)} GPU(s) visible "
                        f"(CUDA_VISIBLE_DEVICES={visible})")
    return {"CUDA_VISIBLE_DEVICES": ids[k] if ids is not None else str(k)}, "cuda"


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """``values`` set in os.environ for the block (a spawned child inherits it at start)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _stop(signum, _frame):
    # once: a second signal (Ctrl-C reaches the worker, then the parent's terminate) must not
    # interrupt the unwinding that releases the stage's lock
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signum)


def work(worker: int, command: str, points: list, runtime: dict, tasks, results,
         parent: int = 0) -> None:
    """A worker process: run points until the queue says stop (None) or a signal arrives, or
    its ``parent`` (pid) dies (``lthfast.sweep.lifeline``)."""
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        if parent:  # a SIGTERM when the sweep dies, even by kill -9
            from .lifeline import die_with_parent
            die_with_parent(parent)
        from ..experiments.common import Runtime
        from ..progress import PlainProgress
        from .records import run_point

        rt = Runtime(**runtime, progress=PlainProgress())  # plain lines: workers interleave
        while (i := tasks.get()) is not None:
            results.put(("start", worker, i, None))
            results.put(("done", worker, i, run_point(command, points[i], rt)))
    except Interrupted:
        pass  # the parent records the point as interrupted; finished stages are kept
    finally:  # nothing left to unwind: a late terminate just ends the process, quietly
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def fan_out(command: str, points: list, rt, devices: Sequence[str]) -> Iterator[tuple]:
    """Run the points on one worker per device: ("start", i, device), ("done", i, record)."""
    import multiprocessing

    from ..api import built_on_first_use, open_data

    # embedded datasets are built on first use, with ffcv's writer processes, which a daemonic
    # worker may not start: build them here, once, before any worker needs them
    for dataset in sorted(d for d in {p.get("dataset") for p in points}
                          if d and built_on_first_use(d)):
        open_data(rt.root, dataset)
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no CUDA state inherited
    tasks, results = ctx.Queue(), ctx.Queue()
    devices = list(devices)[:len(points)]
    for i in range(len(points)):
        tasks.put(i)
    for _ in devices:
        tasks.put(None)
    runtime = {f.name: getattr(rt, f.name) for f in dataclasses.fields(rt)
               if f.name != "progress"}  # a terminal's progress bar does not travel
    procs = []
    left = len(points)  # points not yet reported done
    # the CPUs this process may use shared out among the workers (lthfast.threads)
    share = worker_threads(rt.threads, len(devices))
    try:
        for w, device in enumerate(devices):
            env, own = pinned(device, os.environ.get("CUDA_VISIBLE_DEVICES"), share)
            with environment(env):
                procs.append(ctx.Process(target=work, name=f"lthfast-worker-{w}", daemon=True,
                                         args=(w, command, points,
                                               runtime | {"device": own, "threads": share},
                                               tasks, results, os.getpid())))
                procs[-1].start()
        busy: dict[int, int] = {}  # worker -> the point it runs
        waiting = set(range(len(points)))  # not started yet
        while left:
            try:
                kind, w, i, record = results.get(timeout=POLL_S)
            except queue.Empty:
                for w, proc in enumerate(procs):
                    if not proc.is_alive() and w in busy:  # killed (OOM, SIGKILL): say which
                        i = busy.pop(w)
                        left -= 1
                        yield "done", i, {"flags": points[i], "status": "error", "seconds": 0.0,
                                          "error": f"worker on {devices[w]} died (exit code "
                                                   f"{proc.exitcode})"}
                if left and not any(p.is_alive() for p in procs) and results.empty():
                    for i in sorted(waiting):
                        yield "done", i, {"flags": points[i], "status": "error", "seconds": 0.0,
                                          "error": "every worker died before it started"}
                    return
                continue
            if kind == "start":
                waiting.discard(i)
                busy[w] = i
                yield "start", i, devices[w]
            else:
                busy.pop(w, None)
                left -= 1
                yield "done", i, record
    finally:
        if not left:  # all done: the workers are exiting by themselves, let them
            for proc in procs:
                proc.join(STOP_S)
        for proc in procs:  # on Ctrl-C they stop by themselves; on SIGTERM or an error, told to
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(STOP_S)
            if proc.is_alive():
                proc.kill()
                proc.join()
