"""``sweep --launcher slurm`` against a real one-node SLURM (scripts/slurm-local.sh, started once
per test session): results bit-identical to the in-process launcher, collecting without
``--wait``, pre-emption (``scontrol requeue``), the time-limit hook, a cancelled array task, two
arrays racing on one run store. And, without a cluster: no reachable controller is one line.

Every sweep runs as a subprocess (``python -m lthfast``) with one thread, as its SLURM jobs do,
so the in-process references train on the same thread count.

    python -m pytest -q tests/test_slurm.py      # as root: installs slurm-wlm and munge if missing
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm-local.sh"
GRID = ('command = "imp"\n[flags]\ndataset = "digits"\nsteps = 2\nlevels = 1\n'
        'train_steps = 20\nbatch_size = 16\nsubset = "random"\ncheckpoint_every = 5\n'
        '[grid]\nsize = {sizes}\n')
PAUSE_STAGE = "imp/replicate_0/level_0"  # at smoke scale it trains steps 1..10: paused at 7,
PAUSE_STEP = 7  # its last checkpoint is step 5


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LTHFAST_")}
    env |= {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"} | extra
    return env


@pytest.fixture(scope="session")
def slurm_conf():
    """SLURM_CONF of the local cluster: started for this session (stopped after it) unless it
    was already running."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM runs its daemons as root; not root here")
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        pytest.skip("slurm-wlm is not installed and there is no apt-get to install it")
    running = subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode == 0
    if not running:
        started = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True,
                                 timeout=600)
        if started.returncode != 0:
            lines = started.stderr.strip().splitlines() or ["no message"]
            pytest.skip(f"could not start the local SLURM: {lines[-1]}")
    conf = subprocess.run([str(SCRIPT), "env"], capture_output=True, text=True,
                          check=True).stdout.strip().split("=", 1)[1]
    yield conf
    if not running:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=120)


def sweep(path: Path, *args, env: dict, wait: bool = True, timeout: float = 240):
    """``lthfast sweep`` as a subprocess (finished) or, with ``wait=False``, still running."""
    argv = [sys.executable, "-m", "lthfast", "sweep", str(path), *map(str, args)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def slurm_args(data_root: Path, out: Path, *more) -> list:
    return ["--smoke", "--launcher", "slurm", "--cpus-per-task", "1", "--time-min", "5",
            "--root", data_root, "--out", out, *more]


def summary_of(out: Path) -> dict:
    [path] = out.glob("sweep_*.json")
    return json.loads(path.read_text())


def weights(out: Path) -> dict[str, str]:
    """Every stage's weight and mask checksums (file -> sha256), by path inside ``out``."""
    found = {str(p.relative_to(out)): p.read_text() for p in out.rglob("*.sha256")
             if "submitit" not in p.parts}
    assert found
    return found


def grid_file(tmp_path: Path, sizes: list[int], name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(GRID.format(sizes=json.dumps(sizes)))
    return path


def until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def trace_events(path: Path, event: str) -> list[dict]:
    if not path.exists():
        return []
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == event]


def task_of(pid_file: Path) -> str:
    """submitit's job id (<array>_<task>) of the SLURM job whose process ``pid_file`` names.
    From the process's own environment: ``scontrol show job <SLURM_JOB_ID>`` is no way to find
    it, since an array's last task has the array's id as its job id, and that id shows every
    task of the array."""
    pid = pid_file.read_text().strip()
    env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0")
               if "=" in kv)
    if "SLURM_ARRAY_JOB_ID" not in env:  # submitit submits a one-point array as a plain job
        return env["SLURM_JOB_ID"]
    return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"


def same_task(a: str, b: str) -> bool:
    """submitit names a one-task array's only task by the array's id alone."""
    return a == b or a + "_0" == b or a == b + "_0"


@pytest.fixture(autouse=True)
def empty_queue_after(request):
    """Each cluster test leaves the queue empty: a job of the last test still holding the node's
    cores (a requeued task resuming, a paused one sleeping out its pause) would keep the next
    test's array pending past that test's own deadlines."""
    yield
    if "slurm_conf" not in request.fixturenames:
        return
    env = _env(SLURM_CONF=request.getfixturevalue("slurm_conf"))
    subprocess.run(["scancel", "--user", "root"], capture_output=True, env=env)
    until(lambda: not subprocess.run(["squeue", "-h"], capture_output=True, text=True,
                                     env=env).stdout.strip(), 120, "an empty queue")


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """The in-process launcher's weights for the two-point grid (the one-point grid's runs are
    some of its runs: ``same_as``)."""
    tmp = tmp_path_factory.mktemp("reference")
    code, _, err = sweep(grid_file(tmp, [32, 48]), "--smoke", "--root", data_root, "--out",
                         tmp / "out", env=_env())
    assert code == 0, err
    return weights(tmp / "out")


def same_as(reference: dict[str, str], out: Path) -> bool:
    """``out``'s stages have the reference's bytes, and ``out`` has every stage of its runs."""
    mine = weights(out)
    runs = {k.split("/")[0] for k in mine}
    assert any(r.startswith("imp_") for r in runs) and any(r.startswith("pretrain_") for r in runs)
    return mine == {k: v for k, v in reference.items() if k.split("/")[0] in runs}


# --- no cluster needed ---------------------------------------------------------------------

def test_no_sbatch_on_path_is_one_line_and_writes_nothing(data_root, tmp_path):
    out = tmp_path / "out"
    env = _env(PATH=str(Path(sys.executable).parent))  # python, but no SLURM commands
    code, stdout, err = sweep(grid_file(tmp_path, [32]), *slurm_args(data_root, out), env=env)
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "sbatch" in err and "nothing was submitted" in err
    assert not out.exists()


@pytest.mark.slurm
def test_unreachable_controller_is_one_line_and_writes_nothing(slurm_conf, data_root, tmp_path):
    # the same cluster's config with the controller's port moved where nothing listens
    conf = tmp_path / "slurm.conf"
    conf.write_text(Path(slurm_conf).read_text() + "SlurmctldPort=6999\nMessageTimeout=2\n")
    out = tmp_path / "out"
    code, stdout, err = sweep(grid_file(tmp_path, [32]), *slurm_args(data_root, out),
                              env=_env(SLURM_CONF=str(conf)))
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "no SLURM controller answers" in err and "DOWN" in err
    assert not out.exists()


def test_array_tasks_are_told_apart_where_the_last_task_has_the_arrays_job_id(
        tmp_path, monkeypatch):
    # scontrol's real lines for array 127 after ``scancel 127_1`` (trimmed), and a pending
    # block: task 1's JobId is the array's id, so the array's id shows every task; a follower
    # that read them as one record would give task 0 task 1's state (or the reverse)
    lines = ["JobId=127 ArrayJobId=127 ArrayTaskId=1 JobName=lthfast JobState=CANCELLED "
             "Restarts=0 ExitCode=0:15",
             "JobId=128 ArrayJobId=127 ArrayTaskId=0 JobName=lthfast JobState=COMPLETED "
             "Restarts=0 ExitCode=0:0",
             "JobId=129 ArrayJobId=127 ArrayTaskId=2-3%2 JobName=lthfast JobState=PENDING "
             "Restarts=1 ExitCode=0:0"]
    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n[ \"$4\" = 127 ] && printf '%s\\n' " +
                    " ".join(f"'{ln}'" for ln in lines) + "\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    from lthfast.sweep.slurm import finished, task_states

    states = task_states(["127_0", "127_1", "127_3"])
    assert {k: v["state"] for k, v in states.items() if "_" in k} == {
        "127_0": "COMPLETED", "127_1": "CANCELLED", "127_2": "PENDING", "127_3": "PENDING"}
    assert states["127_3"]["restarts"] == 1
    # the cancelled task left no result: failed, the error says cancelled and where its log is
    record = finished(tmp_path / "logs", {"size": 48}, "127_1", states["127_1"], 0.0)
    assert (record["state"], record["status"]) == ("failed", "error")
    assert "cancelled" in record["error"] and record["log"] in record["error"]
    assert record["log"].startswith(str(tmp_path / "logs"))
    assert finished(tmp_path / "logs", {"size": 32}, "127_2", states["127_2"], None) is None


# --- on the local cluster ------------------------------------------------------------------

@pytest.mark.slurm
def test_wait_runs_every_point_bit_identical_to_in_process(slurm_conf, data_root, tmp_path,
                                                           reference):
    out = tmp_path / "out"
    code, stdout, err = sweep(grid_file(tmp_path, [32, 48]), *slurm_args(data_root, out, "--wait"),
                              env=_env(SLURM_CONF=slurm_conf))
    assert code == 0, err
    summary = summary_of(out)
    runs = summary["runs"]
    assert [(r["status"], r["state"], r["requeued"]) for r in runs] == [("ok", "ok", 0)] * 2
    array = runs[0]["job"].split("_")[0]
    assert [r["job"] for r in runs] == [f"{array}_0", f"{array}_1"]
    # the user is told the array, where the logs are and how to follow it
    assert f"SLURM array {array}" in err and f"logs in {out / 'submitit'}" in err
    assert f"progress: squeue -j {array}" in err
    assert "sacct" not in err  # job states come from squeue/scontrol: no accounting needed
    assert all(Path(r["log"]).exists() for r in runs)
    assert weights(out) == reference


@pytest.mark.slurm
def test_without_wait_returns_at_once_and_a_rerun_collects_without_training(
        slurm_conf, data_root, tmp_path, reference):
    out, trace = tmp_path / "out", tmp_path / "trace.jsonl"
    path = grid_file(tmp_path, [32])
    env = _env(SLURM_CONF=slurm_conf, LTHFAST_TRACE=str(trace))
    code, stdout, err = sweep(path, *slurm_args(data_root, out), env=env)
    assert code == 0, err
    assert "run the same command again" in err
    [run] = summary_of(out)["runs"]
    assert run["status"] == "submitted"
    job, array = run["job"], run["job"].split("_")[0]
    until(lambda: not subprocess.run(["squeue", "-h", "-j", array], capture_output=True,
                                     text=True, env=env).stdout.strip(), 120, "the array")
    trained = len(trace_events(trace, "train"))
    assert trained >= 2  # the job trained pre-training and level 0 at least
    code, stdout2, err2 = sweep(path, *slurm_args(data_root, out), env=env)
    assert code == 0, err2
    assert "SLURM array" not in err2 and "already finished" in err2  # nothing submitted
    [run] = summary_of(out)["runs"]
    assert (run["status"], run["job"]) == ("ok", job)
    assert stdout2.split()[0] == run["artifact"]
    assert len(trace_events(trace, "train")) == trained  # nothing trained again
    assert same_as(reference, out)


def _paused_run(slurm_conf, data_root, tmp_path, sizes, *more):
    """A ``--wait`` sweep whose first level-0 stage pauses at step 7 (after its step-5
    checkpoint): (process, out, trace, the paused task's job id)."""
    out, trace, marker = tmp_path / "out", tmp_path / "trace.jsonl", tmp_path / "paused"
    env = _env(SLURM_CONF=slurm_conf, LTHFAST_TRACE=str(trace), LTHFAST_PAUSE=json.dumps(
        {"stage": PAUSE_STAGE, "step": PAUSE_STEP, "file": str(marker), "seconds": 120}))
    proc = sweep(grid_file(tmp_path, sizes), *slurm_args(data_root, out, "--wait", *more),
                 env=env, wait=False)
    until(lambda: marker.exists() and marker.read_text().strip(), 120, "the pause")
    return proc, out, trace, task_of(marker)


def release_requeued(task: str, conf: str) -> None:
    """SLURM holds a requeued job for 120 s before it may start again (its BeginTime): once the
    task is back in the queue, let it start now (a test need not wait out that delay)."""
    env = _env(SLURM_CONF=conf)

    def requeued():
        shown = subprocess.run(["scontrol", "show", "job", "-o", task], capture_output=True,
                               text=True, env=env).stdout
        fields = dict(f.split("=", 1) for f in shown.split() if "=" in f)
        return fields.get("JobState") == "PENDING" and int(fields.get("Restarts", 0)) >= 1

    until(requeued, 60, f"{task} to be requeued")
    subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], check=True, env=env)


def finish_releasing(proc, task: str, conf: str, timeout: float = 240):
    """``proc.communicate()``, releasing ``task`` from any further requeue hold meanwhile (a
    slow resumed job may be signalled again by SLURM's own time-limit warning)."""
    env = _env(SLURM_CONF=conf)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return proc.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                proc.kill()
                raise
        shown = subprocess.run(["scontrol", "show", "job", "-o", task], capture_output=True,
                               text=True, env=env).stdout
        if "JobState=PENDING" in shown and "Restarts=0" not in shown:
            subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], env=env,
                           capture_output=True)


def _resumed_from_checkpoint(trace: Path) -> None:
    starts = [e["first_step"] for e in trace_events(trace, "train")
              if e["stage"] == PAUSE_STAGE]
    # trained from its start (t_r, set by the preset's t*), then resumed from step 5
    assert len(starts) == 2 and starts[0] < starts[1] == 5, starts


@pytest.mark.slurm
def test_requeue_of_a_running_task_resumes_mid_stage_bit_identical(
        slurm_conf, data_root, tmp_path, reference):
    proc, out, trace, task = _paused_run(slurm_conf, data_root, tmp_path, [32])
    subprocess.run(["scontrol", "requeue", task], check=True, env=_env(SLURM_CONF=slurm_conf))
    release_requeued(task, slurm_conf)
    stdout, err = finish_releasing(proc, task, slurm_conf)
    assert proc.returncode == 0, err
    [run] = summary_of(out)["runs"]
    assert (run["status"], run["requeued"]) == ("ok", 1) and same_task(run["job"], task)
    _resumed_from_checkpoint(trace)
    assert same_as(reference, out)


@pytest.mark.slurm
def test_time_limit_signal_requeues_through_the_checkpoint_hook_bit_identical(
        slurm_conf, data_root, tmp_path, reference):
    # --time-min 2: shorter than the paused training, and submitit counts the job past its
    # guaranteed time (min(80%, limit - 10 min)) from the start, so the warning signal (USR2,
    # which sbatch --signal=USR2@90 asks SLURM to send 90 s before the limit) is a time-out to
    # submitit: checkpoint hook, requeue. We send that signal at the pause rather than wait
    # 30-60 s for slurmctld's time-limit sweep to send it: same signal, same job steps. (SLURM
    # may still send its own to a resumed job; each is one more requeue and resume.)
    proc, out, trace, task = _paused_run(slurm_conf, data_root, tmp_path, [32], "--time-min", "2")
    subprocess.run(["scancel", "--signal=USR2", task], check=True,
                   env=_env(SLURM_CONF=slurm_conf))
    release_requeued(task, slurm_conf)  # submitit's hook requeued it
    stdout, err = finish_releasing(proc, task, slurm_conf)
    assert proc.returncode == 0, err
    [run] = summary_of(out)["runs"]
    assert run["status"] == "ok" and run["requeued"] >= 1 and same_task(run["job"], task)
    assert "timed-out" in Path(run["log"]).read_text()  # submitit's hook, not a plain kill
    starts = [e["first_step"] for e in trace_events(trace, "train") if e["stage"] == PAUSE_STAGE]
    assert starts[0] < starts[1] == 5, starts  # trained from its start, then resumed at 5
    assert same_as(reference, out)


@pytest.mark.slurm
def test_a_cancelled_task_is_named_failed_and_a_rerun_trains_only_it(
        slurm_conf, data_root, tmp_path, reference):
    proc, out, trace, task = _paused_run(slurm_conf, data_root, tmp_path, [32, 48])
    subprocess.run(["scancel", task], check=True, env=_env(SLURM_CONF=slurm_conf))
    stdout, err = proc.communicate(timeout=180)
    assert proc.returncode == 2, err
    runs = summary_of(out)["runs"]
    failed = [i for i, r in enumerate(runs) if r["status"] != "ok"]
    assert len(failed) == 1 and runs[failed[0]]["job"] == task
    assert runs[failed[0]]["state"] == "failed" and "cancelled" in runs[failed[0]]["error"]
    [line] = [ln for ln in err.splitlines() if ln.startswith("failed: ")]
    assert f"run {failed[0] + 1}" in line and runs[failed[0]]["log"] in line
    ok = runs[1 - failed[0]]
    assert ok["state"] == "ok" and (Path(ok["artifact"]) / "results.json").exists()
    before = {e["run"] for e in trace_events(trace, "train")}
    trace.unlink()
    code, stdout2, err2 = sweep(grid_file(tmp_path, [32, 48]), *slurm_args(data_root, out,
                                                                          "--wait"),
                                env=_env(SLURM_CONF=slurm_conf, LTHFAST_TRACE=str(trace)))
    assert code == 0, err2
    assert "1 of 2 point(s) already finished" in err2 and "submitted 1 job(s)" in err2
    rerun = {e["run"] for e in trace_events(trace, "train")}
    assert rerun and Path(ok["artifact"]).name not in rerun and rerun <= before
    assert [r["status"] for r in summary_of(out)["runs"]] == ["ok", "ok"]
    assert weights(out) == reference


@pytest.mark.slurm
def test_two_arrays_on_one_run_store_train_each_run_once(slurm_conf, data_root, tmp_path,
                                                          reference):
    out, trace = tmp_path / "out", tmp_path / "trace.jsonl"
    env = _env(SLURM_CONF=slurm_conf, LTHFAST_TRACE=str(trace))
    # the same runs in two orders: two grids (two summaries), two arrays, one run store
    procs = [sweep(grid_file(tmp_path, sizes, f"{k}.toml"), *slurm_args(data_root, out, "--wait"),
                   env=env, wait=False) for k, sizes in enumerate(([32, 48], [48, 32]))]
    results = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    summaries = [json.loads(p.read_text()) for p in sorted(out.glob("sweep_*.json"))]
    assert len(summaries) == 2
    assert len({r["job"].split("_")[0] for s in summaries for r in s["runs"]}) == 2
    for s in summaries:
        assert [r["status"] for r in s["runs"]] == ["ok", "ok"]
    trained = [(e["run"], e["stage"]) for e in trace_events(trace, "train")]
    assert trained and len(trained) == len(set(trained))  # every stage trained once
    assert {r for r, _ in trained} == {Path(r["artifact"]).name for r in summaries[0]["runs"]} \
        | {r for r, s in trained if s.startswith("pretrain")}
    assert weights(out) == reference
