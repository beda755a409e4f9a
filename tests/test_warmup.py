"""``lthfast warmup`` (appendix A, Fig. 6): the design's recipe, the subset during the warmup
only, and divergence recorded as a result while the sweep goes on.

    python -m pytest -q tests/test_warmup.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lthfast.config import Recipe, warmup_recipe
from lthfast.data.loader import StreamSeeds
from lthfast.experiments.common import Context, Runtime, new_model, run_training
from lthfast.train.hooks import Hook


def test_cifar10_warmup_design_is_appendix_a():
    r = warmup_recipe("cifar10", 50_000, warmup=300)
    assert (r.model, r.batch_size, r.lr, r.momentum, r.weight_decay) == (
        "resnet20", 1024, 3.2, 0.9, 1e-4)
    assert r.steps == round(160 * 50_000 / 1024) == 7812  # 160 epochs of batch 1024
    assert r.milestones == (3906, 5859)  # epochs 80 and 120
    s = r.schedule
    assert s.lr_at(0) == 3.2 / 300 and s.lr_at(299) == 3.2 and s.lr_at(3906) == 3.2 * 0.1


def test_the_warmup_draws_from_the_subset_only_then_from_everything(digits, tmp_path):
    ctx = Context(Runtime(out=tmp_path, device="cpu", checkpoint_every=0, progress=None), digits)
    subset = np.arange(0, 1438, 7)  # 206 examples
    seen: dict[int, set] = {}

    class Spy(Hook):
        def on_batch(self, step, logits, labels, indices):
            seen[step] = set(indices[:, 0].tolist())

    recipe = Recipe("resnet8", 64, 0.4, (), 30, warmup=10)
    run_training(ctx, new_model("resnet8", 10, [0], ctx.device), ctx.train_split(),
                 [np.arange(1438)], [StreamSeeds(1, 2)], [recipe], 0, tmp_path / "ck.pt",
                 "warmup", hooks=[Spy()], early=(10, [subset]))
    inside = set(subset.tolist())
    assert all(seen[s] <= inside for s in range(10))
    assert all(seen[s] - inside for s in range(10, 30))  # all data afterwards


def test_a_diverging_warmup_is_a_result_and_the_sweep_goes_on(data_root, tmp_path, run_cli):
    sweep = tmp_path / "w.toml"
    sweep.write_text('command = "warmup"\n[flags]\ndataset = "digits"\nsubset = "random"\n'
                     'size = 200\nwarmup = 5\ntrain_steps = 40\nreplicates = 2\n'
                     '[grid]\nlr = [1e5, 0.4]\n')
    code, out, err = run_cli(["sweep", sweep, "--root", data_root, "--out", tmp_path / "out"])
    assert code == 0, err  # divergence is not a failure
    huge, sane = (json.loads((Path(p) / "results.json").read_text())
                  for p in out.split()[:2])
    assert huge["diverged"] == 2 and all(r["diverged"]["step"] < 40 for r in huge["rows"])
    assert sane["diverged"] == 0 and all(r["test_acc"] > 0.5 for r in sane["rows"])
    assert huge["config"]["recipe"]["warmup"] == 5


def test_a_warmup_longer_than_the_schedule_fails_before_its_scores_are_trained(
        data_root, tmp_path, run_cli):
    """Without --train-steps the schedule's length (160 epochs) needs the train set's size:
    checked once the dataset is open, before the EL2N scores that rank the subset."""
    code, out, err = run_cli(["warmup", "--dataset", "digits", "--subset", "easy", "--size",
                              "100", "--warmup", "100000", "--score-models", "1",
                              "--score-steps", "5", "--root", data_root, "--out",
                              tmp_path / "out", "--device", "cpu"])
    lines = [line for line in err.splitlines() if line.strip()]
    steps = warmup_recipe("digits", 1438, 0).steps
    message = f"error: --warmup 100000 must be shorter than the {steps} iterations of training"
    assert code == 2 and lines == [message], err
    assert out == "" and not (tmp_path / "out").exists()  # no el2n_*/ trained first


def test_warmup_has_no_label_noise_option_and_refuses_it_from_a_sweep(tmp_path, run_cli):
    """The design trains on true labels: a noisy warmup would be the clean run, silently."""
    code, _, err = run_cli(["warmup", "--dataset", "digits", "--label-noise", "0.1"])
    assert code == 2 and "--label-noise" in err
    sweep = tmp_path / "w.toml"
    sweep.write_text('command = "warmup"\n[flags]\ndataset = "digits"\nlabel_noise = 0.1\n')
    code, out, err = run_cli(["sweep", sweep, "--dry-run"])
    assert code == 2 and "warmup does not use --label-noise" in err and out == ""
