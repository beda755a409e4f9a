"""The CPU presets keep the paper's proportions (t* a small fraction of T; a synthetic set's
schedule a fixed number of epochs of it), and synthetic variants are datasets of their own
names, so two variants never share a directory or a run.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_presets.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lthfast import api
from lthfast.config import PRESETS, preset_for
from lthfast.data.build import build_dataset, canonical_name
from lthfast.errors import UserError

PAPER_T_STAR_FRACTIONS = [p.t_star / p.train_steps for k, p in PRESETS.items()
                          if k in ("cifar10", "cifar100", "cinic10")]


@pytest.mark.parametrize("dataset", ["digits", "synthetic", "synthetic:train=300",
                                     "synthetic:train=50000"])
def test_small_presets_keep_t_star_a_small_fraction_of_t(dataset):
    p = preset_for(dataset)
    lo, hi = min(PAPER_T_STAR_FRACTIONS), max(PAPER_T_STAR_FRACTIONS)
    assert lo == pytest.approx(0.0064, abs=1e-4) and hi == pytest.approx(0.0256, abs=1e-4)
    assert p.t_star / p.train_steps <= hi  # was 20 / 200 = 10%
    assert p.t_star >= 1
    assert p.milestones == (round(p.train_steps / 2), round(p.train_steps * 3 / 4))


def test_synthetic_schedule_is_a_fixed_number_of_epochs():
    epochs = {n: preset_for(f"synthetic:train={n}").train_steps * 64 / n for n in (2000, 20000)}
    assert epochs[2000] == pytest.approx(epochs[20000], rel=0.02)
    digits_epochs = PRESETS["digits"].train_steps * 64 / 1438
    assert epochs[2000] == pytest.approx(digits_epochs, rel=0.05)
    assert preset_for("synthetic").train_steps == preset_for("synthetic:train=5000").train_steps


def test_variant_names_are_canonical():
    assert canonical_name("synthetic:train=300,size=8") == "synthetic:size=8,train=300"
    assert canonical_name("synthetic:noise=120.0,size=8") == "synthetic:noise=120,size=8"
    assert canonical_name("synthetic:size=32") == "synthetic"  # the defaults
    assert api.ImpRequest(dataset="synthetic:train=300,size=8").dataset == \
        "synthetic:size=8,train=300"
    with pytest.raises(UserError, match="takes no options"):
        canonical_name("cifar10:size=8")
    with pytest.raises(UserError, match="bad synthetic option"):
        canonical_name("synthetic:bogus=1")


def test_two_variants_in_one_root_are_two_datasets_and_two_runs(tmp_path, run_cli):
    a = build_dataset("synthetic:train=40,test=20,size=8,classes=2", tmp_path, betons=False)
    b = build_dataset("synthetic:train=40,test=20,size=8,classes=2,noise=90", tmp_path,
                      betons=False)
    assert a != b and a.parent == b.parent == tmp_path
    assert json.loads((a / "meta.json").read_text())["name"] == a.name
    with pytest.raises(UserError, match="not both"):
        build_dataset("synthetic:train=40", tmp_path, source="train=40")
    runs = []
    for name in (a.name, b.name):  # built already; imp finds each under its own name
        code, out, err = run_cli(["imp", "--dataset", name, "--levels", "0", "--steps", "1",
                                  "--train-steps", "2", "--batch-size", "8", "--root", tmp_path,
                                  "--out", tmp_path / "runs", "--device", "cpu"])
        assert code == 0, err
        runs.append(Path(out.split()[-1]))
        config = json.loads((runs[-1] / "config.json").read_text())
        assert config["pretrain"]["dataset"] == name
    assert runs[0] != runs[1]
