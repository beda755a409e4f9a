"""Bad input of every kind: exit 2, one line "error: ...", no traceback, nothing written or
changed (in-process through the real entry point, and a few in a real subprocess).

    python -m pytest -q tests/test_bad_input.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from reliability import IMP_ARGS, base_env, snapshot, with_flags


# Each case: (id, build(sandbox) -> argv, regex the error must match, a typer usage error?)
# A sandbox holds root/ (a copy of digits), out/ (a copy of a finished IMP run, which must stay
# untouched), in/ (input files of the case) and is the working directory of the command.
IMP_SMALL = ["imp", "--dataset", "digits", "--root", "root", "--out", "out", "--subset", "random",
             "--size", "64", "--steps", "20", "--levels", "1", "--train-steps", "60",
             "--batch-size", "32"]


# with --subset-file the file names the subset: no --subset / --size beside it
IMP_FILE = [a for i, a in enumerate(IMP_SMALL)
            if a not in ("--subset", "--size") and IMP_SMALL[i - 1] not in ("--subset", "--size")]


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
    return with_flags([a for a in IMP_ARGS if a != "--deterministic"], root="root", out="out",
                      lr="0.05")


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
        return with_flags(IMP_SMALL, out="in/afile/sub")
    ro = sandbox / "in" / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return with_flags(IMP_SMALL, out="in/ro/sub")


def _train_size(sandbox):
    return json.loads((sandbox / "root" / "digits" / "meta.json").read_text())["train_size"]


BAD_INPUTS = [
    ("unknown-dataset", lambda s: with_flags(IMP_SMALL, dataset="nosuchset"), r"nosuchset", False),
    ("unknown-dataset-build", lambda s: ["build-beton", "nosuchset", "--root", "root"],
     r"nosuchset", False),
    ("unknown-model", lambda s: IMP_SMALL + ["--model", "resnet7"], r"resnet7", False),
    ("unknown-model-unbuilt-root",
     lambda s: with_flags(IMP_SMALL, root="emptyroot") + ["--model", "resnet7"], r"resnet7", False),
    ("scores-unknown-model",
     lambda s: ["scores", "el2n", "--dataset", "digits", "--root", "root", "--out", "out",
                "--models", "1", "--steps", "5", "--model", "resnet7"], r"resnet7", False),
    ("unknown-subset-kind", lambda s: with_flags(IMP_SMALL, subset="bogus"), r"bogus", True),
    ("missing-root-cifar10", lambda s: with_flags(IMP_SMALL, dataset="cifar10", root="emptyroot"),
     r"cifar10", False),
    ("missing-root-synthetic",
     lambda s: with_flags(IMP_SMALL, dataset="synthetic", root="emptyroot"), r"not built", False),
    ("corrupt-npy", _corrupt_npy, r"train_images\.npy", False),
    ("bitflip-npy", _bitflip_npy, r"train_images\.npy \(checksum mismatch\)", False),
    ("truncated-pretrain-weights", _truncated_weights, r"weights\.pt", False),
    ("size-0", lambda s: with_flags(IMP_SMALL, size="0"), r"--size", False),
    ("size-negative", lambda s: with_flags(IMP_SMALL, size="-1"), r"--size", False),
    ("size-too-large", lambda s: with_flags(IMP_SMALL, size=str(_train_size(s) + 1)), r"--size",
     False),
    ("scores-wrong-length",
     lambda s: with_flags(IMP_SMALL, subset="easy", scores=_npy(s, "short.npy", np.zeros(100))),
     r"shape", False),
    ("scores-nan",
     lambda s: with_flags(IMP_SMALL, subset="hard",
                     scores=_npy(s, "nan.npy", np.r_[np.nan, np.zeros(_train_size(s) - 1)])),
     r"NaN", False),
    ("subset-cmd-scores-nan",
     lambda s: ["subset", "hard", "--dataset", "digits", "--root", "root", "--size", "64",
                "--scores", _npy(s, "nan.npy", np.r_[np.zeros(_train_size(s) - 1), np.nan])],
     r"NaN", False),
    ("subset-file-out-of-range",
     lambda s: with_flags(IMP_FILE, subset_file=_npy(s, "oor.npy",
                                                 np.array([0, 1, _train_size(s)], np.int64))),
     r"outside", False),
    ("subset-file-negative",
     lambda s: with_flags(IMP_FILE, subset_file=_npy(s, "neg.npy", np.array([-1, 1, 2], np.int64))),
     r"outside", False),
    ("subset-file-duplicates",
     lambda s: with_flags(IMP_FILE, subset_file=_npy(s, "dup.npy", np.array([1, 1, 2], np.int64))),
     r"duplicate", False),
    ("label-noise-1.5", lambda s: with_flags(IMP_SMALL, label_noise="1.5"), r"--label-noise",
     False),
    ("label-noise-negative", lambda s: with_flags(IMP_SMALL, label_noise="-0.1"), r"--label-noise",
     False),
    ("steps-negative", lambda s: with_flags(IMP_SMALL, steps="-1"), r"--steps", False),
    ("train-steps-0", lambda s: with_flags(IMP_SMALL, train_steps="0"), r"--train-steps", False),
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
     lambda s: (s / "in" / "afile").write_text("") or with_flags(IMP_SMALL, out="in/afile"),
     r"in/afile", False),
    # a few more of the same family, cheap in-process
    ("levels-negative", lambda s: with_flags(IMP_SMALL, levels="-1"), r"--levels", False),
    ("replicates-0", lambda s: IMP_SMALL + ["--replicates", "0"], r"--replicates", False),
    ("batch-size-0", lambda s: with_flags(IMP_SMALL, batch_size="0"), r"--batch-size", False),
    ("lr-nan", lambda s: IMP_SMALL + ["--lr", "nan"], r"--lr", False),
    ("label-noise-nan", lambda s: with_flags(IMP_SMALL, label_noise="nan"), r"--label-noise",
     False),
    ("offset-negative", lambda s: with_flags(IMP_SMALL, offset="-1"), r"--offset", False),
    ("steps-not-below-train-steps", lambda s: with_flags(IMP_SMALL, steps="60"), r"--steps", False),
    ("scores-file-missing", lambda s: with_flags(IMP_SMALL, subset="easy", scores="in/nope.npy"),
     r"nope\.npy", False),
    ("subset-file-pickled-objects",
     lambda s: with_flags(IMP_FILE,
                          subset_file=_npy(s, "obj.npy", np.array([1, "a", None], object))),
     r"obj\.npy", False),
    ("subset-file-floats",
     lambda s: with_flags(IMP_FILE, subset_file=_npy(s, "float.npy", np.array([1.0, 2.5]))),
     r"integer", False),
]
BAD_BY_ID = {case[0]: case for case in BAD_INPUTS}
# These also run through the real entry point (a fresh ``python -m lthfast`` process).
BAD_SUBPROCESS = ["unknown-subset-kind", "unwritable-out", "label-noise-1.5", "corrupt-npy"]


def _touched(before: dict, after: dict) -> dict:
    """Files added, removed or changed; new empty directories are tolerated (lock files are not
    in a snapshot: they are the locking protocol)."""
    added = {k for k in set(after) - set(before) if after[k][0] != "dir"}
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
