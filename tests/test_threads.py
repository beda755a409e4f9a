"""Threads and start-up: what a process is allowed (affinity, SLURM), a sweep's workers sharing
it, deterministic CPU runs giving the same bytes on any thread count, and no dynamo / inductor
imported by a run that neither compiles nor asks for determinism.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_threads.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lthfast.errors import UserError
from lthfast.threads import (allowed_cpus, process_threads, training_threads,
                             worker_threads)

REPO = Path(__file__).resolve().parents[1]
TINY_IMP = ["imp", "--dataset", "digits", "--subset", "random", "--size", "64", "--steps", "2",
            "--levels", "1", "--train-steps", "6", "--batch-size", "16", "--device", "cpu"]


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LTHFAST_", "SLURM_")) and k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env | extra


def test_a_process_takes_the_cpus_it_is_allowed():
    affinity = len(os.sched_getaffinity(0))
    assert allowed_cpus({}) == affinity
    assert allowed_cpus({"SLURM_CPUS_PER_TASK": "1"}) == 1
    assert allowed_cpus({"SLURM_CPUS_PER_TASK": str(affinity + 8)}) == affinity  # bounded
    assert allowed_cpus({"SLURM_CPUS_PER_TASK": "junk"}) == affinity
    # --threads, then OMP_NUM_THREADS, then what is allowed
    assert process_threads(3, {"OMP_NUM_THREADS": "5"}) == 3
    assert process_threads(None, {"OMP_NUM_THREADS": "5"}) == 5
    assert process_threads(None, {"SLURM_CPUS_PER_TASK": "1"}) == 1
    with pytest.raises(UserError, match="--threads must be >= 1"):
        process_threads(0, {})


def test_workers_share_the_allowed_cpus():
    env = {"SLURM_CPUS_PER_TASK": "1"}
    assert worker_threads(None, 2, env) == 1  # never zero
    cpus = allowed_cpus({})
    assert worker_threads(None, 2, {}) == max(1, cpus // 2)
    assert worker_threads(None, 2, {}) * 2 <= max(2, cpus)  # no oversubscription
    assert worker_threads(3, 2, {}) == 3  # the user's count is each worker's
    assert worker_threads(None, 4, {"OMP_NUM_THREADS": "2"}) == 2


def test_deterministic_cpu_runs_use_one_thread():
    assert training_threads(4, "cpu", True, {}) == 1
    assert training_threads(None, "cpu", True, {"OMP_NUM_THREADS": "2"}) == 1
    assert training_threads(4, "cuda", True, {}) == 4
    assert training_threads(4, "cpu", False, {}) == 4


def test_setup_torch_follows_slurm_and_the_flag_in_a_fresh_process():
    code = ("import torch; from lthfast.experiments.common import Runtime, setup_torch; "
            "setup_torch(Runtime()); a = torch.get_num_threads(); "
            "setup_torch(Runtime(threads=2)); print(a, torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], env=clean_env(SLURM_CPUS_PER_TASK="1"),
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "2"]


def test_a_run_without_compile_or_determinism_imports_no_dynamo(data_root, tmp_path):
    """torch.use_deterministic_algorithms imports dynamo and inductor (2.5 s of start-up):
    setup_torch must not call it for a plain CPU run."""
    code = ("import sys; from lthfast.cli import app; "
            "app(sys.argv[1:], standalone_mode=False); "
            "print('LOADED', sorted(m for m in ('torch._dynamo', 'torch._inductor') "
            "if m in sys.modules))")
    args = [*TINY_IMP, "--root", str(data_root), "--out", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-c", code, *args], env=clean_env(OMP_NUM_THREADS="1"),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "LOADED []"
    # the deterministic switch still reaches torch (and so imports inductor) when asked for
    proc = subprocess.run([sys.executable, "-c", code, *args, "--deterministic"],
                          env=clean_env(OMP_NUM_THREADS="1"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "torch._inductor" in proc.stdout.splitlines()[-1]


def test_a_first_run_on_a_fresh_root_builds_arrays_only_and_imports_no_ffcv(tmp_path):
    """digits is built on first use; its betons (ffcv's import alone compiles numba for ~5 s)
    wait until --loader ffcv reads them."""
    code = ("import sys; from lthfast.cli import app; "
            "app(sys.argv[1:], standalone_mode=False); "
            "print('LOADED', sorted(m for m in ('ffcv', 'numba') if m in sys.modules))")
    root = tmp_path / "fresh"
    args = [*TINY_IMP, "--root", str(root), "--out", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-c", code, *args], env=clean_env(OMP_NUM_THREADS="1"),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "LOADED []"
    assert (root / "digits" / "train_images.npy").exists()
    assert not list((root / "digits").glob("*.beton"))


def weight_hashes(out: Path) -> dict[str, str]:
    """Content hash of every weights file under a run root, by path inside it."""
    return {str(p.relative_to(out)): p.read_text() for p in sorted(out.rglob("weights.pt.sha256"))}


def test_deterministic_bytes_do_not_depend_on_the_thread_count(data_root, tmp_path, run_cli):
    hashes = []
    for threads in (1, 2):
        out = tmp_path / f"t{threads}"
        code, stdout, err = run_cli([*TINY_IMP, "--root", data_root, "--out", out,
                                     "--deterministic", "--threads", threads])
        assert code == 0, err
        hashes.append(weight_hashes(out))
    assert len(hashes[0]) == 3 and hashes[0] == hashes[1]  # pretrain, levels 0 and 1


SWEEP = ('command = "imp"\n[flags]\ndataset = "digits"\nsubset = "random"\nsteps = 2\n'
         'levels = 1\ntrain_steps = 6\nbatch_size = 16\ndeterministic = true\n'
         '[grid]\nsize = [32, 48]\n')


def test_workers_get_their_share_and_deterministic_bytes_match_in_process(data_root, tmp_path,
                                                                          monkeypatch, run_cli):
    """A worker's torch runs on its share of the CPUs; deterministic results are the same bytes
    in two workers (one thread each here) as in this process (two threads, unpinned)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the default: what is allowed
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    sweep = tmp_path / "s.toml"
    sweep.write_text(SWEEP)
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("LTHFAST_TRACE", str(trace))
    common = ["--root", data_root, "--device", "cpu"]
    code, out, err = run_cli(["sweep", sweep, "--workers", "2", "--out", tmp_path / "par",
                              *common])
    assert code == 0, err
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    trained = [e for e in events if e["event"] == "train"]
    assert {e["pid"] for e in trained} and os.getpid() not in {e["pid"] for e in trained}
    assert {e["threads"] for e in trained} == {1}  # deterministic: one thread

    trace.unlink()
    sweep.write_text(SWEEP.replace("deterministic = true", "deterministic = false"))
    code, out, err = run_cli(["sweep", sweep, "--workers", "2", "--out", tmp_path / "share",
                              *common])
    assert code == 0, err
    trained = [json.loads(line) for line in trace.read_text().splitlines()]
    trained = [e for e in trained if e["event"] == "train"]
    assert {e["threads"] for e in trained} == {worker_threads(None, 2, {})}

    trace.unlink()
    code, out, err = run_cli(["sweep", sweep, "--workers", "2", "--threads", "2",
                              "--out", tmp_path / "flag", *common])
    assert code == 0, err
    trained = [json.loads(line) for line in trace.read_text().splitlines()]
    assert {e["threads"] for e in trained if e["event"] == "train"} == {2}

    import torch

    torch.set_num_threads(2)  # what a user's process has on two cores
    sweep.write_text(SWEEP)
    code, out, err = run_cli(["sweep", sweep, "--out", tmp_path / "seq", *common])
    assert code == 0, err
    assert weight_hashes(tmp_path / "par") == weight_hashes(tmp_path / "seq")
    assert len(weight_hashes(tmp_path / "seq")) == 6
