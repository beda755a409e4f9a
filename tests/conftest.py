"""Shared fixtures: datasets built once per test session in a temporary root, the in-process CLI,
and the reliability tests' subprocess CLI with their uninterrupted reference runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """A stock ffcv Loader sets torch's global thread count to its num_workers; a test that
    builds one must not leave the next test training on other threads (its float reductions,
    hence its numbers, would change with test order)."""
    yield
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    from lthfast.data.build import build_dataset

    root = tmp_path_factory.mktemp("datasets")
    build_dataset("digits", root)
    build_dataset("synthetic", root, source="train=300,test=100,size=16,classes=4")
    return root


@pytest.fixture(scope="session")
def digits(data_root):
    from lthfast.data.arrays import open_dataset

    return open_dataset(data_root, "digits")


@pytest.fixture(scope="session")
def synthetic(data_root):
    from lthfast.data.arrays import open_dataset

    return open_dataset(data_root, "synthetic")


@pytest.fixture
def run_cli(monkeypatch, capfd):
    """``lthfast ARGS`` in this process through the real entry point: (exit code, stdout,
    stderr)."""
    import sys

    import lthfast.cli as cli_module

    def run(args):
        monkeypatch.setattr(sys, "argv", ["lthfast", *map(str, args)])
        capfd.readouterr()
        try:
            cli_module.main()
            code = 0
        except SystemExit as exc:
            code = exc.code
        return (code, *capfd.readouterr())

    return run


# --- the reliability tests' session fixtures: digits, and the uninterrupted reference runs ---

@pytest.fixture(scope="session")
def rel_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="session")
def cli():
    from reliability import Cli

    return Cli()


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
    from reliability import IMP_ARGS

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
    from reliability import SCORE_ARGS

    path = cli.ok([*SCORE_ARGS, "--root", digits_root, "--out", out])
    assert path.name == "scores.npy"
    return {"out": out, "path": path, "bytes": path.read_bytes()}


def pytest_configure(config):
    # registered here, not in pyproject.toml: CI keys its cached venv on that file's hash
    config.addinivalue_line("markers", "slurm: needs a real one-node SLURM "
                            "(scripts/slurm-local.sh: root, or slurm-wlm and munge installed)")
