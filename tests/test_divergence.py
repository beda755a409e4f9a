"""Divergence is a result, not a crash: recorded with its step and last finite loss, the shell
sweep goes on, no level trains from NaN weights, and result files stay strict JSON.

    python -m pytest -q tests/test_divergence.py
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from reliability import IMP_ARGS, base_env, read_trace, with_flags


@pytest.fixture(scope="module")
def diverging_sweep(cli, digits_root, rel_tmp):
    """A shell sweep with ``set -e`` over a diverging and a sane config: both must run."""
    out = rel_tmp / "sweep"
    common = [*with_flags(IMP_ARGS, levels="1"), "--root", digits_root, "--out", out]
    script = "set -e\nfor lr in 1e6 0.1; do\n  {cmd} --lr $lr --pretrain-lr $lr\ndone\n".format(
        cmd=" ".join(map(str, cli.argv(common))))
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=base_env(),
                       timeout=300)
    return {"out": out, "root": digits_root, "result": r}


def test_divergence_is_recorded_and_the_sweep_goes_on(diverging_sweep):
    r = diverging_sweep["result"]
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    runs = [Path(line) for line in r.stdout.split()]
    assert len(runs) == 2 and runs[0] != runs[1], r.stdout
    diverged, sane = (json.loads((run / "results.json").read_text()) for run in runs)
    assert diverged["config"]["recipe"]["lr"] == 1e6 and sane["config"]["recipe"]["lr"] == 0.1
    # pre-training diverged: no level trains from its NaN weights, and results.json says why
    assert diverged["rows"] == [] and diverged["diverged_in_pretraining"] == [0]
    assert sane["diverged_in_pretraining"] == [] and [r["level"] for r in sane["rows"]] == [0, 1]
    assert all(row["diverged"] is None for row in sane["rows"])
    assert all(row["test_acc"] > 0.2 for row in sane["rows"])
    [pre_diverged] = [p for p in diverging_sweep["out"].glob("pretrain_*")
                      if json.loads((p / "config.json").read_text())["recipe"]["lr"] == 1e6]
    d = json.loads((pre_diverged / "replicate_0" / "done.json").read_text())["diverged"]
    assert isinstance(d, dict) and 0 <= d["step"] < 20


@pytest.fixture(scope="module")
def diverging_level(cli, diverging_sweep):
    """Sane pre-training (the sweep's lr 0.1 one, reused), then levels at lr 1e6: level 0
    diverges on its own, from finite rewind weights."""
    args = [*with_flags(IMP_ARGS, levels="1"), "--root", diverging_sweep["root"],
            "--out", diverging_sweep["out"], "--lr", "1e6", "--pretrain-lr", "0.1"]
    trace = diverging_sweep["out"].parent / "diverging_level.trace"
    run = cli.ok(args, trace=trace)
    return {"run": run, "trace": read_trace(trace)}


def test_a_diverged_level_is_recorded_and_not_pruned_further(diverging_level):
    results = json.loads((diverging_level["run"] / "results.json").read_text())
    assert results["diverged_in_pretraining"] == []
    # level 0 diverged: level 1 would rewind to and prune NaN weights, so it is not trained
    [row] = results["rows"]
    assert row["level"] == 0, results["rows"]
    d = row["diverged"]
    assert isinstance(d, dict) and 20 <= d["step"] < 60, row  # levels run [20, 60)
    assert d["step"] > 20, "the first loss of finite rewind weights cannot be NaN"
    assert isinstance(d["last_finite_loss"], float) and math.isfinite(d["last_finite_loss"]), d
    trained = [r["stage"] for r in diverging_level["trace"] if r["event"] == "train"]
    assert trained == ["imp/replicate_0/level_0"], trained  # pre-training reused, no level 1


def test_divergence_reports_a_real_last_finite_loss(diverging_sweep, diverging_level):
    """Pre-training (and a level) start from finite weights, so their first losses are finite:
    the record must carry the last of them, not NaN; a loss that never was finite is null."""
    out = diverging_sweep["out"]
    [pre] = [p for p in out.glob("pretrain_*")
             if json.loads((p / "config.json").read_text())["recipe"]["lr"] == 1e6]
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


def test_results_json_stays_standard_json_after_divergence(diverging_sweep, diverging_level):
    """NaN/Infinity are not JSON (RFC 8259): strict readers (JavaScript, serde, ...) reject them."""
    files = list(diverging_sweep["out"].glob("imp_*/results.json"))
    files += list(diverging_sweep["out"].rglob("done.json"))
    assert len(files) >= 8  # 3 results.json, 2 pre-trainings, 3 levels
    for path in files:
        try:
            _strict_json(path.read_text())
        except ValueError as exc:
            pytest.fail(f"{path.relative_to(diverging_sweep['out'])}: {exc}")
