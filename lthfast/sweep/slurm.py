"""SLURM job arrays: is a controller there, submit a sweep's points as one array, follow each
array task to its end (ok / failed / requeued n times), and collect what a previous submission
of the same grid finished.

A sweep's summary (``OUT/sweep_<hash>.json``, the same path for the same grid) records per point
its SLURM job id, the log file and its state. Running the same ``sweep --launcher slurm``
command again collects: points whose job finished are read from its result (nothing trains
again), points whose job still waits or runs are left to it, and only points whose job failed or
was cancelled are submitted again. ``--wait`` waits for the array and writes the final summary.

Job states come from ``squeue``/``scontrol``, never ``sacct``: sacct needs the accounting
database (slurmdbd), which many small clusters and our test cluster (scripts/slurm-local.sh)
do not run, and submitit's own polling would warn on every sacct call and could not tell a
cancelled task from a pending one without it. ``scontrol show job`` knows a finished job for
``MinJobAge`` (300 s by default) after it ends; a task that is neither running nor known there
nor left a result counts as failed, and rerunning the command submits it again.

    lthfast sweep sweeps/demo_digits.toml --smoke --launcher slurm --time-min 10   # submit
    lthfast sweep sweeps/demo_digits.toml --smoke --launcher slurm --wait          # collect
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from ..errors import UserError

PING_S = 10.0  # how long the controller may take to answer before it counts as unreachable
POLL_S = 2.0  # how often a waiting sweep asks the scheduler about its tasks
GRACE_S = 5.0  # a task that ended without a result file: how long to wait for one to appear
# the states in which a task may still produce its result
LIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
        "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD",
        "STOPPED"}


def check_scheduler() -> None:
    """UserError (one line) unless ``sbatch`` is on PATH and the controller answers
    ``scontrol ping`` within ``PING_S``: checked before anything is written or submitted."""
    missing = [c for c in ("sbatch", "scontrol", "squeue") if shutil.which(c) is None]
    if missing:
        raise UserError(f"--launcher slurm: {', '.join(missing)} not found on PATH (run the sweep "
                        "where SLURM's commands are, e.g. a login node); nothing was submitted")
    try:
        done = subprocess.run(["scontrol", "ping"], capture_output=True, text=True,
                              timeout=PING_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"--launcher slurm: the SLURM controller did not answer within "
                        f"{PING_S:.0f} s (scontrol ping); nothing was submitted") from None
    said = next((ln.strip() for ln in (done.stdout + "\n" + done.stderr).splitlines()
                 if ln.strip()), "")
    if done.returncode != 0 or " is UP" not in said:
        raise UserError(f"--launcher slurm: no SLURM controller answers (scontrol ping: "
                        f"{said or f'exit {done.returncode}'}); nothing was submitted")


def _expand(tasks: str) -> list[str]:
    """scontrol's ArrayTaskId of a pending block ("2-5%16", "1,3-4") -> ["2", "3", "4", "5"]."""
    out: list[str] = []
    for part in tasks.split("%")[0].split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            out += [str(i) for i in range(int(lo), int(hi) + 1)]
        elif part:
            out.append(part)
    return out


def task_states(job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """{"<array>_<task>" (submitit's job id): {"state", "restarts"}} for the tasks the
    controller knows; a task it has forgotten (or never had) is absent."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    states: dict[str, dict[str, Any]] = {}
    for array in arrays:
        try:
            done = subprocess.run(["scontrol", "show", "job", "-o", array], capture_output=True,
                                  text=True, timeout=PING_S)
        except subprocess.TimeoutExpired:
            continue  # unknown this time; asked again at the next poll
        for line in done.stdout.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "JobState" not in fields:
                continue
            state = {"state": fields["JobState"], "restarts": int(fields.get("Restarts", 0))}
            if fields.get("ArrayJobId") and fields.get("ArrayTaskId"):
                for task in _expand(fields["ArrayTaskId"]):
                    states[f"{fields['ArrayJobId']}_{task}"] = state
            # submitit names a one-task array by its job id alone ("12", not "12_0")
            states.setdefault(fields.get("JobId", ""), state)
    return states


def _job(folder: Path, job_id: str):
    import submitit

    return submitit.SlurmJob(folder=folder, job_id=job_id)


def _outcome(job) -> Optional[dict]:
    """What the task's result file says: its record, or an error record; None if no file yet."""
    import pickle

    if not job.paths.result_pickle.exists():
        return None
    try:
        outcome, value = pickle.loads(job.paths.result_pickle.read_bytes())
    except (EOFError, pickle.UnpicklingError):
        return None  # still being written
    if outcome == "success" and isinstance(value, dict):
        return value
    last = [ln for ln in str(value).strip().splitlines() if ln.strip()] or ["no message"]
    return {"status": "error", "error": f"job {job.job_id} raised {last[-1].strip()} "
                                        f"(log: {job.paths.stderr})"}


def finished(folder: Path, point: dict, job_id: str, state: Optional[dict],
             ended_since: Optional[float] = None) -> Optional[dict]:
    """The final record of one point's task, or None while it may still produce one.
    ``state``: its entry of ``task_states`` (None: the controller does not know it)."""
    job = _job(folder, job_id)
    record = _outcome(job)
    restarts = state["restarts"] if state else 0
    meta = {"job": job_id, "log": str(job.paths.stderr), "requeued": restarts}
    if record is not None:
        return {"flags": point} | record | meta | {
            "state": "ok" if record.get("status") == "ok" else "failed"}
    if state is not None and state["state"] in LIVE:
        return None
    if ended_since is not None and time.monotonic() - ended_since < GRACE_S:
        return None  # the result file may reach a shared filesystem a moment after the end
    how = state["state"].lower() if state else "gone from the scheduler"
    return {"flags": point, "status": "error", "state": "failed", **meta,
            "error": f"job {job_id} {how} without a result (log: {job.paths.stderr})"}


def previous(summary: Path, points: list) -> dict[int, dict]:
    """The records of an earlier submission of this grid (same summary path), by point index."""
    import json

    try:
        old = json.loads(summary.read_text())
    except (OSError, ValueError):
        return {}
    if old.get("launcher") != "slurm" or len(old.get("runs", [])) != len(points):
        return {}
    return {i: r for i, r in enumerate(old["runs"])
            if r.get("job") and r.get("flags") == points[i]}


def submit_array(spec, rt, options) -> Path:
    """``sweep --launcher slurm``: submit (or collect) the grid as one array; the summary path
    is returned (UserError when a point failed)."""
    from ..files import atomic_write_json, config_hash
    from .jobs import RunPoint, _executor
    from .spec import check_runtimes

    check_scheduler()  # before any file is written
    check_runtimes(spec, rt)  # with the sweep's device: a bad grid fails before submitting
    points = list(spec.points())
    runtime = {f.name: getattr(rt, f.name) for f in dataclasses.fields(rt)
               if f.name != "progress"}  # a terminal's progress bar does not travel
    folder = Path(options.logs or Path(rt.out) / "submitit").absolute()
    summary = Path(rt.out) / f"sweep_{config_hash({'command': spec.command, 'runs': points})}.json"

    # what an earlier submission of this grid finished or still runs is not submitted again
    records: dict[int, dict] = {}
    jobs: dict[int, str] = {}
    old = previous(summary, points)
    states = task_states([r["job"] for r in old.values()]) if old else {}
    for i, record in old.items():
        if record.get("status") == "ok":
            records[i] = record
            continue
        state = states.get(record["job"])
        if state is not None and state["state"] in LIVE:
            jobs[i] = record["job"]
            continue
        final = finished(folder, points[i], record["job"], state, None)
        if final is not None and final["status"] == "ok":
            records[i] = final
    todo = [i for i in range(len(points)) if i not in records and i not in jobs]
    array = None
    if todo:
        submitted = _executor("slurm", folder, options).map_array(
            RunPoint(), [spec.command] * len(todo), [points[i] for i in todo],
            [runtime] * len(todo))
        for i, job in zip(todo, submitted):
            jobs[i] = job.job_id
        array = submitted[0].job_id.split("_")[0]
    arrays = sorted({j.split("_")[0] for j in jobs.values()}, key=int)
    if array:
        print(f"submitted {len(todo)} job(s) as SLURM array {array} (logs in {folder})",
              file=sys.stderr, flush=True)
    for i in sorted(records):
        print(records[i]["artifact"], flush=True)
    if records:
        print(f"{len(records)} of {len(points)} point(s) already finished by an earlier "
              "submission: not submitted again", file=sys.stderr, flush=True)
    if arrays:
        print(f"progress: squeue -j {','.join(arrays)}", file=sys.stderr, flush=True)

    def write(runs: dict[int, dict]) -> None:
        atomic_write_json(summary, {"file": str(spec.path), "command": spec.command,
                                    "scale": spec.scale, "launcher": "slurm",
                                    "logs": str(folder),
                                    "runs": [runs[i] for i in range(len(points))]})

    def pending(i: int) -> dict:
        return {"flags": points[i], "status": "submitted", "job": jobs[i],
                "log": str(_job(folder, jobs[i]).paths.stderr)}

    if not options.wait:
        # one more look: tasks of an earlier submission may have finished meanwhile
        states = task_states(list(jobs.values())) if jobs else {}
        for i, job_id in list(jobs.items()):
            if i in todo:
                continue
            final = finished(folder, points[i], job_id, states.get(job_id), 0.0)
            if final is not None:
                records[i] = final
                del jobs[i]
        write(records | {i: pending(i) for i in jobs})
        if jobs:
            print(f"{len(records)} of {len(points)} point(s) finished; to collect the results, "
                  f"run the same command again (add --wait to wait for the array): "
                  f"{shlex_argv()}", file=sys.stderr, flush=True)
            print(summary)
            return summary
    else:
        write(records | {i: pending(i) for i in jobs})
        ended: dict[int, float] = {}
        while jobs:
            states = task_states(list(jobs.values()))
            for i, job_id in list(jobs.items()):
                state = states.get(job_id)
                if state is None or state["state"] not in LIVE:
                    ended.setdefault(i, time.monotonic())
                final = finished(folder, points[i], job_id, state, ended.get(i))
                if final is None:
                    continue
                records[i] = final
                del jobs[i]
                line = final["artifact"] if final["status"] == "ok" else None
                if line:
                    print(line, flush=True)
                else:
                    print(f"error: run {i + 1}: {final['error']}", file=sys.stderr, flush=True)
                write(records | {k: pending(k) for k in jobs})
            if jobs:
                time.sleep(POLL_S)
    write(records)
    print(summary)
    failed = [i for i, r in records.items() if r["status"] != "ok"]
    for i in failed:
        print(f"failed: run {i + 1} ({', '.join(f'{k}={v}' for k, v in points[i].items())}): "
              f"{records[i]['error']}", file=sys.stderr)
    if failed:
        raise UserError(f"{len(failed)} of {len(points)} runs failed (see {summary}); running "
                        "the same command again submits only those")
    return summary


def shlex_argv() -> str:
    """This process's command line, as the user would type it again."""
    import shlex

    argv = list(sys.argv)
    if argv and (argv[0].endswith("__main__.py") or Path(argv[0]).name == "lthfast"):
        argv[0] = "lthfast"
    return shlex.join(argv)
