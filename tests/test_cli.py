"""The CLI's shared conventions: --root/--out from the environment, artifact path as last line.

    python -m pytest -q tests/test_cli.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def last_line(stdout: str) -> Path:
    return Path(stdout.strip().splitlines()[-1])


def test_env_vars_pick_root_and_out_and_every_command_prints_its_artifact(
        tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the defaults ./datasets and ./runs would land here
    monkeypatch.setenv("LTHFAST_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("LTHFAST_RUNS", str(tmp_path / "runs"))

    code, out, err = run_cli(["build-beton", "synthetic", "--source",
                              "train=64,test=16,size=8,classes=2"])
    assert code == 0, err
    assert last_line(out) == tmp_path / "data" / "synthetic"
    assert (last_line(out) / "meta.json").exists()

    code, out, err = run_cli(["subset", "random", "--dataset", "synthetic", "--size", "8",
                              "--label-noise", "0.5", "--noise-seed", "3"])
    assert code == 0, err
    labels_path, subset_path = (Path(line) for line in out.strip().splitlines()[-2:])
    assert subset_path.parent == tmp_path / "data" / "synthetic" / "subsets"
    subset = np.load(subset_path)
    assert subset.dtype == np.int64 and len(np.unique(subset)) == 8
    assert labels_path.parent == subset_path.parent  # the noisy labels, saved beside it
    true = np.load(tmp_path / "data" / "synthetic" / "train_labels.npy")
    assert np.load(labels_path).shape == true.shape

    code, out, err = run_cli(["scores", "el2n", "--dataset", "synthetic", "--models", "1",
                              "--steps", "2", "--batch-size", "8", "--checkpoint-every", "0"])
    assert code == 0, err
    scores = last_line(out)
    assert scores.name == "scores.npy" and scores.parent.parent == tmp_path / "runs"
    assert np.load(scores).shape == (64,)

    assert not (tmp_path / "datasets").exists() and not (tmp_path / "runs" / "runs").exists()


def test_the_first_run_in_a_fresh_root_equals_the_next(tmp_path):
    """The first run builds digits (importing ffcv on the way) in the same process; its
    results must be the bytes a second run in the built root writes."""
    import os
    import subprocess
    import sys

    args = [sys.executable, "-m", "lthfast", "imp", "--dataset", "digits", "--steps", "5",
            "--train-steps", "15", "--levels", "0", "--batch-size", "32", "--deterministic",
            "--root", str(tmp_path / "data")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LTHFAST_")}
    runs = []
    for out in ("first", "second"):
        r = subprocess.run(args + ["--out", str(tmp_path / out)], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append(last_line(r.stdout) / "results.json")
    assert runs[0].read_bytes() == runs[1].read_bytes()
