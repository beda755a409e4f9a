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


def test_nan_barriers_rank_last_and_each_level_has_its_own_file(tmp_path, monkeypatch):
    """A scheme whose children diverged (barrier NaN, null in JSON) ranks last, wherever it is
    in the sweep; ``--level`` is part of the result's name (a rerun at another level used to
    overwrite it); the spread is the sample std over replicates."""
    from lthfast import predict as module
    from lthfast.experiments.common import Runtime

    barriers = {0: [None, None], 10: [0.30, 0.50], 20: [0.10, 0.20]}

    def fake_lmc(req, rt):
        per = barriers[req.steps]
        finite = [b for b in per if b is not None]
        path = tmp_path / f"lmc_{req.steps}.json"
        path.write_text(json.dumps({
            "loss_barrier": sum(finite) / len(finite) if finite else None,
            "error_barrier": None, "bn": req.bn,
            "replicates": {str(r): {"loss_barrier": b} for r, b in enumerate(per)}}))
        return path

    monkeypatch.setattr(module.api, "lmc", fake_lmc)
    rt = Runtime(out=tmp_path, device="cpu")
    for order in ([0, 10, 20], [10, 0, 20], [20, 10, 0]):
        points = [{"dataset": "digits", "steps": t} for t in order]
        ranking = json.loads(module.predict(points, rt, level=1, progress=lambda *_: None)
                             .read_text())["ranking"]
        assert [r["scheme"]["steps"] for r in ranking] == [20, 10, 0]
    assert ranking[0]["spread"] == pytest.approx(0.0707107, abs=1e-6)  # std, ddof 1
    assert ranking[0]["bn"] == "average"
    a = module.predict(points, rt, level=1, progress=lambda *_: None)
    b = module.predict(points, rt, level=2, progress=lambda *_: None)
    assert a != b and json.loads(a.read_text())["level"] == 1
    assert json.loads(b.read_text())["level"] == 2
