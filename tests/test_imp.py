"""IMP: global magnitude pruning and end-to-end runs of ``lthfast.experiments.imp.run_imp``.

Pruning (``prune``, ``full_masks``, ``remaining_fraction``) is checked against direct integer and
numpy computations: each level removes exactly round(20% of the remaining) weights over several
successive levels, the removed ones are the smallest magnitudes across all layers together (not
per layer, and never ones already pruned), and masks exist only for conv/linear weights of a real
ResNet-8, never for biases or BatchNorm. End to end, on the embedded digits dataset with a tiny
schedule (t_r = 20 of T = 60 iterations, batch 32, ResNet-8, CPU): every level's training starts
from the saved pre-training weights w_{t_r} under that level's mask (checked by replaying the level
from ``pretrain_<hash>/replicate_0/weights.pt`` and ``mask.pt`` and getting its ``trained.pt`` bit
for bit), each mask is the pruning of the previous level's trained weights, a three-level run beats
chance at every level with 0.8^k of its weights and writes config.json, env.json and results.json,
and rerunning with more levels or more replicates trains only what is missing and leaves every
existing file untouched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lthfast.experiments.imp as imp
from lthfast.config import PRESETS, Overrides
from lthfast.data.loader import StreamSeeds
from lthfast.data.subsets import SubsetSpec, make_subset
from lthfast.experiments.common import (Runtime, device_split, new_model, replicate_seeds,
                                        run_training)
from lthfast.experiments.imp import level_dir, make_config, pretrain_dir, run_imp
from lthfast.models import build
from lthfast.models.packed import PackedLinear, load_packed, unpack_state
from lthfast.prune.magnitude import full_masks, prune, remaining_fraction
from lthfast.train import checkpoint as ckpt
from lthfast.train.schedule import Schedule

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


def tiny_config(ds):
    preset = Overrides(train_steps=TRAIN_STEPS, batch_size=BATCH).apply(PRESETS["digits"])
    indices = make_subset(ds, SubsetSpec(kind="random", size=256, seed=0))
    cfg = make_config(preset, "digits", T_R, indices, "random_m256", seed=0, label_noise=0.0,
                      noise_seed=0)
    return cfg, indices


def runtime(out: Path) -> Runtime:
    return Runtime(out=out, device="cpu", checkpoint_every=0, progress=None)


@pytest.fixture(scope="module")
def three_levels(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("imp3")
    cfg, indices = tiny_config(digits)
    root = run_imp(runtime(out), cfg, digits, indices, levels=3, replicates=1)
    return out, root, cfg


def prunable_total() -> int:
    return alive(full_masks(build("resnet8", 10).state_dict()))


def test_three_level_digits_run_beats_chance_with_0_8_pow_k_weights(three_levels):
    out, root, cfg = three_levels
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == [
        ".lock", "config.json", "env.json", "results.json"]
    config = json.loads((root / "config.json").read_text())
    assert config == json.loads(json.dumps(cfg.identity() | {"subset_name": "random_m256"}))
    assert {"python", "torch", "numpy"} <= set(json.loads((root / "env.json").read_text()))
    assert (pretrain_dir(runtime(out), cfg.pretrain) / "config.json").exists()

    results = json.loads((root / "results.json").read_text())
    rows = results["rows"]
    assert [(r["replicate"], r["level"]) for r in rows] == [(0, 0), (0, 1), (0, 2), (0, 3)]
    want = expected_remaining(prunable_total(), 3)
    for r in rows:
        k = r["level"]
        assert r["test_acc"] > 0.5, r  # chance is 0.1
        assert r["diverged"] is None
        assert r["weights_remaining"] == pytest.approx(want[k] / want[0], abs=1e-12)
        assert r["weights_remaining"] == pytest.approx(0.8 ** k, abs=1e-4)
        mask = ckpt.load(level_dir(root, 0, k) / "mask.pt")
        assert alive(mask) == want[k]
        assert json.loads((level_dir(root, 0, k) / "done.json").read_text()) == r


def test_levels_start_from_masked_pretrain_weights_and_prune_the_previous_level(
        three_levels, digits, tmp_path):
    """Replay each level from w_{t_r} (pretrain weights.pt) under its mask.pt: same trained.pt."""
    out, root, cfg = three_levels
    pre = cfg.pretrain
    rewind = ckpt.load(pretrain_dir(runtime(out), pre) / "replicate_0" / "weights.pt")
    seeds = replicate_seeds(pre.seed, 0)
    init = unpack_state(new_model(pre.model, 10, [seeds["init"]], torch.device("cpu")))[0]
    # pre-training really moved the weights: a run rewinding to init would replay differently
    assert not torch.equal(rewind["stem.weight"], init["stem.weight"])

    data = device_split(digits, "train", torch.device("cpu"))
    prev_trained = prev_mask = None
    for level in range(4):
        d = level_dir(root, 0, level)
        mask, trained = ckpt.load(d / "mask.pt"), ckpt.load(d / "trained.pt")
        if level == 0:
            assert all(bool(m.all()) for m in mask.values())
        else:  # the mask prunes the previous level's *trained* weights under its mask
            expected = prune(prev_trained, prev_mask, cfg.prune_fraction)
            assert set(mask) == set(expected)
            assert all(torch.equal(mask[n], expected[n]) for n in mask), level
        for n, m in mask.items():  # pruned weights are exactly zero after training
            assert torch.all(trained[n][m == 0] == 0), (level, n)

        model = new_model(pre.model, 10, [0], torch.device("cpu"))
        load_packed(model, [rewind])
        run_training(runtime(tmp_path), model, digits, data, [np.arange(digits.train_size)],
                     [StreamSeeds(seeds["order"], seeds["augment"])], pre.batch_size,
                     Schedule(cfg.lr, cfg.milestones, pre.gamma), pre.steps, cfg.train_steps,
                     tmp_path / f"replay_{level}", "replay", masks=mask,
                     momentum=pre.momentum, weight_decay=pre.weight_decay)
        replay = unpack_state(model)[0]
        assert set(replay) == set(trained)
        for n, value in trained.items():
            assert torch.equal(replay[n], value), (level, n)
        prev_trained, prev_mask = trained, mask


def file_ids(paths) -> dict:
    """Content, inode and mtime of each file: a rewrite (atomic replace) changes the inode."""
    out = {}
    for p in paths:
        st = os.stat(p)
        out[p] = (p.read_bytes(), st.st_ino, st.st_mtime_ns)
    return out


def stage_files(root: Path, replicate: int, levels) -> list[Path]:
    return [level_dir(root, replicate, k) / f for k in levels
            for f in ("done.json", "trained.pt", "mask.pt")]


def test_rerun_with_more_levels_or_replicates_trains_only_what_is_missing(
        digits, tmp_path, monkeypatch):
    calls = []
    real = imp.run_training

    def spy(rt, model, ds, data, indices, seeds, batch_size, schedule, start, end, stage_dir,
            label, **kw):
        calls.append((label, model.k))
        return real(rt, model, ds, data, indices, seeds, batch_size, schedule, start, end,
                    stage_dir, label, **kw)

    monkeypatch.setattr(imp, "run_training", spy)
    cfg, indices = tiny_config(digits)
    rt = runtime(tmp_path)
    pre_weights = pretrain_dir(rt, cfg.pretrain) / "replicate_0" / "weights.pt"

    root = run_imp(rt, cfg, digits, indices, levels=1, replicates=1)
    assert calls == [("pre-train", 1), ("level 0", 1), ("level 1", 1)]
    before = file_ids(stage_files(root, 0, [0, 1]) + [pre_weights])
    assert not level_dir(root, 0, 2).exists()

    calls.clear()
    assert run_imp(rt, cfg, digits, indices, levels=2, replicates=1) == root
    assert calls == [("level 2", 1)]
    assert file_ids(before) == before
    assert all(p.exists() for p in stage_files(root, 0, [2]))
    assert not level_dir(root, 0, 3).exists()
    rows = json.loads((root / "results.json").read_text())["rows"]
    assert [(r["replicate"], r["level"]) for r in rows] == [(0, 0), (0, 1), (0, 2)]

    before = file_ids(stage_files(root, 0, [0, 1, 2]) + [pre_weights])
    calls.clear()
    assert run_imp(rt, cfg, digits, indices, levels=2, replicates=2) == root
    # only replicate 1 is trained (a K=1 packed model), replicate 0 is reused as it is
    assert calls == [("pre-train", 1), ("level 0", 1), ("level 1", 1), ("level 2", 1)]
    assert file_ids(before) == before
    assert all(p.exists() for p in stage_files(root, 1, [0, 1, 2]))
    rows = json.loads((root / "results.json").read_text())["rows"]
    assert [(r["replicate"], r["level"]) for r in rows] == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    rep1 = ckpt.load(pretrain_dir(rt, cfg.pretrain) / "replicate_1" / "weights.pt")
    assert not torch.equal(rep1["stem.weight"], ckpt.load(pre_weights)["stem.weight"])

    calls.clear()
    run_imp(rt, cfg, digits, indices, levels=1, replicates=2)  # fewer: nothing to train
    assert calls == []
    assert file_ids(before) == before
