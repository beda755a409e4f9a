"""An analysis's summary JSON (lmc, errors, grads) lists every replicate finished on disk,
whatever ``--replicates`` the command that wrote it was given: a rerun with fewer replicates
must not drop results an earlier run finished (IMP's results.json keeps them too), or
``lthfast report`` loses them from lmc.csv and analyses.csv. (The JSON's keys are sorted as
strings; the report's rows come in numeric replicate order.)

The stages are written here as finished stages look on disk (done.json, arrays), so nothing
trains; tests/test_lmc.py and tests/test_grads.py rerun the real commands.

    python -m pytest -q tests/test_analysis_summaries.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lthfast.config import Recipe
from lthfast.experiments.analyses import errors, finished, grads, lmc
from lthfast.files import atomic_save_npy
from lthfast.results import analysis_rows, lmc_rows
from lthfast.runs import RunStore, StageRecord

PRETRAIN = {"dataset": "digits", "seed": 0, "subset": {"kind": "all"},
            "recipe": {"model": "resnet8", "batch_size": 32, "lr": 0.1, "milestones": [],
                       "steps": 5}}
REPLICATES = (0, 1, 2, 10)  # 10 must come after 2: numeric, not string, order


@pytest.fixture
def pre(tmp_path):
    """A pre-training run with its stages of every replicate in ``REPLICATES`` finished."""
    run = RunStore(tmp_path).run("pretrain", PRETRAIN).create()
    for r in REPLICATES:
        run.stage(r).mark_done(StageRecord(replicate=r, start=0, end=5, test_acc=0.5,
                                           test_loss=1.0))
    return run


def mark(stage, extra: dict) -> None:
    stage.mark_done(StageRecord(replicate=stage.replicate, level=stage.level,
                                branch=stage.branch, start=5, end=5, test_acc=None,
                                test_loss=None, extra=extra))


def test_finished_lists_done_stages_in_numeric_replicate_order(pre):
    for r in REPLICATES:
        mark(pre.stage(r, None, "errors"), {})
    pre.stage(3, None, "errors").path.mkdir(parents=True)  # started, never finished
    assert [s.replicate for s in finished(pre, None, "errors")] == [0, 1, 2, 10]
    assert finished(pre, None, "lmc_000000000000") == []


def test_lmc_summary_keeps_replicates_an_earlier_run_measured(pre, tmp_path):
    cfg = lmc.LmcConfig(recipe=Recipe("resnet8", 32, 0.1, (), 20), start=5)
    barrier = {0: 0.1, 1: 0.3, 2: 0.5, 10: 0.7}
    for r in REPLICATES:
        mark(pre.stage(r, None, cfg.branch), {
            "loss_barrier": barrier[r], "error_barrier": barrier[r] / 10,
            "loss_barrier_naive_bn": 1.0, "error_barrier_naive_bn": 0.5,
            "linearly_connected": True})
    # a rerun with --replicates 1: its parent and records hold replicate 0 only
    parent = lmc.Parent(pre, [pre.stage(0)], {0: {}}, {0: None})
    path = lmc.write_summary(parent, cfg, {0: pre.stage(0, None, cfg.branch).record()})
    summary = json.loads(path.read_text())
    assert set(summary["replicates"]) == set(summary["per_example"]) == {"0", "1", "2", "10"}
    assert summary["loss_barrier"] == pytest.approx(0.4)  # the mean of all four, not 0.1
    assert [(r["replicate"], r["loss_barrier"]) for r in lmc_rows(tmp_path)] == [
        (0, 0.1), (1, 0.3), (2, 0.5), (10, 0.7)]


def test_errors_summary_keeps_replicates_an_earlier_run_measured(pre, tmp_path):
    means = {0: 0.2, 1: 0.4, 2: 0.6, 10: 0.8}
    for r in REPLICATES:
        stage = pre.stage(r, None, errors.BRANCH)
        values = np.full(8, means[r], dtype=np.float32)
        atomic_save_npy(stage.file("errors.npy"), values)
        mark(stage, errors.summarize(values))
    # run() with replicate 0 only, already measured: it measures nothing (no context needed)
    path = errors.run(None, pre, {0: {}}, None, 5)
    summary = json.loads(path.read_text())
    assert set(summary["replicates"]) == {"0", "1", "2", "10"}
    assert summary["mean"] == pytest.approx(0.5)
    assert summary["per_example"]["10"].endswith("replicate_10/errors/errors.npy")
    rows = analysis_rows(tmp_path)
    assert [(r["replicate"], r["error_mean"]) for r in rows] == [
        (r, pytest.approx(means[r])) for r in REPLICATES]


def test_grads_summary_keeps_replicates_an_earlier_run_replayed(pre, tmp_path):
    cfg = grads.GradsConfig(eval_every=0)
    norms = {0: 1.0, 1: 2.0, 2: 3.0, 10: 4.0}
    for r in REPLICATES:
        stage = pre.stage(r, None, cfg.branch)
        arrays = {"grad_norms": np.full(5, norms[r]), "coherence": np.full((1, 2), 0.5),
                  "coherence_steps": np.array([0]), "speed_steps": np.array([], dtype=int),
                  "train_acc": np.array([]), "subset_acc": np.array([]),
                  "test_acc": np.array([])}
        for name, array in arrays.items():
            atomic_save_npy(stage.file(f"{name}.npy"), array)
        mark(stage, {})
    summary = json.loads(grads.write_summary(pre, cfg, 5).read_text())
    assert set(summary["replicates"]) == {"0", "1", "2", "10"}
    assert summary["mean_grad_norm"] == pytest.approx(2.5)
    assert [(r["replicate"], r["mean_grad_norm"]) for r in analysis_rows(tmp_path)] == [
        (r, norms[r]) for r in REPLICATES]


def test_lmc_rows_of_children_trained_differently_stay_apart(pre, tmp_path):
    """Children of one pre-training point trained to 20 or 40 iterations are two LMC configs:
    lmc.csv says which (the parent's own columns have no children's lr or train steps), and
    their onsets are two rows."""
    from lthfast.results import onset_rows

    for steps, barrier in ((20, 0.0), (40, 0.5)):
        cfg = lmc.LmcConfig(recipe=Recipe("resnet8", 32, 0.1, (), steps), start=5)
        mark(pre.stage(0, None, cfg.branch), {
            "loss_barrier": barrier, "error_barrier": barrier, "loss_barrier_naive_bn": 0.0,
            "error_barrier_naive_bn": 0.0, "linearly_connected": barrier < 0.02})
        lmc.write_summary(lmc.Parent(pre, [pre.stage(0)], {0: {}}, {0: None}), cfg,
                          {0: pre.stage(0, None, cfg.branch).record()})
    rows = sorted(lmc_rows(tmp_path), key=lambda r: r["train_steps"])
    assert [(r["train_steps"], r["lr"], r["alphas"], r["t_r"]) for r in rows] == [
        (20, 0.1, "0.5", 5), (40, 0.1, "0.5", 5)]
    onset = {r["train_steps"]: r["onset"] for r in onset_rows(rows)}
    assert onset == {20: 5, 40: ""}
