"""``lthfast predict``: rank schemes by the barrier of dense children, say when it cannot
separate them, and correlate with IMP where IMP ran.

    python -m pytest -q tests/test_predict.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lthfast.predict import spearman


def test_spearman_rank_correlation():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties: average ranks
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_predict_ranks_schemes_and_reports_its_cost(data_root, tmp_path, run_cli):
    sweep = tmp_path / "schemes.toml"
    sweep.write_text('command = "imp"\n[flags]\ndataset = "digits"\ntrain_steps = 60\n'
                     'batch_size = 32\nlevels = 3\n[grid]\nsteps = [0, 20]\n')
    code, out, err = run_cli(["predict", sweep, "--replicates", "1", "--level", "1",
                              "--root", data_root, "--out", tmp_path / "out"])
    assert code == 0, err
    result = json.loads(Path(out.split()[-1]).read_text())
    ranking = result["ranking"]
    assert [r["rank"] for r in ranking] == [1, 2]
    assert ranking[0]["loss_barrier"] <= ranking[1]["loss_barrier"]
    # from init (t = 0) the children end in different basins: it must rank last
    assert ranking[1]["scheme"] == {"steps": 0}
    assert result["cost_iterations"] == 2 * 1 * 60 + 2 * 1 * 40  # children x replicates x (T-t)
    assert result["imp_iterations"] == 4 * 1 * 60 + 4 * 1 * 40
    assert result["spearman_predicted_vs_actual"] is None  # no IMP ran for these schemes
    assert "rank  loss barrier" in err and "cost:" in err
