"""Shared by the reliability tests (test_resume, test_bad_input, test_divergence,
test_concurrency, test_checkpoints, test_disk): a subprocess CLI that goes through the one
documented fault seam (``lthfast.faults``: ``LTHFAST_TRACE`` and ``LTHFAST_KILL``), never
through replaced names, and snapshots of what finished stages hold.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import torch

CHECKPOINT_EVERY = "5"  # via LTHFAST_CHECKPOINT_EVERY: by default checkpoints come every 5 minutes
SEED = int(os.environ.get("LTHFAST_TEST_SEED", "20240607"))  # kill delays; shown on failure

# pre-training: steps [0, 20); every level: steps [20, 60); checkpoints every 5 steps
IMP_ARGS = ["imp", "--dataset", "digits", "--subset", "random", "--size", "64", "--steps", "20",
            "--levels", "2", "--train-steps", "60", "--batch-size", "32", "--model", "resnet8",
            "--deterministic"]
SCORE_ARGS = ["scores", "el2n", "--dataset", "digits", "--models", "3", "--steps", "40",
              "--batch-size", "32", "--deterministic"]

def base_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LTHFAST_")}
    env.update({"LTHFAST_CHECKPOINT_EVERY": CHECKPOINT_EVERY, "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in extra.items() if v is not None})
    return env


class Cli:
    """Runs ``python -m lthfast`` as a subprocess, with the fault seam's trace and kill
    variables (``lthfast.faults``) when asked."""

    def argv(self, args) -> list[str]:
        return [sys.executable, "-m", "lthfast", *map(str, args)]

    def popen(self, args, trace=None, kill=None, cwd=None) -> subprocess.Popen:
        env = base_env(LTHFAST_TRACE=trace, LTHFAST_KILL=json.dumps(kill) if kill else None)
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
    """Every entry under ``path``: type, mode, size, mtime and content hash (None: absent).

    Lock files are left out: they are the locking protocol, not output (a process writes its
    pid into one while it holds it, and empties it on release)."""
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
    return {str(p.relative_to(path)): entry(p) for p in sorted(path.rglob("*"))
            if p.name != ".lock"}


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


def with_flags(args, **flags):
    """``args`` with each flag set to the given value (replaced, or appended)."""
    args = list(args)
    for flag, value in flags.items():
        flag = "--" + flag.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args
