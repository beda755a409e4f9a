"""``lthfast plot``: every figure renders a non-empty PNG and PDF from small report tables
(written here in the report's own format), and a missing table is one clear error.

    python -m pytest -q tests/test_figures.py
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lthfast.figures import FIGURES
from lthfast.results import (ANALYSIS_COLUMNS, COLUMNS, LMC_COLUMNS, SCHEME_COLUMNS,
                             WARMUP_COLUMNS, write_csv)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("out") / "report"
    d.mkdir()
    imp = []
    for (subset, size, t_r), replicate, level in itertools.product(
            [("easy", 256, 20), ("random", 256, 20), ("easy", 512, 20), ("all", "", 20),
             ("all", "", 0)], [0, 1], range(4)):
        imp.append({"run": f"imp_{subset}{size}{t_r}", "dataset": "digits", "model": "resnet8",
                    "subset": subset, "subset_size": size, "t_r": t_r, "replicate": replicate,
                    "level": level, "weights_remaining": 0.8 ** level,
                    "test_acc": 0.9 - 0.01 * level + 0.01 * replicate, "test_loss": 0.3,
                    "pretrain_acc": 0.5, "diverged": False, "finished": True})
    write_csv(imp, d / "imp.csv")
    lmc = [{"run": "lmc_x", "dataset": "digits", "subset": "all", "subset_size": "",
            "spawn_step": t, "level": "", "replicate": r, "loss_barrier": 0.1 / (t + 1),
            "error_barrier": 0.05 / (t + 1), "linearly_connected": t > 0}
           for t in (0, 10, 40) for r in (0, 1)]
    write_csv(lmc, d / "lmc.csv", LMC_COLUMNS)
    schemes = [{"subset": s, "subset_size": 256, "t_r": 20, "level": 3, "loss_barrier": b,
                "pretrain_acc": 0.5, "test_acc": a} for s, b, a in
               (("easy", 0.01, 0.9), ("random", 0.03, 0.85))]
    write_csv(schemes, d / "schemes.csv", SCHEME_COLUMNS)
    warm = [{"run": "w", "dataset": "digits", "subset": s, "subset_size": 400, "warmup": t,
             "replicate": 0, "test_acc": 0.9, "diverged": t == 0}
            for s in ("easy", "random") for t in (0, 5, 20)]
    write_csv(warm, d / "warmup.csv", WARMUP_COLUMNS)
    analyses = [{"analysis": "grads", "subset": s, "subset_size": 400, "t_r": 40, "level": "",
                 "replicate": 0, "mean_grad_norm": 1.2, "mean_coherence": 0.5,
                 "final_train_acc": 0.8, "final_test_acc": 0.7} for s in ("easy", "random")]
    analyses += [{"analysis": "errors", "subset": "easy", "subset_size": 400, "t_r": 40,
                  "level": level, "replicate": 0, "error_mean": 0.6, "error_q10": 0.1,
                  "error_q50": 0.5, "error_q90": 1.2} for level in ("", 4)]
    write_csv(analyses, d / "analyses.csv", ANALYSIS_COLUMNS)
    assert set(COLUMNS) >= {"run", "subset", "finished"}
    return d


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_figure_renders(name, report, run_cli):
    code, out, err = run_cli(["plot", name, "--out", report.parent])
    assert code == 0, err
    paths = [p for p in out.split()]
    assert paths and {p.rsplit(".", 1)[1] for p in paths} == {"png", "pdf"}
    for p in paths:
        data = open(p, "rb").read()
        assert len(data) > 2000
        assert data[:8] == b"\x89PNG\r\n\x1a\n" or data[:5] == b"%PDF-"


def test_a_missing_table_is_one_clear_error(tmp_path, run_cli):
    code, out, err = run_cli(["plot", "warmup", "--out", tmp_path])
    assert code == 2 and "run 'lthfast report' first" in err and len(err.splitlines()) == 1
    code, out, err = run_cli(["plot", "nosuch", "--out", tmp_path])
    assert code == 2 and "unknown figure" in err


def test_size_figure_keeps_runs_that_differ_in_more_than_subset_and_t_r_apart(tmp_path,
                                                                              monkeypatch):
    """Fig. 3: easy subsets at t_r = 200 with and without label noise (accuracies 0.9 and 0.5)
    at the same sizes are two curves, not one at 0.7; the legends say which is which."""
    import lthfast.figures as figures

    rows = [{"run": f"imp_{noise}_{size}", "dataset": "cifar10", "model": "resnet20",
             "subset": "easy", "subset_size": size, "rank_by": "el2n", "t_r": 200,
             "label_noise": noise, "noise_seed": 0, "seed": 0, "replicate": r, "level": level,
             "weights_remaining": 0.8 ** level, "test_acc": acc + 0.01 * r,
             "diverged": False, "finished": True}
            for noise, acc in ((0.0, 0.9), (0.1, 0.5)) for size in (256, 512)
            for r in (0, 1) for level in (0, 1)]
    write_csv(rows, tmp_path / "imp.csv")
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, *a: drawn.append(fig) or [])
    figures.size(tmp_path)
    [fig] = drawn
    for ax in fig.axes:  # levels 0 and 1
        curves = {c.get_label(): c.lines[0] for c in ax.containers}
        assert set(curves) == {"cifar10 easy, t_r=200, label_noise=0.0",
                               "cifar10 easy, t_r=200, label_noise=0.1"}
        for label, acc in (("cifar10 easy, t_r=200, label_noise=0.0", 0.905),
                           ("cifar10 easy, t_r=200, label_noise=0.1", 0.505)):
            assert list(curves[label].get_xdata()) == [256, 512]
            assert np.asarray(curves[label].get_ydata(), float) == pytest.approx([acc, acc])


def test_size_legends_name_a_field_only_one_curve_sets(tmp_path):
    """Two curves that differ only where one leaves a field unset still get two legends."""
    from lthfast.figures import size_curves
    from lthfast.results import read_csv

    rows = [{"run": f"imp_{balanced}", "dataset": "digits", "subset": "random",
             "subset_size": 256, "class_balanced": balanced, "t_r": 20, "replicate": 0,
             "level": 0, "test_acc": 0.8, "diverged": False} for balanced in ("", True)]
    curves = size_curves(read_csv(write_csv(rows, tmp_path / "imp.csv")))
    assert set(curves) == {"digits random, t_r=20", "digits random, class_balanced=True, t_r=20"}


def test_barriers_without_a_scheme_is_one_clear_error(tmp_path, run_cli):
    """``report`` writes a header-only schemes.csv when every IMP replicate diverged; plotting
    it is one ``error:`` line (exit 2), not a traceback."""
    report = tmp_path / "report"
    write_csv([], report / "schemes.csv", SCHEME_COLUMNS)
    code, out, err = run_cli(["plot", "barriers", "--out", tmp_path])
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("error: ") and "no scheme with both a barrier" in err
    assert not list(report.glob("fig_*"))


def test_onset_figure_draws_a_curve_per_lmc_config(tmp_path, monkeypatch):
    """Two seeds of one scheme (barrier 0.3 vs 0.01) are two curves, not one at 0.155."""
    import lthfast.figures as figures

    rows = [{"run": f"lmc_{seed}", "dataset": "digits", "subset": "all", "subset_size": "",
             "seed": seed, "spawn_step": t, "t_r": t, "level": "", "children": 2,
             "replicate": 0, "loss_barrier": b, "error_barrier": b}
            for seed, b in ((0, 0.3), (1, 0.01)) for t in (0, 10)]
    write_csv(rows, tmp_path / "lmc.csv", LMC_COLUMNS)
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, *a: drawn.append(fig) or [])
    figures.onset(tmp_path)
    [fig] = drawn
    for ax in fig.axes:  # error and loss barriers
        lines = {line.get_label(): line for line in ax.get_lines() if "2%" not in line.get_label()}
        assert set(lines) == {"digits all, seed=0", "digits all, seed=1"}
        assert list(lines["digits all, seed=0"].get_ydata()) == pytest.approx([0.3, 0.3])
        assert list(lines["digits all, seed=1"].get_ydata()) == pytest.approx([0.01, 0.01])
