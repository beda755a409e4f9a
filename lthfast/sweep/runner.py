"""A sweep run in this process: its points one after another through the Python API (or, with
``--pack``, imp points packed across runs; with several devices, one worker process per device:
``lthfast.sweep.workers``), progress with elapsed time and ETA on stderr, and the summary
written after every point (``lthfast.sweep.records``, the one summary writer).

Each run starts from a clean torch global state; a run that fails with a user error is reported
and the sweep goes on; a diverged run is a result, not a failure; Ctrl-C stops the sweep and
records the run as interrupted. Finished stages are skipped, so rerunning a sweep trains only
what is missing. Each run's wall time goes into the sweep's record.

    lthfast sweep sweeps/demo_digits.toml --smoke --device cpu   # prints each run, then the summary
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import Interrupted, UserError
from .spec import Sweep, check_runtimes, describe


def in_this_process(command: str, points: list[dict], rt, devices) -> Iterator[tuple]:
    """The points one after another here: ("start", i, device), then ("done", i, record)."""
    from .records import run_point

    for i, point in enumerate(points):
        yield "start", i, rt.device
        yield "done", i, run_point(command, point, rt)


def packed_in_this_process(command: str, points: list[dict], rt, devices) -> Iterator[tuple]:
    """``--pack``: the imp points here, packed across runs (``api.run_prepared_imps``). Each
    point is checked and prepared alone (a bad point fails alone, as without ``--pack``); the
    good ones that share their runtime flags then train together, every compatible
    pre-training and level as one model (at most ``imp.MAX_PACKED`` models at once). Their records
    carry the group's wall time and size; an error while a group trains (rare: a refused
    checkpoint, a full disk) is the result of every point of the group."""
    from ..api import prepare_imp, request_from, run_prepared_imps, with_flags

    groups: dict[str, list[tuple[int, tuple]]] = {}
    for i, point in enumerate(points):
        yield "start", i, rt.device
        start = time.monotonic()
        try:
            request, flags = request_from(command, point, rt)
            key = json.dumps(flags, sort_keys=True)
            prepared = prepare_imp(request, with_flags(rt, flags))
        except UserError as exc:
            yield "done", i, {"flags": point, "status": "error", "error": str(exc),
                              "seconds": round(time.monotonic() - start, 3)}
            continue
        groups.setdefault(key, []).append((i, prepared))
    for members in groups.values():
        start = time.monotonic()
        try:
            runs = run_prepared_imps([p for _, p in members])
            results = [{"status": "ok", "artifact": str(run.path)} for run in runs]
        except UserError as exc:
            results = [{"status": "error", "error": str(exc)}] * len(members)
        seconds = round(time.monotonic() - start, 3)
        for (i, _), result in zip(members, results):
            yield "done", i, {"flags": points[i]} | result | {"seconds": seconds,
                                                                "packed": len(members)}


def run_sweep(spec: Sweep, rt, devices: Sequence[str] = (), pack: bool = False) -> Path:
    """Run every point (here, or with two or more ``devices`` one worker process per device,
    see ``lthfast.sweep.workers``); print each artifact, progress with elapsed time and ETA on
    stderr and, last, the summary ``<out>/sweep_<hash>.json`` (every run's record, its wall
    time included), which is returned (UserError if a run failed)."""
    from ..progress import SweepClock
    from .records import check_failed, summary_path, write_summary
    from .workers import fan_out

    check_runtimes(spec, rt)  # the device is known now: a grid that cannot run here fails first
    points = list(spec.points())
    summary = summary_path(spec, rt.out, points)
    records: dict[int, dict] = {}
    started: dict[int, float] = {}  # points in flight: when they started
    clock = SweepClock(len(points))
    if pack and (spec.command != "imp" or len(devices) > 1):
        raise UserError("--pack packs imp runs in one process: not for "
                        + (f"{spec.command} sweeps" if spec.command != "imp" else "workers"))
    execute = (packed_in_this_process if pack else
               fan_out if len(devices) > 1 else in_this_process)

    def write() -> None:
        write_summary(summary, spec, [records[i] for i in sorted(records)],
                      workers=list(devices) or [rt.device], seconds=round(clock.elapsed(), 3))

    events = execute(spec.command, points, rt, devices)
    try:
        for kind, i, payload in events:
            n = f"[sweep {i + 1}/{len(points)}]"
            if kind == "start":
                started[i] = time.monotonic()
                on = f" on {payload}" if len(devices) > 1 else ""
                print(f"{n} {spec.command} {describe(points[i])}{on}", file=sys.stderr,
                      flush=True)
                continue
            started.pop(i, None)
            records[i] = payload
            if payload["status"] == "ok":
                print(payload["artifact"], flush=True)
            else:
                print(f"error: run {i + 1}: {payload['error']}", file=sys.stderr)
            print(f"{n} {payload['status']} in {clock.format(payload['seconds'])}; "
                  f"{clock.done()}", file=sys.stderr, flush=True)
            write()
    except Interrupted:
        for i, since in started.items():  # the runs Ctrl-C stopped; later ones never started
            records[i] = {"flags": points[i], "status": "interrupted",
                          "seconds": round(time.monotonic() - since, 3)}
        write()
        raise
    finally:
        getattr(events, "close", lambda: None)()  # stops the workers, whatever happened
    write()
    print(summary)
    check_failed([records[i] for i in sorted(records)], summary)
    return summary
