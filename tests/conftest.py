"""Shared fixtures: datasets built once per test session in a temporary root."""

from __future__ import annotations

import pytest
import torch

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
    """``lthfast ARGS`` in this process through the real entry point: (exit code, stdout, stderr)."""
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
