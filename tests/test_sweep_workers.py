"""One worker per GPU: which device each worker gets (GPUs simulated by count), how a worker is
pinned, and for real on a CPU: two worker processes share a sweep's points, every stage trains
once (points that share a pre-training wait on its lock), the results equal a run in one process.

    pytest tests/test_sweep_workers.py -q
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lthfast.errors import UserError
from lthfast.sweep.workers import pinned, worker_devices


def test_one_worker_per_visible_gpu_by_default():
    assert worker_devices("cuda", 0, 4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert worker_devices("cuda", 0, 1) == []  # one GPU: in this process
    assert worker_devices("cpu", 0, 4) == []  # asked for the CPU: in this process
    assert worker_devices("cuda:2", 0, 4) == []  # one named GPU: in this process
    assert worker_devices("cuda", 1, 4) == []
    assert worker_devices("cuda", 3, 2) == ["cuda:0", "cuda:1", "cuda:0"]  # round robin
    assert worker_devices("cpu", 2, 0) == ["cpu", "cpu"]
    assert worker_devices("cuda:1", 2, 4) == ["cuda:1", "cuda:1"]
    with pytest.raises(UserError, match="--workers must be >= 0"):
        worker_devices("cpu", -1, 0)


def test_a_gpu_worker_sees_only_its_gpu():
    assert pinned("cuda:1", None) == ({"CUDA_VISIBLE_DEVICES": "1"}, "cuda")
    # this process already sees a subset: cuda:1 is the second of them, not physical GPU 1
    assert pinned("cuda:1", "4,6") == ({"CUDA_VISIBLE_DEVICES": "6"}, "cuda")
    assert pinned("cpu", "4,6", cpu_share=3) == ({"OMP_NUM_THREADS": "3"}, "cpu")
    with pytest.raises(UserError, match="only 2 GPU"):
        pinned("cuda:2", "4,6")


# lr is the levels' lr, not pre-training's: the two lrs of one size share its pre-training stage
SWEEP = ('command = "imp"\n[flags]\ndataset = "digits"\nsubset = "random"\nsteps = 2\n'
         'levels = 1\ntrain_steps = 8\nbatch_size = 16\ndeterministic = true\n'
         '[grid]\nsize = [32, 48]\nlr = [0.1, 0.05]\n')


def test_two_workers_share_the_points_and_train_every_stage_once(data_root, tmp_path,
                                                                  monkeypatch, run_cli):
    sweep = tmp_path / "s.toml"
    sweep.write_text(SWEEP)
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("LTHFAST_TRACE", str(trace))  # the workers inherit it
    # one thread per worker on 2 cores, and then in this process: the same numbers need the
    # same threads
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    common = ["--root", data_root, "--device", "cpu"]
    code, out, err = run_cli(["sweep", sweep, "--workers", "2", "--out", tmp_path / "par",
                              *common])
    assert code == 0, err
    par = json.loads(Path(out.split()[-1]).read_text())
    assert par["workers"] == ["cpu", "cpu"]
    assert [r["status"] for r in par["runs"]] == ["ok"] * 4
    assert all(r["seconds"] > 0 for r in par["runs"])
    assert "on cpu" in err and "4 of 4 done" in err
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    trained = [e for e in events if e["event"] == "train"]
    # 2 pre-trainings (sizes) + 4 runs x 2 levels, each trained once: the two lrs of one size
    # share its pre-training, so the workers met on that stage's lock
    assert len(trained) == 10
    assert len(list((tmp_path / "par").rglob("done.json"))) == 10
    workers = {e["pid"] for e in trained}
    assert len(workers) == 2 and os.getpid() not in workers  # both workers, not this process

    trace.unlink()
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, out, err = run_cli(["sweep", sweep, "--out", tmp_path / "seq", *common])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    seq = json.loads(Path(out.split()[-1]).read_text())
    assert seq["workers"] == ["cpu"]
    assert {e["pid"] for e in map(json.loads, trace.read_text().splitlines())} == {os.getpid()}
    for a, b in zip(par["runs"], seq["runs"]):  # the same runs, the same numbers
        assert a["flags"] == b["flags"] and Path(a["artifact"]).name == Path(b["artifact"]).name
        rows = [json.loads((Path(r["artifact"]) / "results.json").read_text())["rows"]
                for r in (a, b)]
        assert rows[0] == rows[1]


def test_workers_on_a_fresh_root_find_the_embedded_dataset_built(tmp_path, monkeypatch, run_cli):
    """digits is built on first use with ffcv's writer processes, which a (daemonic) worker may
    not start: the sweep builds it before the workers need it."""
    sweep = tmp_path / "s.toml"
    sweep.write_text(SWEEP.replace("size = [32, 48]\nlr = [0.1, 0.05]", "size = [32, 48]")
                     .replace("levels = 1", "levels = 0"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code, out, err = run_cli(["sweep", sweep, "--workers", "2", "--device", "cpu",
                              "--root", tmp_path / "fresh", "--out", tmp_path / "out"])
    assert code == 0, err
    record = json.loads(Path(out.split()[-1]).read_text())
    assert [r["status"] for r in record["runs"]] == ["ok", "ok"]
    assert (tmp_path / "fresh" / "digits" / "meta.json").exists()


def test_workers_flag_is_checked(tmp_path, run_cli):
    sweep = tmp_path / "s.toml"
    sweep.write_text(SWEEP)
    for args, message in [(["--workers", "-1"], "--workers must be >= 0"),
                          (["--workers", "2", "--launcher", "local"], "in-process launcher")]:
        code, out, err = run_cli(["sweep", sweep, "--out", tmp_path / "o", *args])
        assert code == 2 and err.count("\n") == 1 and message in err, err
        assert out == "" and not (tmp_path / "o").exists()


def test_ctrl_c_stops_the_workers_and_records_their_points_as_interrupted(data_root, tmp_path):
    """SIGINT to the sweep alone (as a SIGTERM from a scheduler would be): it stops its workers,
    records the points they ran as interrupted, exits 130; no worker is left running."""
    import signal
    import subprocess
    import sys
    import time

    sweep = tmp_path / "s.toml"
    sweep.write_text('command = "imp"\n[flags]\ndataset = "digits"\nsteps = 5\nlevels = 1\n'
                     'train_steps = 400\nbatch_size = 32\n[grid]\nseed = [0, 1, 2]\n')
    trace = tmp_path / "trace.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LTHFAST_")}
    env |= {"LTHFAST_TRACE": str(trace), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lthfast", "sweep", str(sweep), "--workers",
                             "2", "--device", "cpu", "--root", str(data_root), "--out",
                             str(tmp_path / "out")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)

    def training() -> set:
        lines = trace.read_text().splitlines() if trace.exists() else []
        return {e["pid"] for e in map(json.loads, lines) if e["event"] == "train"
                and e["stage"] == "imp/replicate_0/level_0"}

    deadline = time.time() + 120  # both workers in their first point's level 0
    while time.time() < deadline and len(training()) < 2:
        time.sleep(0.05)
    workers = training()
    assert len(workers) == 2, trace.read_text()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; rerun the same command to resume" in err
    [summary] = (tmp_path / "out").glob("sweep_*.json")
    runs = json.loads(summary.read_text())["runs"]
    assert sorted(r["status"] for r in runs) == ["interrupted", "interrupted"]  # seed 2: never
    assert {r["flags"]["seed"] for r in runs} == {0, 1}
    for pid in workers:  # gone: the sweep waited for its workers
        assert not Path(f"/proc/{pid}").exists()


def test_kill_9_of_the_sweep_takes_its_workers_with_it(data_root, tmp_path):
    """``kill -9`` of the sweep (no handler runs in it): its workers stop within seconds, by
    the kernel's parent-death signal or their watchdog, and no queued point starts."""
    import signal
    import subprocess
    import sys
    import time

    sweep = tmp_path / "s.toml"
    sweep.write_text('command = "imp"\n[flags]\ndataset = "digits"\nsteps = 5\nlevels = 1\n'
                     'train_steps = 400\nbatch_size = 32\n[grid]\nseed = [0, 1, 2, 3]\n')
    trace = tmp_path / "trace.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LTHFAST_")}
    env |= {"LTHFAST_TRACE": str(trace), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lthfast", "sweep", str(sweep), "--workers",
                             "2", "--device", "cpu", "--root", str(data_root), "--out",
                             str(tmp_path / "out")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)

    def events() -> list:
        lines = trace.read_text().splitlines() if trace.exists() else []
        return [e for e in map(json.loads, lines) if e["event"] == "train"]

    deadline = time.time() + 120  # both workers in their first point's level 0
    while time.time() < deadline and len({e["pid"] for e in events()
                                          if e["stage"] == "imp/replicate_0/level_0"}) < 2:
        time.sleep(0.05)
    workers = {e["pid"] for e in events()}
    assert len(workers) == 2, trace.read_text()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.1)
    for pid in workers:  # gone, not adopted by init and training on
        state = Path(f"/proc/{pid}/stat")
        assert not state.exists() or state.read_text().split()[2] == "Z", f"worker {pid} alive"
    runs = {e["run"] for e in events()}
    time.sleep(2)
    assert {e["run"] for e in events()} == runs  # no queued point started after
    assert len({r for r in runs if r.startswith("imp_")}) == 2  # the points the workers had


def test_local_jobs_on_gpus_get_one_gpu_each(tmp_path):
    """submitit's local executor hides every GPU from a job that asks for none; lthfast's local
    launcher gives each job one (round robin), by machine index, through the job's shell."""
    from lthfast.sweep.launch import LaunchOptions, _executor, local_gpus

    assert local_gpus("cuda", 2, None) == [0, 1]
    assert local_gpus("cuda", 2, "4,6") == [4, 6]
    assert local_gpus("cuda:1", 2, "4,6") == [6]
    assert local_gpus("cpu", 2, None) == []
    with pytest.raises(UserError, match="by index"):
        local_gpus("cuda", 1, "GPU-8f2c")
    pytest.importorskip("submitit")
    job = _executor("local", tmp_path, LaunchOptions(time_min=2), gpu=3).submit(
        os.getenv, "CUDA_VISIBLE_DEVICES")  # a function: pickled by name, runs there
    assert job.result() == "3"  # what the job's process saw
