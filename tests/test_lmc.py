"""Linear mode connectivity (``lthfast lmc``): barriers against their definition, the 2% rule,
the falsifiable science check on digits, IMP-level parents, and resumption after kill -9.

    python -m pytest -q tests/test_lmc.py
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from lthfast import api
from reliability import Cli
from lthfast.experiments.analyses.lmc import connected, interpolate, measure
from lthfast.experiments.common import Context, Runtime
from lthfast.models import build
from lthfast.models.packed import unpack_state
from lthfast.prune.magnitude import prune
from lthfast.train import checkpoint as ckpt

SMALL = dict(dataset="digits", train_steps=120, batch_size=32)


def rt(out: Path, root: Path, **kw) -> Runtime:
    return Runtime(root=root, out=out, device="cpu", checkpoint_every=0, progress=None, **kw)


@pytest.fixture(scope="module")
def two_children(data_root, tmp_path_factory):
    """Children spawned at t = 10 of a random-subset pre-training (2 replicates)."""
    out = tmp_path_factory.mktemp("lmc")
    request = api.LmcRequest(subset="random", size=256, steps=10, replicates=2, **SMALL)
    path = api.lmc(request, rt(out, data_root))
    return out, path, json.loads(path.read_text())


def test_interpolation_endpoints_and_midpoint_of_identical_networks():
    a, b = (unpack_state(build("resnet8", 10, k=2))[i] for i in (0, 1))
    assert all(torch.equal(interpolate(a, b, 1.0)[n], a[n]) for n in a)
    assert all(torch.equal(interpolate(a, b, 0.0)[n], b[n]) for n in a)
    assert all(torch.equal(interpolate(a, a, 0.5)[n], a[n]) for n in a)


def test_a_network_has_no_barrier_with_itself_and_endpoints_have_none(two_children, digits,
                                                                      data_root, tmp_path):
    out, path, summary = two_children
    stage = Path(summary["per_example"]["0"])
    child = ckpt.load(stage / "child_0" / "weights.pt")
    other = ckpt.load(stage / "child_1" / "weights.pt")
    ctx = Context(rt(tmp_path, data_root), digits)
    same = measure(ctx, [child, child], (0.5,))
    assert same["summary"]["loss_barrier"] == 0 and same["summary"]["error_barrier"] == 0
    assert not same["arrays"]["loss_barrier"].any()
    ends = measure(ctx, [child, other], (0.0, 1.0))
    path = ends["summary"]["pairs"][0]["path"]
    assert [p["alpha"] for p in path] == [0.0, 0.5, 1.0]  # the midpoint is always measured
    for point in (path[0], path[2]):
        assert point["loss_barrier"] == 0 and point["error_barrier"] == 0, point
    for kind in ("average", "recompute"):  # endpoints are 0 with either BN kind
        ends = measure(ctx, [child, other], (0.0, 1.0), bn=kind)["summary"]["pairs"][0]
        assert ends["path"][0]["loss_barrier"] == 0 == ends["path"][2]["loss_barrier"]


def test_per_example_barriers_average_to_the_dataset_barrier(two_children, digits):
    out, path, summary = two_children
    assert set(summary["replicates"]) == {"0", "1"}
    means = []
    for r, rep in summary["replicates"].items():
        stage = Path(summary["per_example"][r])
        loss = np.load(stage / "loss_barrier.npy")
        error = np.load(stage / "error_barrier.npy")
        assert loss.shape == error.shape == (digits.train_size,) and loss.dtype == np.float32
        assert float(loss.mean()) == pytest.approx(rep["loss_barrier"], abs=1e-6)
        assert float(error.mean()) == pytest.approx(rep["error_barrier"], abs=1e-6)
        assert set(np.unique(error)) <= {-1.0, -0.5, 0.0, 0.5, 1.0}  # 0-1 errors at α = ½
        means.append(rep["loss_barrier"])
    assert summary["loss_barrier"] == pytest.approx(np.mean(means))
    assert {"loss_barrier", "error_barrier", "loss_barrier_average", "loss_barrier_recompute",
            "frankle_error_barrier", "test_error_barrier", "bn",
            "linearly_connected"} <= set(summary)


def test_a_rerun_with_fewer_replicates_keeps_the_finished_ones(two_children, data_root):
    """``lmc --replicates 2`` then ``--replicates 1``: replicate 1's branch is finished on disk,
    so the rewritten summary (and the report's lmc.csv) still holds it, unchanged."""
    from lthfast.results import lmc_rows

    out, path, summary = two_children
    request = api.LmcRequest(subset="random", size=256, steps=10, replicates=1, **SMALL)
    again = api.lmc(request, rt(out, data_root))
    assert again == path and json.loads(again.read_text()) == summary
    assert [r["replicate"] for r in lmc_rows(out)] == [0, 1]


def test_the_two_percent_rule():
    assert connected(0.0) and connected(0.0199) and connected(-0.01)
    assert not connected(0.02) and not connected(0.3)


def test_children_spawned_later_are_more_connected(data_root, tmp_path):
    """The paper's Fig. 1 (right) in small: from a random init (t = 0) two children end in
    different basins; spawned after 20 iterations of training they end in one."""
    barriers = {}
    for t in (0, 20):
        request = api.LmcRequest(steps=t, replicates=1, **SMALL)
        barriers[t] = json.loads(api.lmc(request, rt(tmp_path, data_root)).read_text())
    assert barriers[0]["loss_barrier"] > 0.05 and barriers[0]["error_barrier"] > 0.01
    assert barriers[20]["loss_barrier"] < barriers[0]["loss_barrier"] - 0.05
    assert barriers[20]["linearly_connected"] and not barriers[0]["linearly_connected"]


def test_an_imp_level_parent_spawns_sparse_children(data_root, tmp_path):
    request = api.LmcRequest(subset="all", steps=10, level=1, replicates=1, **SMALL)
    summary = json.loads(api.lmc(request, rt(tmp_path, data_root)).read_text())
    stage = Path(summary["per_example"]["0"])
    assert stage.parent.name == "level_1" and summary["level"] == 1
    # level 1's mask prunes level 0's weights: level 0 trained, level 1 itself did not (it used
    # to train in full just to read its mask)
    level0 = stage.parent.parent / "level_0"
    assert (level0 / "done.json").exists() and not (stage.parent / "done.json").exists()
    mask = ckpt.load(stage / "child_0" / "mask.pt")
    expected = prune(ckpt.load(level0 / "weights.pt"), ckpt.load(level0 / "mask.pt"), 0.2)
    assert all(torch.equal(mask[n], expected[n]) for n in expected)
    for c in (0, 1):
        child = ckpt.load(stage / f"child_{c}" / "weights.pt")
        for name, m in mask.items():
            assert torch.all(child[name][m == 0] == 0), name


def test_lmc_resumes_bit_exactly_after_kill9(data_root, tmp_path):
    args = ["lmc", "--dataset", "digits", "--steps", "10",
            "--train-steps", "60", "--batch-size", "32", "--deterministic",
            "--root", data_root]
    run = lambda out, kill=None: Cli().run(args + ["--out", out], kill=kill, timeout=300)  # noqa: E731

    reference = run(tmp_path / "ref")
    assert reference.returncode == 0, reference.stderr
    killed = run(tmp_path / "kill", {"stage": r"pretrain/replicate_0/lmc_\w+/child_1", "step": 37})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not list((tmp_path / "kill").glob("pretrain_*/lmc_*.json"))
    resumed = run(tmp_path / "kill")
    assert resumed.returncode == 0, resumed.stderr
    a, b = Path(reference.stdout.split()[-1]), Path(resumed.stdout.split()[-1])
    assert a.relative_to(tmp_path / "ref") == b.relative_to(tmp_path / "kill")
    summary = lambda p: {k: v for k, v in json.loads(p.read_text()).items()  # noqa: E731
                         if k != "per_example"}  # absolute paths differ
    assert summary(a) == summary(b)
    for name in ("loss_barrier.npy", "error_barrier.npy"):
        [x] = (tmp_path / "ref").glob(f"pretrain_*/replicate_0/lmc_*/{name}")
        [y] = (tmp_path / "kill").glob(f"pretrain_*/replicate_0/lmc_*/{name}")
        assert x.read_bytes() == y.read_bytes()


def test_lmc_scores_are_the_mean_per_example_barrier_and_rank_imp_subsets(data_root, tmp_path):
    """Definition D.1: per-example loss barrier at spawn step t averaged over pairs and
    replicates, in the score format; ``imp --rank-by lmc`` ranks its easy subset by them."""
    from lthfast.files import file_sha256
    from lthfast.runs import RunStore

    small = dict(dataset="digits", train_steps=60, batch_size=32)
    request = api.ScoreRequest(kind="lmc", steps=10, models=2, children=3, **small)
    path = api.scores(request, rt(tmp_path, data_root))
    scores = np.load(path)
    assert path.parent.name.startswith("lmc_") and scores.dtype == np.float32
    [pre] = [r for r in RunStore(tmp_path).runs("pretrain")]
    assert pre.config["subset"] == {"kind": "all"} and pre.config["recipe"]["steps"] == 10
    [summary] = pre.path.glob("lmc_*.json")
    data = json.loads(summary.read_text())
    assert data["children"] == 3 and set(data["replicates"]) == {"0", "1"}
    assert all(len(rep["pairs"]) == 3 for rep in data["replicates"].values())  # 6 instances
    barriers = [np.load(Path(p) / "loss_barrier.npy") for p in data["per_example"].values()]
    np.testing.assert_allclose(scores, np.mean(barriers, axis=0), rtol=0, atol=1e-7)
    assert scores.std() > 0  # a ranking, not a constant

    run = api.imp(api.ImpRequest(subset="easy", size=300, rank_by="lmc", score_models=2,
                                 score_steps=10, steps=10, levels=0, **small),
                  rt(tmp_path, data_root))
    subset = RunStore(tmp_path).run("pretrain", run.config["pretrain"]).config["subset"]
    assert subset["rank_by"] == "lmc" and subset["scores"] == file_sha256(path)[:16]
    assert len(list(tmp_path.glob("lmc_*"))) == 1  # the scores were reused, not recomputed
