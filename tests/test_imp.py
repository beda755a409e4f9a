"""IMP: global magnitude pruning and end-to-end runs of ``lthfast.experiments.imp.run_imp``.

Pruning (``prune``, ``full_masks``, ``remaining_fraction``) is checked against direct integer and
numpy computations: each level removes exactly round(20% of the remaining) weights over several
successive levels, the removed ones are the smallest magnitudes across all layers together (not
per layer, and never ones already pruned), and masks exist only for conv/linear weights of a real
ResNet-8, never for biases or BatchNorm. End to end, on the embedded digits dataset with a tiny
schedule (t_r = 20 of T = 60 iterations, batch 32, ResNet-8, CPU): every level's training starts
from the saved pre-training weights w_{t_r} under that level's mask (checked by replaying the level
from ``pretrain_<hash>/replicate_0/weights.pt`` and ``mask.pt`` and getting its ``weights.pt`` bit
for bit), each mask is the pruning of the previous level's trained weights, a three-level run beats
chance at every level with 0.8^k of its weights and writes config.json, env.json and results.json,
random subsets are drawn afresh per replicate (or shared on request), and rerunning with more
levels or more replicates trains only what is missing (seen through the fault seam's trace) and
leaves every existing file untouched.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lthfast import api
from lthfast.api import ImpRequest
from lthfast.data.loader import StreamSeeds
from lthfast.experiments.common import (Context, Runtime, new_model, replicate_seeds,
                                        run_training)
from lthfast.models import build
from lthfast.models.packed import PackedLinear, load_packed, unpack_state
from lthfast.prune.magnitude import full_masks, prune, remaining_fraction
from lthfast.train import checkpoint as ckpt
from lthfast.runs import RunStore

T_R, TRAIN_STEPS, BATCH = 20, 60, 32


def round_fifth(r: int) -> int:
    """round(0.2 * r) in exact integer arithmetic (0.2 * r is never exactly halfway)."""
    return (2 * r + 5) // 10


def expected_remaining(total: int, levels: int) -> list[int]:
    out = [total]
    for _ in range(levels):
        out.append(out[-1] - round_fifth(out[-1]))
    return out


def alive(masks) -> int:
    return int(sum(int(m.sum().item()) for m in masks.values()))


def random_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Three prunable layers at very different scales (total 1,403 weights) plus 1-D params."""
    return {
        "a.weight": torch.randn(10, 20, generator=gen),                   # 200, scale 1
        "b.weight": 0.1 * torch.randn(30, 4, 3, 3, generator=gen),        # 1,080, scale 0.1
        "c.weight": 3.0 * torch.randn(3, 41, generator=gen),              # 123, scale 3
        "a.bias": 1e-9 * torch.randn(10, generator=gen),                  # tiny: would go first
        "bn.weight": 1e-9 * torch.randn(30, generator=gen),
        "bn.running_mean": torch.zeros(30),
    }


# ---------------------------------------------------------------------------------------------
# pruning
# ---------------------------------------------------------------------------------------------


def test_each_level_removes_round_20_percent_of_the_remaining():
    gen = torch.Generator().manual_seed(0)
    state = random_state(gen)
    masks = full_masks(state)
    total = alive(masks)
    assert total == 1403 and remaining_fraction(masks) == 1.0
    want = expected_remaining(total, 10)
    assert want[:4] == [1403, 1122, 898, 718]  # worked by hand: 280.6->281, 224.4->224, 179.6->180
    for level in range(1, 11):
        state = random_state(gen)  # new "trained" weights at every level, as in IMP
        new = prune(state, masks, 0.2)
        assert alive(new) == want[level], level
        assert remaining_fraction(new) == pytest.approx(want[level] / total, abs=1e-12)
        for name in masks:  # pruned weights stay pruned
            assert not torch.any(new[name].bool() & ~masks[name].bool()), (level, name)
        masks = new


def test_prune_removes_the_globally_smallest_alive_magnitudes():
    gen = torch.Generator().manual_seed(1)
    state = random_state(gen)
    masks = full_masks(state)
    names = sorted(masks)
    for level in range(1, 5):
        state = random_state(gen)
        # Weights pruned earlier get the tiniest magnitudes now: a pruner that looked at dead
        # weights would "remove" them again and leave live small weights in place.
        for n in names:
            state[n] = torch.where(masks[n].bool(), state[n], torch.full_like(state[n], 1e-12))
        new = prune(state, masks, 0.2)

        flat_w = np.concatenate([state[n].numpy().ravel() for n in names]).astype(np.float64)
        flat_m = np.concatenate([masks[n].numpy().ravel() for n in names]).astype(bool)
        live = np.flatnonzero(flat_m)
        mags = np.abs(flat_w[live])
        n_prune = round_fifth(len(live))
        assert len(np.unique(mags)) == len(mags)  # no ties: the answer is unique
        expected = flat_m.copy()
        expected[live[np.argsort(mags)[:n_prune]]] = False
        got = np.concatenate([new[n].numpy().ravel() for n in names]).astype(bool)
        assert np.array_equal(got, expected), level

        # global, not per layer: the small-scale layer loses far more than 20%, the large one ~none
        removed = {n: 1 - new[n].sum().item() / masks[n].sum().item() for n in names}
        assert removed["b.weight"] > 0.22 and removed["c.weight"] < 0.05, removed
        masks = new


def test_masks_cover_only_conv_and_linear_weights_of_a_real_model():
    model = build("resnet8", 10)
    state = model.state_dict()
    expected = {f"{mod_name}.weight" for mod_name, m in model.named_modules()
                if isinstance(m, (nn.Conv2d, PackedLinear))}
    bn = {f"{mod_name}.{p}" for mod_name, m in model.named_modules()
          if isinstance(m, nn.BatchNorm2d) for p in ("weight", "bias")}
    assert len(expected) == 10  # stem, 3 blocks x 2 convs, 2 shortcut convs, fc
    assert len(bn) == 2 * 9
    masks = full_masks(state)
    assert set(masks) == expected
    assert not set(masks) & bn and "fc.bias" not in masks
    assert all(masks[n].shape == state[n].shape and bool(masks[n].all()) for n in masks)
    assert alive(masks) == sum(state[n].numel() for n in expected)

    # BN/bias parameters at tiny magnitudes must not be pruned instead of conv weights
    for n in bn | {"fc.bias"}:
        state[n] = torch.full_like(state[n], 1e-12)
    pruned = prune(state, masks, 0.2)
    assert set(pruned) == expected
    assert alive(pruned) == alive(masks) - round_fifth(alive(masks))


# ---------------------------------------------------------------------------------------------
# end-to-end runs
# ---------------------------------------------------------------------------------------------


def tiny_request(**changes) -> ImpRequest:
    base = dict(dataset="digits", subset="random", size=256, steps=T_R, levels=3,
                train_steps=TRAIN_STEPS, batch_size=BATCH)
    return ImpRequest(**(base | changes))


def runtime(out: Path, root: Path) -> Runtime:
    return Runtime(root=root, out=out, device="cpu", checkpoint_every=0, progress=None)


@pytest.fixture(scope="module")
def three_levels(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("imp3")
    request = tiny_request()
    run = api.imp(request, runtime(out, data_root))
    return out, run, request


def prunable_total() -> int:
    return alive(full_masks(build("resnet8", 10).state_dict()))


def test_three_level_digits_run_beats_chance_with_0_8_pow_k_weights(three_levels):
    out, run, request = three_levels
    root = run.path
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == [
        ".lock", "config.json", "env.json", "results.json"]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["replicate_0"]  # no scratch
    config = json.loads((root / "config.json").read_text())
    assert config["pretrain"]["recipe"]["steps"] == T_R and config["recipe"]["steps"] == TRAIN_STEPS
    assert config["pretrain"]["subset"] == {"kind": "random", "size": 256, "offset": 0,
                                            "class_balanced": True, "seed": 0, "shared": False}
    assert {"python", "torch", "numpy"} <= set(json.loads((root / "env.json").read_text()))
    pre = RunStore(out).run("pretrain", config["pretrain"])
    assert (pre.path / "config.json").exists()
    # the subset replicate 0 trained on is kept beside its weights, class-balanced
    subset = np.load(pre.stage(0).file("subset.npy"))
    assert len(subset) == 256 and len(np.unique(subset)) == 256

    results = json.loads((root / "results.json").read_text())
    rows = results["rows"]
    assert [(r["replicate"], r["level"]) for r in rows] == [(0, 0), (0, 1), (0, 2), (0, 3)]
    want = expected_remaining(prunable_total(), 3)
    for r in rows:
        k = r["level"]
        assert r["test_acc"] > 0.5, r  # chance is 0.1
        assert r["diverged"] is None and (r["start"], r["end"]) == (T_R, TRAIN_STEPS)
        assert r["weights_remaining"] == pytest.approx(want[k] / want[0], abs=1e-12)
        assert r["weights_remaining"] == pytest.approx(0.8 ** k, abs=1e-4)
        mask = ckpt.load(run.stage(0, k).file("mask.pt"))
        assert alive(mask) == want[k]
        assert json.loads(run.stage(0, k).file("done.json").read_text()) == r
        metrics = [json.loads(line) for line in
                   run.stage(0, k).file("metrics.jsonl").read_text().splitlines()]
        assert metrics[-1]["step"] == TRAIN_STEPS and isinstance(metrics[-1]["loss"], float)


def test_levels_start_from_masked_pretrain_weights_and_prune_the_previous_level(
        three_levels, digits, data_root, tmp_path):
    """Replay each level from w_{t_r} (pretrain weights.pt) under its mask.pt: same weights."""
    out, run, request = three_levels
    config = run.config
    pre = RunStore(out).run("pretrain", config["pretrain"])
    rewind = ckpt.load(pre.stage(0).file("weights.pt"))
    seeds = replicate_seeds(0, 0)
    init = unpack_state(new_model("resnet8", 10, [seeds["init"]], torch.device("cpu")))[0]
    # pre-training really moved the weights: a run rewinding to init would replay differently
    assert not torch.equal(rewind["stem.weight"], init["stem.weight"])

    ctx = Context(runtime(tmp_path, data_root), digits)
    from lthfast.experiments.common import setup_torch

    setup_torch(ctx.rt)  # the run's torch threads: reductions, hence bits, depend on them
    recipe = request.config({}).recipe
    prev_trained = prev_mask = None
    for level in range(4):
        stage = run.stage(0, level)
        mask, trained = ckpt.load(stage.file("mask.pt")), ckpt.load(stage.file("weights.pt"))
        if level == 0:
            assert all(bool(m.all()) for m in mask.values())
        else:  # the mask prunes the previous level's *trained* weights under its mask
            expected = prune(prev_trained, prev_mask, 0.2)
            assert set(mask) == set(expected)
            assert all(torch.equal(mask[n], expected[n]) for n in mask), level
        for n, m in mask.items():  # pruned weights are exactly zero after training
            assert torch.all(trained[n][m == 0] == 0), (level, n)

        model = new_model("resnet8", 10, [0], torch.device("cpu"))
        load_packed(model, [rewind])
        run_training(ctx, model, ctx.train_split(), [np.arange(digits.train_size)],
                     [StreamSeeds(seeds["order"], seeds["augment"])], [recipe], T_R,
                     tmp_path / f"replay_{level}.pt", "replay", masks=mask)
        replay = unpack_state(model)[0]
        assert set(replay) == set(trained)
        for n, value in trained.items():
            assert torch.equal(replay[n], value), (level, n)
        prev_trained, prev_mask = trained, mask


def test_random_subsets_are_drawn_per_replicate_unless_shared(three_levels, digits, data_root,
                                                              tmp_path):
    out, _, request = three_levels
    run = api.imp(dataclasses.replace(request, levels=0, replicates=2), runtime(out, data_root))
    pre = RunStore(out).run("pretrain", run.config["pretrain"])
    a, b = (np.load(pre.stage(r).file("subset.npy")) for r in (0, 1))
    assert len(a) == len(b) == 256 and not np.array_equal(a, b)
    for subset in (a, b):  # each is class-balanced
        counts = np.bincount(np.asarray(digits.train_labels)[subset], minlength=10)
        assert counts.max() - counts.min() <= 1

    shared = api.imp(dataclasses.replace(request, levels=0, replicates=2, shared_subset=True),
                     runtime(tmp_path, data_root))
    pre = RunStore(tmp_path).run("pretrain", shared.config["pretrain"])
    a, b = (np.load(pre.stage(r).file("subset.npy")) for r in (0, 1))
    assert np.array_equal(a, b)


def file_ids(paths) -> dict:
    """Content, inode and mtime of each file: a rewrite (atomic replace) changes the inode."""
    out = {}
    for p in paths:
        st = os.stat(p)
        out[p] = (p.read_bytes(), st.st_ino, st.st_mtime_ns)
    return out


def stage_files(run, replicate: int, levels) -> list[Path]:
    return [run.stage(replicate, k).file(f) for k in levels
            for f in ("done.json", "weights.pt", "mask.pt")]


def trained(trace: Path) -> list[str]:
    """Stages that trained, in order, from the fault seam's trace (LTHFAST_TRACE)."""
    if not trace.exists():
        return []
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    trace.unlink()
    return [e["stage"] for e in events if e["event"] == "train"]


def test_rerun_with_more_levels_or_replicates_trains_only_what_is_missing(
        data_root, tmp_path, monkeypatch):
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("LTHFAST_TRACE", str(trace))
    rt = runtime(tmp_path / "out", data_root)
    request = tiny_request(levels=1, shared_subset=True)

    run = api.imp(request, rt)
    pre = RunStore(rt.out).run("pretrain", run.config["pretrain"])
    pre_weights = pre.stage(0).file("weights.pt")
    assert trained(trace) == ["pretrain/replicate_0", "imp/replicate_0/level_0",
                              "imp/replicate_0/level_1"]
    before = file_ids(stage_files(run, 0, [0, 1]) + [pre_weights])
    assert not run.stage(0, 2).path.exists()

    assert api.imp(dataclasses.replace(request, levels=2), rt).path == run.path
    assert trained(trace) == ["imp/replicate_0/level_2"]
    assert file_ids(before) == before
    assert all(p.exists() for p in stage_files(run, 0, [2]))
    assert not run.stage(0, 3).path.exists()
    rows = json.loads(run.file("results.json").read_text())["rows"]
    assert [(r["replicate"], r["level"]) for r in rows] == [(0, 0), (0, 1), (0, 2)]

    before = file_ids(stage_files(run, 0, [0, 1, 2]) + [pre_weights])
    assert api.imp(dataclasses.replace(request, levels=2, replicates=2), rt).path == run.path
    # only replicate 1 is trained, replicate 0 is reused as it is
    assert trained(trace) == ["pretrain/replicate_1", "imp/replicate_1/level_0",
                              "imp/replicate_1/level_1", "imp/replicate_1/level_2"]
    assert file_ids(before) == before
    assert all(p.exists() for p in stage_files(run, 1, [0, 1, 2]))
    rows = json.loads(run.file("results.json").read_text())["rows"]
    assert [(r["replicate"], r["level"]) for r in rows] == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    rep1 = ckpt.load(pre.stage(1).file("weights.pt"))
    assert not torch.equal(rep1["stem.weight"], ckpt.load(pre_weights)["stem.weight"])

    api.imp(dataclasses.replace(request, levels=1, replicates=2), rt)  # fewer: nothing to train
    assert trained(trace) == []
    assert file_ids(before) == before


def test_a_diverged_replicate_is_not_pruned_further_and_logs_no_fake_losses(data_root, tmp_path):
    """Level 0 at an absurd lr turns NaN: the replicate stops there (later levels would train
    from NaN weights), its record says where, and metrics.jsonl has no finite loss after it."""
    request = tiny_request(levels=2, lr=1e6, shared_subset=True)
    rt = dataclasses.replace(runtime(tmp_path, data_root), log_every=1)
    run = api.imp(request, rt)
    records = run.records()
    assert [(r.replicate, r.level) for r in records] == [(0, 0)]
    diverged = records[0].diverged
    assert diverged is not None and T_R <= diverged["step"] < TRAIN_STEPS
    metrics = [json.loads(line) for line in
               run.stage(0, 0).file("metrics.jsonl").read_text().splitlines()]
    # one record per step: finite up to the divergence, then null (no finite stand-in), then
    # the stage stops (every packed model diverged)
    assert [m["step"] for m in metrics] == list(range(T_R + 1, diverged["step"] + 2))
    assert all(m["loss"] is not None for m in metrics[:-1]) and metrics[-1]["loss"] is None
    assert not run.stage(0, 1).path.exists()
    rows = json.loads(run.file("results.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["diverged"] == diverged


def test_one_replicate_then_a_second_equals_both_at_once(data_root, tmp_path):
    """Deterministic CPU runs: a replicate's files do not depend on its packing neighbours."""
    import dataclasses as dc

    request = tiny_request(levels=1, replicates=1)
    rt = dc.replace(runtime(tmp_path / "a", data_root), deterministic=True)
    api.imp(request, rt)
    a = api.imp(dc.replace(request, replicates=2), rt)
    b = api.imp(dc.replace(request, replicates=2),
                dc.replace(rt, out=tmp_path / "b"))
    files = sorted(p.relative_to(a.path.parent) for p in a.path.parent.rglob("*")
                   if p.is_file() and p.name not in ("env.json", ".lock"))
    assert len(files) > 20
    for rel in files:
        assert (a.path.parent / rel).read_bytes() == (b.path.parent / rel).read_bytes(), rel


def test_runs_packed_across_a_sweep_equal_runs_one_by_one(data_root, tmp_path):
    """imp_many: schemes x replicates trained as one packed model per pre-training and per
    level write the same bytes as each run alone; shared pre-training trains once; different
    lrs (per-model lrs in one packed model) and a different t_r (its own group) both work."""
    import dataclasses as dc

    short = dict(levels=1, train_steps=40)
    requests = [tiny_request(**short, replicates=2),
                tiny_request(**short, replicates=1, size=128),
                tiny_request(**short, replicates=1, lr=0.05),  # shares the first's pre-training
                tiny_request(levels=0, train_steps=40, steps=T_R + 2)]  # another t_r: its own group
    rt = dc.replace(runtime(tmp_path / "packed", data_root), deterministic=True)
    trace = tmp_path / "trace.jsonl"
    os.environ["LTHFAST_TRACE"] = str(trace)
    try:
        packed = api.imp_many(requests, rt)
    finally:
        del os.environ["LTHFAST_TRACE"]
    alone = [api.imp(r, dc.replace(rt, out=tmp_path / "alone")) for r in requests]
    assert [r.path.name for r in packed] == [r.path.name for r in alone]
    files = sorted(p.relative_to(tmp_path / "alone") for p in (tmp_path / "alone").rglob("*")
                   if p.is_file() and p.name not in ("env.json", ".lock"))
    assert len(files) > 30
    for rel in files:
        got, want = tmp_path / "packed" / rel, tmp_path / "alone" / rel
        assert got.read_bytes() == want.read_bytes(), rel
    assert not list((tmp_path / "packed").rglob("scratch"))
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    trained = [(e["run"], e["stage"]) for e in events if e["event"] == "train"]
    assert len(trained) == len(set(trained))  # no stage trained twice
    # pre-training (--lr sets the level lr only, so the third request shares the first's):
    # 2 + 1 replicates of one t_r in one model, the other t_r alone; level 0: the 2 + 1 + 1
    # replicates of one t_r in one model, the other alone; level 1: those 4 again
    assert len(trained) == 4 + 5 + 4
    assert sorted(e["group"] for e in events if e["event"] == "train") == sorted(
        [3] * 3 + [1] + [4] * 4 + [1] + [4] * 4)


def test_packed_groups_split_at_the_limit_in_order(tmp_path):
    from lthfast.experiments.imp import packable
    from lthfast.runs import RunStore

    a = RunStore(tmp_path).run("pretrain", {"a": 1})
    b = RunStore(tmp_path).run("pretrain", {"b": 2})
    stages = [a.stage(r) for r in range(5)] + [b.stage(r) for r in range(2)]
    groups = packable(stages, key=lambda s: s.run.path == a.path, limit=2)
    assert [[(s.run.path == a.path, s.replicate) for s in g] for g in groups] == [
        [(True, 0), (True, 1)], [(True, 2), (True, 3)], [(True, 4)], [(False, 0), (False, 1)]]
    # a group spanning runs keeps its checkpoint under a name of its own stages
    assert a.scratch(stages[:2]) != a.scratch([stages[0], stages[5]]) != a.scratch(
        [stages[0], stages[6]])


def test_prune_fraction_sets_what_each_level_keeps(data_root, tmp_path):
    """``--prune-fraction f``: level k keeps (1 - f)^k of the prunable weights (each level
    prunes round(f x remaining)); the paper's 0.2 is the default and leaves the run's hash."""
    f = 0.5
    request = tiny_request(levels=2, prune_fraction=f, train_steps=24, steps=4)
    run = api.imp(request, runtime(tmp_path, data_root))
    assert run.config["prune_fraction"] == f
    total = prunable_total()
    left = [total]
    for _ in range(2):
        left.append(left[-1] - int(round(f * left[-1])))
    rows = json.loads((run.path / "results.json").read_text())["rows"]
    assert [r["weights_remaining"] for r in rows] == pytest.approx(
        [n / total for n in left], abs=1e-12)
    assert rows[2]["weights_remaining"] == pytest.approx((1 - f) ** 2, abs=1e-3)
    default = tiny_request(levels=2, train_steps=24, steps=4)
    assert default.config({}) == dataclasses.replace(default, prune_fraction=0.2).config({})
