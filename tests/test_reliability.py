"""Reliability: kill -9 and resume, bad input, divergence, concurrency, checkpoints, disk full.

Every CLI run here is a real subprocess (``python -m lthfast`` through a small wrapper written to a
temporary directory). The wrapper changes nothing about what lthfast computes; it only

- appends a trace line whenever a training stage starts (with its first step) or a stage is marked
  done, so tests can see which stages a rerun trained again and where it resumed;
- on request (``LTHFAST_TEST_KILL``), SIGKILLs its own process at an exact point: a given step of
  a given stage, the entry of ``mark_done`` for a stage, or just before the n-th ``os.replace``
  onto a matching path. A self-inflicted SIGKILL is the same as ``kill -9`` from outside: no
  handler, no ``finally``, no flush. Kills from outside after a random delay are tested as well.

Tiny settings keep the whole file well under two minutes on two CPU cores.

    pytest tests/test_reliability.py -q
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lthfast.errors import UserError

# ---------------------------------------------------------------------------------------------
# helpers (kept in this file on purpose: no conftest changes)
# ---------------------------------------------------------------------------------------------

CHECKPOINT_EVERY = "5"  # via LTHFAST_CHECKPOINT_EVERY: the Runtime default (200) exceeds these runs
SEED = int(os.environ.get("LTHFAST_TEST_SEED", "20240607"))  # kill delays; shown on failure

# pre-training: steps [0, 20); every level: steps [20, 60); checkpoints every 5 steps
IMP_ARGS = ["imp", "--dataset", "digits", "--subset", "random", "--size", "64", "--steps", "20",
            "--levels", "2", "--train-steps", "60", "--batch-size", "32", "--model", "resnet8",
            "--deterministic"]
SCORE_ARGS = ["scores", "el2n", "--dataset", "digits", "--models", "3", "--steps", "40",
              "--batch-size", "32", "--deterministic"]

WRAPPER = r'''
import json, os, re, signal, sys
from pathlib import Path

_KILL = json.loads(os.environ.get("LTHFAST_TEST_KILL") or "null") or {}
_TRACE = os.environ.get("LTHFAST_TEST_TRACE")
_RUN_DIR = re.compile(r"^(pretrain|imp|el2n|forgetting)_[0-9a-f]{12}$")


def stage_name(path):
    """out/imp_<hash>/level_1_group_0 -> imp/level_1_group_0; out/el2n_<hash> -> el2n."""
    parts = Path(path).parts
    for i in range(len(parts) - 1, -1, -1):
        m = _RUN_DIR.match(parts[i])
        if m:
            return "/".join((m.group(1),) + tuple(parts[i + 1:]))
    return str(path)


def trace(**record):
    if _TRACE:
        record["pid"] = os.getpid()
        with open(_TRACE, "a") as f:
            f.write(json.dumps(record) + "\n")


def die(where):
    trace(event="kill", at=where)
    os.kill(os.getpid(), signal.SIGKILL)


import lthfast.experiments.common as common
import lthfast.experiments.imp as imp
import lthfast.experiments.scores as scores

_train = common.train


def train(model, stream, cfg, masks=None, checkpoint_path=None, on_batch=None, progress=None):
    stage = stage_name(Path(checkpoint_path).parent)
    batch, seen = stream.batch, []

    def traced_batch(step):
        if not seen:
            seen.append(step)
            trace(event="train", stage=stage, first_step=step, end_step=cfg.end_step)
        if "stage" in _KILL and re.fullmatch(_KILL["stage"], stage) and step == _KILL["step"]:
            die(f"{stage}:{step}")
        return batch(step)

    stream.batch = traced_batch
    return _train(model, stream, cfg, masks=masks, checkpoint_path=checkpoint_path,
                  on_batch=on_batch, progress=progress)


common.train = train
_mark_done = imp.mark_done


def mark_done(stage_dir, info=None):
    stage = stage_name(stage_dir)
    if "mark_done" in _KILL and re.fullmatch(_KILL["mark_done"], stage):
        die(f"mark_done {stage}")
    _mark_done(stage_dir, info)
    trace(event="done", stage=stage)


imp.mark_done = scores.mark_done = mark_done
_replace, _replaced = os.replace, [0]


def replace(src, dst, *args, **kwargs):
    if "replace" in _KILL and re.search(_KILL["replace"], str(dst)):
        _replaced[0] += 1
        if _replaced[0] == _KILL.get("nth", 1):
            die(f"replace {dst}")
    return _replace(src, dst, *args, **kwargs)


os.replace = replace

from lthfast.cli import main

sys.argv[0] = "lthfast"
main()
'''


def base_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LTHFAST_")}
    env.update({"LTHFAST_CHECKPOINT_EVERY": CHECKPOINT_EVERY, "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in extra.items() if v is not None})
    return env


class Cli:
    """Runs lthfast (through the tracing wrapper) as a subprocess."""

    def __init__(self, wrapper: Path):
        self.wrapper = wrapper

    def argv(self, args) -> list[str]:
        return [sys.executable, str(self.wrapper), *map(str, args)]

    def popen(self, args, trace=None, kill=None, cwd=None) -> subprocess.Popen:
        env = base_env(LTHFAST_TEST_TRACE=trace,
                       LTHFAST_TEST_KILL=json.dumps(kill) if kill else None)
        return subprocess.Popen(self.argv(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=cwd)

    def run(self, args, trace=None, kill=None, cwd=None, timeout=120):
        p = self.popen(args, trace, kill, cwd)
        out, err = p.communicate(timeout=timeout)
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)

    def ok(self, args, trace=None, cwd=None) -> Path:
        r = self.run(args, trace=trace, cwd=cwd)
        assert r.returncode == 0, f"exit {r.returncode}\n{r.stderr[-3000:]}"
        return Path(r.stdout.strip().splitlines()[-1])

    def killed(self, args, kill, trace=None):
        r = self.run(args, trace=trace, kill=kill)
        assert r.returncode == -signal.SIGKILL, (
            f"expected death by SIGKILL at {kill}, got exit {r.returncode}\n{r.stderr[-3000:]}")
        return r


def read_trace(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(path: Path):
    """Every entry under ``path``: type, mode, size, mtime and content hash (None: absent)."""
    path = Path(path)
    if not path.exists():
        return None

    def entry(p: Path):
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            return ("link", os.readlink(p))
        if stat.S_ISDIR(st.st_mode):
            return ("dir", stat.S_IMODE(st.st_mode))
        return ("file", stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, sha(p))

    if not path.is_dir():
        return {".": entry(path)}
    return {str(p.relative_to(path)): entry(p) for p in sorted(path.rglob("*"))}


def done_files(out: Path) -> dict[str, tuple[int, str]]:
    """Finished-stage artifacts (done.json and the weights beside it): mtime and hash."""
    files = {}
    for done in out.rglob("done.json"):
        for p in done.parent.iterdir():
            if p.is_file() and not p.name.startswith("."):
                files[str(p.relative_to(out))] = (p.stat().st_mtime_ns, sha(p))
    return files


def assert_untouched(before: dict, out: Path):
    after = done_files(out)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"finished stages were redone or rewritten: {changed}"


def trained_stages(trace: list[dict]) -> dict[str, int]:
    """stage -> first step of each training call (last call wins)."""
    return {r["stage"]: r["first_step"] for r in trace if r["event"] == "train"}


def assert_same_weights(run_a: Path, run_b: Path):
    from lthfast.train import checkpoint as ckpt

    names = sorted(str(p.relative_to(run_a)) for p in run_a.rglob("*.pt"))
    assert names == sorted(str(p.relative_to(run_b)) for p in run_b.rglob("*.pt"))
    for name in names:
        a, b = ckpt.load(run_a / name), ckpt.load(run_b / name)
        if "states" in a:
            a, b = a["states"], b["states"]
        pairs = zip(a, b) if isinstance(a, list) else [(a, b)]
        for sa, sb in pairs:
            assert sa.keys() == sb.keys(), name
            for key in sa:
                assert torch.equal(sa[key], sb[key]), f"{name}:{key} differs"


def run_dirs(out: Path) -> list[Path]:
    return sorted(out.glob("imp_*")) + sorted(out.glob("pretrain_*"))


# ---------------------------------------------------------------------------------------------
# session fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rel_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="session")
def cli(rel_tmp) -> Cli:
    wrapper = rel_tmp / "lthfast_traced.py"
    wrapper.write_text(WRAPPER)
    return Cli(wrapper)


@pytest.fixture(scope="session")
def digits_root(rel_tmp) -> Path:
    """digits built once (arrays only: the betons are not needed by any command here)."""
    from lthfast.data.build import build_dataset

    root = rel_tmp / "datasets"
    build_dataset("digits", root, betons=False)
    return root


@pytest.fixture(scope="session")
def imp_reference(cli, digits_root, rel_tmp):
    """One uninterrupted IMP run: what every interrupted or concurrent run must reproduce."""
    out = rel_tmp / "imp_ref"
    run = cli.ok([*IMP_ARGS, "--root", digits_root, "--out", out])
    assert run.parent == out and run.name.startswith("imp_")
    results = (run / "results.json").read_bytes()
    rows = json.loads(results)["rows"]
    assert [(r["replicate"], r["level"]) for r in rows] == [(0, 0), (0, 1), (0, 2)]
    assert all(r["diverged"] is None and r["test_acc"] > 0.2 for r in rows)
    return {"out": out, "run": run, "results": results}


@pytest.fixture(scope="session")
def score_reference(cli, digits_root, rel_tmp):
    out = rel_tmp / "scores_ref"
    path = cli.ok([*SCORE_ARGS, "--root", digits_root, "--out", out])
    assert path.name == "scores.npy"
    return {"out": out, "path": path, "bytes": path.read_bytes()}


# ---------------------------------------------------------------------------------------------
# 1. kill -9 and resume
# ---------------------------------------------------------------------------------------------


def test_imp_resumes_bit_exactly_after_kill9_at_chosen_points(cli, digits_root, rel_tmp,
                                                              imp_reference):
    out = rel_tmp / "imp_kill"
    args = [*IMP_ARGS, "--root", digits_root, "--out", out]
    trace = rel_tmp / "imp_kill.trace"

    # (a) during pre-training, at step 13: the checkpoint of step 10 exists, nothing is done
    cli.killed(args, {"stage": "pretrain/group_0", "step": 13}, trace)
    [pre] = out.glob("pretrain_*")
    assert (pre / "group_0" / "checkpoint.pt").exists(), "no periodic checkpoint was written"
    assert not (pre / "replicate_0" / "done.json").exists()
    assert not done_files(out)

    # (b) mid level 1: pre-training resumes at its checkpoint (10), not at 0
    trace.unlink(missing_ok=True)
    cli.killed(args, {"stage": "imp/level_1_group_0", "step": 37}, trace)
    first = trained_stages(read_trace(trace))
    assert first == {"pretrain/group_0": 10, "imp/level_0_group_0": 20,
                     "imp/level_1_group_0": 20}, first
    finished = done_files(out)
    assert {str(Path(k).parent) for k in finished if k.endswith("done.json")} == {
        f"{pre.name}/replicate_0", f"{imp_reference['run'].name}/replicate_0/level_0"}

    # (c) near the end: level 2's weights are saved, its done.json is not yet written
    trace.unlink(missing_ok=True)
    cli.killed(args, {"mark_done": "imp/replicate_0/level_2"}, trace)
    first = trained_stages(read_trace(trace))
    assert first == {"imp/level_1_group_0": 35, "imp/level_2_group_0": 20}, (
        f"finished stages retrained or level 1 not resumed at its checkpoint: {first}")
    assert_untouched(finished, out)
    finished = done_files(out)

    # (d) at the very end, while results.json is being moved into place
    trace.unlink(missing_ok=True)
    cli.killed(args, {"replace": r"results\.json$"}, trace)
    assert trained_stages(read_trace(trace)) == {"imp/level_2_group_0": 55}
    assert_untouched(finished, out)
    finished = done_files(out)

    # (e) to completion: nothing left to train
    trace.unlink(missing_ok=True)
    run = cli.ok(args, trace=trace)
    assert trained_stages(read_trace(trace)) == {}
    assert_untouched(finished, out)
    assert run.name == imp_reference["run"].name
    assert (run / "results.json").read_bytes() == imp_reference["results"]
    assert json.loads((run / "results.json").read_bytes()) == json.loads(imp_reference["results"])
    for a, b in zip(run_dirs(imp_reference["out"]), run_dirs(out)):
        assert_same_weights(a, b)
    # stages that finished leave no resumable checkpoints behind
    assert not list(out.rglob("checkpoint.pt"))


def test_imp_resumes_after_kill9_between_checkpoint_and_its_checksum(cli, digits_root, rel_tmp,
                                                                     imp_reference):
    """kill -9 after checkpoint.pt was replaced but before its .sha256 sidecar was: the old
    sidecar no longer matches. A rerun must still finish (restarting or resuming the stage) and
    reproduce the uninterrupted results, not demand manual deletion."""
    out = rel_tmp / "imp_kill_sidecar"
    args = [*IMP_ARGS, "--root", digits_root, "--out", out]
    # the 2nd periodic checkpoint of level 2 (step 30): a sidecar of step 25 already exists
    cli.killed(args, {"replace": r"level_2_group_0/checkpoint\.pt\.sha256$", "nth": 2})
    r = cli.run(args)
    assert r.returncode == 0, f"rerun after kill -9 failed:\n{r.stderr[-2000:]}"
    run = Path(r.stdout.strip().splitlines()[-1])
    assert (run / "results.json").read_bytes() == imp_reference["results"]


def test_imp_resumes_after_external_kill9_at_random_times(cli, digits_root, rel_tmp,
                                                          imp_reference):
    rng = random.Random(SEED)
    out = rel_tmp / "imp_kill_random"
    args = [*IMP_ARGS, "--root", digits_root, "--out", out]
    finished: dict = {}
    delays = []
    for _ in range(2):
        delay = rng.uniform(1.0, 5.0)
        delays.append(round(delay, 2))
        p = cli.popen(args)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
        p.communicate()
        assert p.returncode in (0, -signal.SIGKILL), (delays, p.returncode)
        assert_untouched(finished, out)
        finished = done_files(out)
    run = cli.ok(args)
    assert_untouched(finished, out)
    assert (run / "results.json").read_bytes() == imp_reference["results"], (
        f"seed {SEED}, kill delays {delays}")


def test_scores_resume_bit_exactly_after_kill9(cli, digits_root, rel_tmp, score_reference):
    out = rel_tmp / "scores_kill"
    args = [*SCORE_ARGS, "--root", digits_root, "--out", out]
    trace = rel_tmp / "scores_kill.trace"

    cli.killed(args, {"stage": "el2n", "step": 23}, trace)
    [root] = out.glob("el2n_*")
    assert (root / "checkpoint.pt").exists() and not (root / "scores.npy").exists()

    trace.unlink()  # trained to the end; killed while scores.npy is moved into place
    cli.killed(args, {"replace": r"scores\.npy$"}, trace)
    assert trained_stages(read_trace(trace)) == {"el2n": 20}, "did not resume at step 20"
    assert not (root / "scores.npy").exists() and not (root / "done.json").exists()

    trace.unlink(missing_ok=True)
    path = cli.ok(args, trace=trace)
    assert trained_stages(read_trace(trace)) == {"el2n": 35}
    assert path.read_bytes() == score_reference["bytes"]
    np.testing.assert_array_equal(np.load(path), np.load(score_reference["path"]))
    assert_same_weights(score_reference["path"].parent, path.parent)

    # finished: a rerun trains nothing and rewrites nothing
    finished = done_files(out)
    assert any(k.endswith("done.json") for k in finished)
    trace.unlink(missing_ok=True)
    assert cli.ok(args, trace=trace) == path
    assert read_trace(trace) == []
    assert_untouched(finished, out)


# ---------------------------------------------------------------------------------------------
# 2. bad input: exit 2, one line "error: ...", no traceback, nothing written
# ---------------------------------------------------------------------------------------------

# Each case: (id, build(sandbox) -> argv, regex the error must match, a typer usage error?)
# A sandbox holds root/ (a copy of digits), out/ (a copy of a finished IMP run, which must stay
# untouched), in/ (input files of the case) and is the working directory of the command.
IMP_SMALL = ["imp", "--dataset", "digits", "--root", "root", "--out", "out", "--subset", "random",
             "--size", "64", "--steps", "20", "--levels", "1", "--train-steps", "60",
             "--batch-size", "32"]


def _with(args, **flags):
    args = list(args)
    for flag, value in flags.items():
        flag = "--" + flag.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


def _npy(sandbox: Path, name: str, array) -> str:
    path = sandbox / "in" / name
    np.save(path, np.asarray(array))
    return str(path)


def _corrupt_npy(sandbox):
    f = sandbox / "root" / "digits" / "train_images.npy"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return IMP_SMALL


def _bitflip_npy(sandbox):
    """Same size, still a valid .npy: only the checksum in meta.json can tell."""
    f = sandbox / "root" / "digits" / "train_images.npy"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    return IMP_SMALL


def _truncated_weights(sandbox):
    [weights] = (sandbox / "out").glob("pretrain_*/replicate_0/weights.pt")
    weights.write_bytes(weights.read_bytes()[:1000])
    # a different IMP config (other lr after t_r) that shares this pre-training
    return _with([a for a in IMP_ARGS if a != "--deterministic"], root="root", out="out", lr="0.05")


def _evil_tar(sandbox, name):
    payload = sandbox / "in" / "payload.txt"
    payload.write_text("owned\n")
    with tarfile.open(sandbox / "in" / name, "w:gz") as tar:
        tar.add(payload, arcname="../evil.txt")
        tar.add(payload, arcname="CINIC-10/train/../../../evil2.txt")
    return sandbox / "in" / name


def _unwritable_out(sandbox):
    if os.geteuid() == 0:  # root ignores permission bits: a path under a regular file can't be made
        (sandbox / "in" / "afile").write_text("")
        return _with(IMP_SMALL, out="in/afile/sub")
    ro = sandbox / "in" / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return _with(IMP_SMALL, out="in/ro/sub")


def _train_size(sandbox):
    return json.loads((sandbox / "root" / "digits" / "meta.json").read_text())["train_size"]


BAD_INPUTS = [
    ("unknown-dataset", lambda s: _with(IMP_SMALL, dataset="nosuchset"), r"nosuchset", False),
    ("unknown-dataset-build", lambda s: ["build-beton", "nosuchset", "--root", "root"],
     r"nosuchset", False),
    ("unknown-model", lambda s: IMP_SMALL + ["--model", "resnet7"], r"resnet7", False),
    ("unknown-model-unbuilt-root",
     lambda s: _with(IMP_SMALL, root="emptyroot") + ["--model", "resnet7"], r"resnet7", False),
    ("scores-unknown-model",
     lambda s: ["scores", "el2n", "--dataset", "digits", "--root", "root", "--out", "out",
                "--models", "1", "--steps", "5", "--model", "resnet7"], r"resnet7", False),
    ("unknown-subset-kind", lambda s: _with(IMP_SMALL, subset="bogus"), r"bogus", True),
    ("missing-root-cifar10", lambda s: _with(IMP_SMALL, dataset="cifar10", root="emptyroot"),
     r"cifar10", False),
    ("missing-root-synthetic", lambda s: _with(IMP_SMALL, dataset="synthetic", root="emptyroot"),
     r"not built", False),
    ("corrupt-npy", _corrupt_npy, r"train_images\.npy", False),
    ("bitflip-npy", _bitflip_npy, r"train_images\.npy \(checksum mismatch\)", False),
    ("truncated-pretrain-weights", _truncated_weights, r"weights\.pt", False),
    ("size-0", lambda s: _with(IMP_SMALL, size="0"), r"--size", False),
    ("size-negative", lambda s: _with(IMP_SMALL, size="-1"), r"--size", False),
    ("size-too-large", lambda s: _with(IMP_SMALL, size=str(_train_size(s) + 1)), r"--size", False),
    ("scores-wrong-length",
     lambda s: _with(IMP_SMALL, subset="easy", scores=_npy(s, "short.npy", np.zeros(100))),
     r"shape", False),
    ("scores-nan",
     lambda s: _with(IMP_SMALL, subset="hard",
                     scores=_npy(s, "nan.npy", np.r_[np.nan, np.zeros(_train_size(s) - 1)])),
     r"NaN", False),
    ("subset-cmd-scores-nan",
     lambda s: ["subset", "hard", "--dataset", "digits", "--root", "root", "--size", "64",
                "--scores", _npy(s, "nan.npy", np.r_[np.zeros(_train_size(s) - 1), np.nan])],
     r"NaN", False),
    ("subset-file-out-of-range",
     lambda s: _with(IMP_SMALL, subset_file=_npy(s, "oor.npy",
                                                 np.array([0, 1, _train_size(s)], np.int64))),
     r"outside", False),
    ("subset-file-negative",
     lambda s: _with(IMP_SMALL, subset_file=_npy(s, "neg.npy", np.array([-1, 1, 2], np.int64))),
     r"outside", False),
    ("subset-file-duplicates",
     lambda s: _with(IMP_SMALL, subset_file=_npy(s, "dup.npy", np.array([1, 1, 2], np.int64))),
     r"duplicate", False),
    ("label-noise-1.5", lambda s: _with(IMP_SMALL, label_noise="1.5"), r"--label-noise", False),
    ("label-noise-negative", lambda s: _with(IMP_SMALL, label_noise="-0.1"), r"--label-noise",
     False),
    ("steps-negative", lambda s: _with(IMP_SMALL, steps="-1"), r"--steps", False),
    ("train-steps-0", lambda s: _with(IMP_SMALL, train_steps="0"), r"--train-steps", False),
    ("scores-steps-0",
     lambda s: ["scores", "el2n", "--dataset", "digits", "--root", "root", "--out", "out",
                "--models", "1", "--batch-size", "32", "--steps", "0"], r"--steps", False),
    # cifar10 reads its archive in place; cinic10 extracts it: neither may write '../' members
    ("archive-traversal-cifar10",
     lambda s: ["build-beton", "cifar10", "--root", "newroot/x", "--source",
                _evil_tar(s, "cifar-10-python.tar.gz")], r"cifar", False),
    ("archive-traversal-cinic10",
     lambda s: ["build-beton", "cinic10", "--root", "newroot/x", "--source",
                _evil_tar(s, "CINIC-10.tar.gz")], r"unsafe|\.\.", False),
    ("unwritable-out", _unwritable_out, r"in/afile/sub|in/ro/sub", False),
    ("out-is-a-file",
     lambda s: (s / "in" / "afile").write_text("") or _with(IMP_SMALL, out="in/afile"),
     r"in/afile", False),
    # a few more of the same family, cheap in-process
    ("levels-negative", lambda s: _with(IMP_SMALL, levels="-1"), r"--levels", False),
    ("replicates-0", lambda s: IMP_SMALL + ["--replicates", "0"], r"--replicates", False),
    ("batch-size-0", lambda s: _with(IMP_SMALL, batch_size="0"), r"--batch-size", False),
    ("lr-nan", lambda s: IMP_SMALL + ["--lr", "nan"], r"--lr", False),
    ("label-noise-nan", lambda s: _with(IMP_SMALL, label_noise="nan"), r"--label-noise", False),
    ("offset-negative", lambda s: _with(IMP_SMALL, offset="-1"), r"--offset", False),
    ("steps-not-below-train-steps", lambda s: _with(IMP_SMALL, steps="60"), r"--steps", False),
    ("scores-file-missing", lambda s: _with(IMP_SMALL, subset="easy", scores="in/nope.npy"),
     r"nope\.npy", False),
    ("subset-file-pickled-objects",
     lambda s: _with(IMP_SMALL, subset_file=_npy(s, "obj.npy", np.array([1, "a", None], object))),
     r"obj\.npy", False),
    ("subset-file-floats",
     lambda s: _with(IMP_SMALL, subset_file=_npy(s, "float.npy", np.array([1.0, 2.5]))),
     r"integer", False),
]
BAD_BY_ID = {case[0]: case for case in BAD_INPUTS}
# These also run through the real entry point (a fresh ``python -m lthfast`` process).
BAD_SUBPROCESS = ["unknown-subset-kind", "unwritable-out", "label-noise-1.5", "corrupt-npy"]


def _ignorable(path: str, entry) -> bool:
    """Lock files (empty ``.lock``) are the locking protocol, not output; tolerated."""
    return Path(path).name == ".lock" and entry[0] == "file" and entry[2] == 0


def _touched(before: dict, after: dict) -> dict:
    """Files added, removed or changed; new empty directories and lock files are tolerated."""
    added = {k for k in set(after) - set(before)
             if after[k][0] != "dir" and not _ignorable(k, after[k])}
    removed = set(before) - set(after)
    changed = {k for k in set(before) & set(after) if before[k] != after[k]}
    return {name: sorted(v) for name, v in
            (("added", added), ("removed", removed), ("changed", changed)) if v}


def _escaped(sandbox: Path) -> list[Path]:
    names = ("evil.txt", "evil2.txt")
    places = (sandbox, sandbox.parent, sandbox / "newroot", sandbox / "newroot" / "x",
              sandbox / "in", Path.cwd())
    return [place / n for place in places for n in names if (place / n).exists()]


def _sandbox(base: Path, digits_root: Path, imp_reference) -> Path:
    (base / "in").mkdir(parents=True)
    shutil.copytree(digits_root, base / "root")
    shutil.copytree(imp_reference["out"], base / "out")
    return base


def _run_in_process(args, cwd: Path, monkeypatch, capfd):
    """``lthfast ARGS`` in this process: (exit code, stdout, stderr incl. any traceback)."""
    import traceback

    import lthfast.cli as cli_module

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["lthfast", *map(str, args)])
    for key in [k for k in os.environ if k.startswith("LTHFAST_")]:
        monkeypatch.delenv(key)
    capfd.readouterr()
    escaped = ""
    try:
        cli_module.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # what Python would print as a traceback at the top level
        code, escaped = 1, traceback.format_exc()
    out, err = capfd.readouterr()
    return code, out, err + escaped


def _check_failure(code, out, err, pattern, args):
    where = f"lthfast {' '.join(map(str, args))}\nexit {code}\nstderr:\n{err[-3000:]}"
    assert "Traceback" not in err, where
    assert code == 2, where
    lines = [line for line in err.splitlines() if line.strip()]
    # usage errors (typer/click) too: one line, not click's "Usage: ..." block
    assert len(lines) == 1 and lines[0].startswith("error: "), where
    assert re.search(pattern, err), f"error does not mention {pattern!r}: {where}"
    assert out.strip() == "", f"printed an artifact path on failure: {out!r}"


@pytest.mark.parametrize("case_id", list(BAD_BY_ID))
def test_bad_input_fails_cleanly(case_id, tmp_path, monkeypatch, capfd, digits_root,
                                 imp_reference):
    _, make_args, pattern, _usage = BAD_BY_ID[case_id]
    sandbox = _sandbox(tmp_path / "sandbox", digits_root, imp_reference)
    args = make_args(sandbox)
    before = snapshot(sandbox)
    code, out, err = _run_in_process(args, sandbox, monkeypatch, capfd)
    _check_failure(code, out, err, pattern, args)
    assert not _escaped(sandbox), f"archive member written outside the root: {_escaped(sandbox)}"
    touched = _touched(before, snapshot(sandbox))
    assert not touched, f"a failing command touched files: {touched}"


@pytest.mark.parametrize("case_id", BAD_SUBPROCESS)
def test_bad_input_fails_cleanly_in_a_real_process(case_id, tmp_path, digits_root, imp_reference):
    _, make_args, pattern, _usage = BAD_BY_ID[case_id]
    sandbox = _sandbox(tmp_path / "sandbox", digits_root, imp_reference)
    args = make_args(sandbox)
    before = snapshot(sandbox)
    r = subprocess.run([sys.executable, "-m", "lthfast", *map(str, args)], cwd=sandbox,
                       capture_output=True, text=True, env=base_env(), timeout=120)
    _check_failure(r.returncode, r.stdout, r.stderr, pattern, args)
    touched = _touched(before, snapshot(sandbox))
    assert not touched, f"a failing command touched files: {touched}"


# ---------------------------------------------------------------------------------------------
# 3. divergence
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diverging_sweep(cli, digits_root, rel_tmp):
    """A shell sweep with ``set -e`` over a diverging and a sane config: both must run."""
    out = rel_tmp / "sweep"
    common = [*_with(IMP_ARGS, levels="1"), "--root", digits_root, "--out", out]
    script = "set -e\nfor lr in 1e6 0.1; do\n  {cmd} --lr $lr --pretrain-lr $lr\ndone\n".format(
        cmd=" ".join(map(str, cli.argv(common))))
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=base_env(),
                       timeout=300)
    return {"out": out, "result": r}


def test_divergence_is_recorded_and_the_sweep_goes_on(diverging_sweep):
    r = diverging_sweep["result"]
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    runs = [Path(line) for line in r.stdout.split()]
    assert len(runs) == 2 and runs[0] != runs[1], r.stdout
    diverged, sane = (json.loads((run / "results.json").read_text()) for run in runs)
    assert diverged["config"]["lr"] == 1e6 and sane["config"]["lr"] == 0.1
    assert [row["level"] for row in diverged["rows"]] == [0, 1]
    for row in diverged["rows"]:
        d = row["diverged"]
        assert isinstance(d, dict) and set(d) >= {"step", "last_finite_loss"}, row
        assert isinstance(d["step"], int) and 20 <= d["step"] < 60, row  # levels run [20, 60)
    assert all(row["diverged"] is None for row in sane["rows"])
    assert all(row["test_acc"] > 0.2 for row in sane["rows"])
    [pre_diverged] = [p for p in diverging_sweep["out"].glob("pretrain_*")
                      if json.loads((p / "config.json").read_text())["lr"] == 1e6]
    d = json.loads((pre_diverged / "replicate_0" / "done.json").read_text())["diverged"]
    assert isinstance(d, dict) and 0 <= d["step"] < 20


def test_divergence_reports_a_real_last_finite_loss(diverging_sweep):
    """Pre-training starts from finite weights, so its first losses are finite: the record must
    carry the last of them, not NaN. Levels rewound to NaN weights never had a finite loss: null."""
    out = diverging_sweep["out"]
    [pre] = [p for p in out.glob("pretrain_*")
             if json.loads((p / "config.json").read_text())["lr"] == 1e6]
    d = json.loads((pre / "replicate_0" / "done.json").read_text())["diverged"]
    assert d["step"] > 0, "step-0 loss of a finite network cannot be NaN"
    assert isinstance(d["last_finite_loss"], float) and math.isfinite(d["last_finite_loss"]), d
    for results in out.glob("imp_*/results.json"):
        for row in json.loads(results.read_text())["rows"]:
            if row["diverged"] is not None:
                lf = row["diverged"]["last_finite_loss"]
                assert lf is None or math.isfinite(lf), row


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_results_json_stays_standard_json_after_divergence(diverging_sweep):
    """NaN/Infinity are not JSON (RFC 8259): strict readers (JavaScript, serde, ...) reject them."""
    files = list(diverging_sweep["out"].glob("imp_*/results.json"))
    files += list(diverging_sweep["out"].rglob("done.json"))
    assert len(files) >= 4
    for path in files:
        try:
            _strict_json(path.read_text())
        except ValueError as exc:
            pytest.fail(f"{path.relative_to(diverging_sweep['out'])}: {exc}")


# ---------------------------------------------------------------------------------------------
# 4. two processes on the same run at once
# ---------------------------------------------------------------------------------------------


def test_two_processes_on_the_same_run(cli, digits_root, rel_tmp, imp_reference):
    out = rel_tmp / "imp_concurrent"
    args = [*IMP_ARGS, "--root", digits_root, "--out", out]
    trace = rel_tmp / "concurrent.trace"
    procs = [cli.popen(args, trace=trace) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-3000:]
    runs = {stdout.strip().splitlines()[-1] for stdout, _ in results}
    assert len(runs) == 1, runs
    run = Path(runs.pop())
    assert (run / "results.json").read_bytes() == imp_reference["results"]
    events = read_trace(trace)
    assert {r["pid"] for r in events} <= {p.pid for p in procs}
    trained = [r["stage"] for r in events if r["event"] == "train"]
    done = [r["stage"] for r in events if r["event"] == "done"]
    assert sorted(trained) == sorted(set(trained)) == [
        "imp/level_0_group_0", "imp/level_1_group_0", "imp/level_2_group_0", "pretrain/group_0"]
    assert sorted(done) == sorted(set(done)) == [
        "imp/replicate_0/level_0", "imp/replicate_0/level_1", "imp/replicate_0/level_2",
        "pretrain/replicate_0"]
    for level in range(3):
        metrics = run / f"level_{level}_group_0" / "metrics.jsonl"
        steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
        assert steps == sorted(set(steps)) and steps[-1] == 60, steps  # one course of training
    assert_same_weights(imp_reference["run"], run)


# ---------------------------------------------------------------------------------------------
# 5. checkpoints refuse what is not a plain tensor checkpoint
# ---------------------------------------------------------------------------------------------


class NotATensor:
    """Any non-allow-listed class: weights_only=True must refuse to rebuild it."""

    def __init__(self, value):
        self.value = value


class RunsCodeOnLoad:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _rewrite_sidecar(path: Path):
    path.with_name(path.name + ".sha256").write_text(sha(path))


def test_checkpoint_roundtrip_is_accepted(tmp_path):
    from lthfast.train import checkpoint as ckpt

    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 7, "log": [{"loss": [1.5]}]}
    ckpt.save(tmp_path / "c.pt", state)
    back = ckpt.load(tmp_path / "c.pt")
    assert torch.equal(back["w"], state["w"]) and back["step"] == 7 and back["log"] == state["log"]


def test_checkpoint_refuses_non_tensor_objects_even_with_a_valid_checksum(tmp_path):
    from lthfast.train import checkpoint as ckpt

    path = tmp_path / "custom.pt"
    ckpt.save(path, {"w": torch.zeros(2), "extra": NotATensor(3)})  # writes a matching sidecar
    _rewrite_sidecar(path)
    with pytest.raises(UserError, match="refused"):
        ckpt.load(path)

    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": RunsCodeOnLoad(str(marker))}, path)
    _rewrite_sidecar(path)
    with pytest.raises(UserError, match="refused"):
        ckpt.load(path)
    assert not marker.exists(), "loading a checkpoint executed code from its pickle"


def test_checkpoint_refuses_modified_or_incomplete_files(tmp_path):
    from lthfast.train import checkpoint as ckpt

    path = tmp_path / "c.pt"
    ckpt.save(path, {"w": torch.arange(100.0)})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum"):
        ckpt.load(path)
    path.write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(UserError, match="checksum"):
        ckpt.load(path)
    path.with_name("c.pt.sha256").unlink()
    assert not ckpt.exists(path)
    with pytest.raises(UserError, match="incomplete"):
        ckpt.load(path)


# ---------------------------------------------------------------------------------------------
# 6. disk full
# ---------------------------------------------------------------------------------------------


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_disk_full_keeps_the_old_file(tmp_path, monkeypatch, failing):
    import lthfast.files as store

    path = tmp_path / "results.json"
    store.atomic_write_json(path, {"old": True})
    before = snapshot(tmp_path)
    monkeypatch.setattr(store.os, failing, _enospc)
    with pytest.raises(UserError, match="disk full"):
        store.atomic_write_json(path, {"new": True})
    monkeypatch.undo()
    assert snapshot(tmp_path) == before  # old content, no temporary file left behind
    assert json.loads(path.read_text()) == {"old": True}


def test_disk_full_in_the_cli_is_one_error_line_and_results_survive(tmp_path, monkeypatch,
                                                                    capsys, digits_root,
                                                                    imp_reference):
    """A rerun of a finished IMP run rewrites results.json; with the disk full that must be
    ``error: disk full ...`` with exit 2, and the old results.json must survive intact."""
    import lthfast.cli as cli_module
    import lthfast.files as store

    out = tmp_path / "out"
    shutil.copytree(imp_reference["out"], out)
    before = snapshot(out)
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        if Path(dst).is_relative_to(out):
            _enospc()
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(store.os, "replace", replace)
    args = [a for a in IMP_ARGS if a != "--deterministic"]  # keep this process's torch flags
    monkeypatch.setattr(sys, "argv", ["lthfast", *args, "--root", str(digits_root),
                                      "--out", str(out), "--device", "cpu"])
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main()
    monkeypatch.undo()
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: disk full"), err
    assert "results.json" in err[0]
    assert snapshot(out) == before
