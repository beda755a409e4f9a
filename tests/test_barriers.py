"""The two barriers of ``lthfast lmc`` and the BatchNorm kinds (issue 21): appendix A's midpoint
barrier with the authors' averaged statistics by default, Frankle et al.'s barrier (≥ 0, endpoints
included) for the verdict, "connected" only between children that trained, one definition of
connected, a size-weighted BN recompute, and diverged children recorded, never connected.

    python -m pytest -q tests/test_barriers.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lthfast import api
from lthfast.experiments.analyses import lmc
from lthfast.experiments.common import Context, Runtime, packed_model
from lthfast.models import build
from lthfast.models.packed import unpack_state
from lthfast.train.evaluate import example_losses, predict

SMALL = dict(dataset="digits", train_steps=60, batch_size=32)


def rt(out: Path, root: Path) -> Runtime:
    return Runtime(root=root, out=out, device="cpu", checkpoint_every=0, progress=None)


@pytest.fixture(scope="module")
def spawned(data_root, tmp_path_factory):
    """Two children of w_0 (t = 0: far apart), one replicate, the default (average) kind."""
    out = tmp_path_factory.mktemp("barriers")
    path = api.lmc(api.LmcRequest(steps=0, replicates=1, alphas="0.25,0.5,0.75", **SMALL),
                   rt(out, data_root))
    return out, path, json.loads(path.read_text())


def children_of(summary) -> list[dict]:
    from lthfast.train import checkpoint as ckpt

    stage = Path(summary["per_example"]["0"])
    return [ckpt.load(stage / f"child_{c}" / "weights.pt") for c in (0, 1)]


def test_the_default_kind_is_the_authors_averaged_state_dict_in_eval_mode(spawned, digits,
                                                                           data_root, tmp_path):
    """The midpoint of every state-dict entry (BN buffers too), evaluated in eval mode, minus
    the mean of the endpoints' losses, each with its own statistics: computed here directly."""
    out, path, summary = spawned
    assert summary["bn"] == "average"
    a, b = children_of(summary)
    ctx = Context(rt(tmp_path, data_root), digits)
    mid = {n: (a[n] + b[n]) / 2 if a[n].is_floating_point() else a[n] for n in a}
    data = ctx.train_split()
    losses = example_losses(predict(packed_model(ctx, [a, b, mid]), data), data.labels)
    expected = (losses[2] - (losses[0] + losses[1]) / 2).numpy()
    stage = Path(summary["per_example"]["0"])
    np.testing.assert_allclose(np.load(stage / "loss_barrier.npy"), expected, atol=1e-5)
    assert summary["loss_barrier"] == pytest.approx(float(expected.mean()), abs=1e-5)
    assert summary["loss_barrier"] == summary["loss_barrier_average"]
    # the other kind's dataset means are there too, and they differ (issue 21: 0.17% vs 10.8%)
    assert summary["loss_barrier_recompute"] != pytest.approx(summary["loss_barrier_average"])


def test_frankle_barrier_includes_the_endpoints_and_bounds_the_midpoint(spawned):
    out, path, summary = spawned
    for pair in summary["replicates"]["0"]["pairs"]:
        assert [p["alpha"] for p in pair["path"]] == [0.25, 0.5, 0.75]
        for name in ("loss_barrier", "error_barrier"):
            frankle = pair[f"frankle_{name}"]
            assert frankle >= 0 and frankle >= pair[name]
            assert frankle == pytest.approx(max([0.0] + [p[name] for p in pair["path"]]))
    assert summary["test_error_barrier"] is not None and -1 <= summary["test_error_barrier"] <= 1
    assert summary["connectivity_threshold"] == lmc.CONNECTIVITY_THRESHOLD == 0.02


def test_bn_kind_is_in_the_branch_hash_even_at_its_default():
    from lthfast.config import Recipe
    from lthfast.files import config_hash
    from lthfast.runs import to_dict

    recipe = Recipe("resnet8", 32, 0.1, (), 20)
    old = f"lmc_{config_hash(to_dict(lmc.LmcConfig(recipe=recipe, start=5)) )}"
    average = lmc.LmcConfig(recipe=recipe, start=5).branch
    recompute = lmc.LmcConfig(recipe=recipe, start=5, bn="recompute").branch
    assert len({old, average, recompute}) == 3  # no run made before --bn is reused by either


def test_chance_level_children_are_never_connected(digits, data_root, tmp_path):
    """Two networks with all weights zero predict one class for every example: their barrier is
    exactly 0, but they did not train, so they are not "linearly connected"."""
    zero = {n: torch.zeros_like(t) if t.is_floating_point() else t
            for n, t in unpack_state(build("resnet8", 10, k=1))[0].items()}
    ctx = Context(rt(tmp_path, data_root), digits)
    result = lmc.measure(ctx, [zero, zero], (0.5,))["summary"]
    assert result["frankle_error_barrier"] == 0 and result["error_barrier"] == 0
    assert result["children_trained"] == [False, False]
    assert not result["linearly_connected"] and not result["pairs"][0]["linearly_connected"]


def test_diverged_children_have_no_barrier_and_are_not_connected(digits, data_root, tmp_path):
    state = unpack_state(build("resnet8", 10, k=1))[0]
    nan = {n: torch.full_like(t, float("nan")) if t.is_floating_point() else t
           for n, t in state.items()}
    ctx = Context(rt(tmp_path, data_root), digits)
    result = lmc.measure(ctx, [nan, nan], (0.5,), diverged=[{"step": 3}, {"step": 4}])
    summary, arrays = result["summary"], result["arrays"]
    assert math.isnan(summary["error_barrier"]) and math.isnan(summary["frankle_error_barrier"])
    assert not summary["linearly_connected"]
    assert summary["children_diverged"] == [{"step": 3}, {"step": 4}]
    assert np.isnan(arrays["loss_barrier"]).all()


def test_one_connectivity_rule_for_pairs_replicates_and_runs(data_root, tmp_path):
    """Three children: a replicate is connected when the mean of its pairs' Frankle error
    barriers is under 2% (not when every pair is); the run's verdict is the same rule over its
    replicates."""
    path = api.lmc(api.LmcRequest(steps=20, replicates=2, children=3, **SMALL),
                   rt(tmp_path, data_root))
    summary = json.loads(path.read_text())
    for rep in summary["replicates"].values():
        mean = np.mean([p["frankle_error_barrier"] for p in rep["pairs"]])
        assert rep["frankle_error_barrier"] == pytest.approx(mean)
        assert rep["linearly_connected"] == (all(rep["children_trained"]) and mean < 0.02)
        for p in rep["pairs"]:
            assert p["linearly_connected"] == lmc.connected(p["frankle_error_barrier"])
    mean = np.mean([r["frankle_error_barrier"] for r in summary["replicates"].values()])
    assert summary["linearly_connected"] == (mean < 0.02)
    assert lmc.connected(0.0199) and not lmc.connected(0.02) and not lmc.connected(None)
    assert not lmc.connected(float("nan")) and not lmc.connected(0.0, all_trained=False)


def test_recomputed_bn_statistics_weight_batches_by_their_size(digits, data_root, tmp_path):
    """N is not a multiple of the batch size: the first BN layer's running mean must be the mean
    of its input over all N examples, not the mean of per-batch means (which counts the last,
    partial batch as much as a full one)."""
    ctx = Context(rt(tmp_path, data_root), digits)
    model = packed_model(ctx, unpack_state(build("resnet8", 10, k=1)))
    data = ctx.train_split()
    assert data.n % 1000 != 0
    lmc.recompute_batchnorm(model, data, batch_size=1000)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    inputs = []
    hook = conv.register_forward_hook(lambda m, i, o: inputs.append(o.detach()))
    with torch.no_grad():
        model.eval()
        for start in range(0, data.n, 1000):
            model(data.eval_batch(start, min(start + 1000, data.n), 1)[0])
    hook.remove()
    x = torch.cat(inputs)
    exact = x.double().mean(dim=(0, 2, 3)) if x.dim() == 4 else x.double().mean(0)
    torch.testing.assert_close(bn.running_mean.double(), exact, atol=1e-5, rtol=1e-4)


def test_a_diverged_lmc_is_a_result_and_exits_zero(data_root, tmp_path, run_cli):
    """Issue 24 item 1: children at lr 1e6 diverge; the summary records where, no barrier is 0,
    nothing is connected, and the rerun reads it back (exit 0 both times)."""
    args = ["lmc", "--dataset", "digits", "--steps", "4", "--train-steps", "40", "--lr", "1e6",
            "--root", data_root, "--out", tmp_path]
    for _ in range(2):
        code, out, err = run_cli(args)
        assert code == 0, err
        assert "Traceback" not in err
    summary = json.loads(Path(out.split()[-1]).read_text())
    assert summary["error_barrier"] is None and summary["loss_barrier"] is None
    assert summary["linearly_connected"] is False
    [(rep, children)] = summary["diverged"].items()
    assert rep == "0" and [c["child"] for c in children] == [0, 1]
    assert all(4 <= c["step"] < 40 for c in children)


def test_a_sweep_over_a_diverging_and_a_sane_lr_runs_both_points(data_root, tmp_path, run_cli):
    sweep = tmp_path / "lrs.toml"
    sweep.write_text('command = "lmc"\n[flags]\ndataset = "digits"\nsteps = 4\n'
                     'train_steps = 40\n[grid]\nlr = [1e6, 0.1]\n')
    code, out, err = run_cli(["sweep", sweep, "--root", data_root, "--out", tmp_path / "out"])
    assert code == 0, err
    summaries = sorted((json.loads(p.read_text()) for p in
                        (tmp_path / "out").glob("pretrain_*/lmc_*.json")), key=lambda s: s["lr"])
    assert [s["lr"] for s in summaries] == [0.1, 1e6]
    sane, diverged = summaries
    assert sane["loss_barrier"] is not None and not sane["diverged"]
    assert diverged["loss_barrier"] is None and diverged["diverged"]
