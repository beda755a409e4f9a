"""``lthfast report``: finished IMP runs -> one CSV table -> accuracy-vs-sparsity plots.

    pytest tests/test_report.py -q
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import lthfast.cli as cli_module
from lthfast.plots import curves
from lthfast.results import imp_rows, read_csv, write_csv

SMALL = ["imp", "--dataset", "digits", "--steps", "5", "--levels", "2", "--train-steps", "15",
         "--batch-size", "32", "--replicates", "2"]


@pytest.fixture(scope="module")
def two_runs(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    mp = pytest.MonkeyPatch()
    for extra in (["--subset", "all"], ["--subset", "random", "--size", "128"]):
        mp.setattr(sys, "argv", ["lthfast", *SMALL, *extra, "--root", str(data_root),
                                 "--out", str(out)])
        cli_module.main()
    mp.undo()
    return out


def test_report_table_holds_every_finished_level(two_runs, run_cli):
    code, stdout, err = run_cli(["report", "--out", two_runs])
    assert code == 0, err
    paths = [Path(line) for line in stdout.split()]
    assert paths[-1] == two_runs / "report" / "imp.csv"
    rows = read_csv(paths[-1])
    assert len(rows) == 2 * 2 * 3  # runs × replicates × levels 0..2
    for results in two_runs.glob("imp_*/results.json"):
        data = json.loads(results.read_text())
        mine = [r for r in rows if r["run"] == results.parent.name]
        assert [(r["replicate"], r["level"], r["test_acc"]) for r in mine] == [
            (r["replicate"], r["level"], r["test_acc"]) for r in data["rows"]]
        assert {r["t_r"] for r in mine} == {5}
    assert {r["subset"] for r in rows} == {"all", "random_m128"}
    assert {r["subset_size"] for r in rows} == {128, 1438}

    [png] = [p for p in paths if p.suffix == ".png"]
    assert png.name == "imp_digits.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_average_replicates_and_skip_diverged(two_runs, tmp_path):
    rows = read_csv(write_csv(imp_rows(two_runs), tmp_path / "imp.csv"))
    c = curves(rows)
    assert set(c) == {"all, t_r=5", "random_m128, t_r=5"}
    ref = [r["test_acc"] for r in rows if r["subset"] == "all" and r["level"] == 1]
    assert c["all, t_r=5"]["mean"][1] == pytest.approx(np.mean(ref))
    assert c["all, t_r=5"]["std"][1] == pytest.approx(np.std(ref))
    np.testing.assert_allclose(c["all, t_r=5"]["weights"], [1, 0.8, 0.64], atol=1e-3)
    rows[0]["diverged"] = True  # a diverged replicate is left out of the mean, not averaged in
    assert curves(rows)[f"{rows[0]['subset']}, t_r=5"]["n"][rows[0]["level"]] == 1


def test_report_without_runs_is_a_user_error(tmp_path, run_cli):
    code, stdout, err = run_cli(["report", "--out", tmp_path])
    assert code == 2 and err.startswith("error: no finished IMP runs") and stdout == ""
    assert not (tmp_path / "report").exists()
