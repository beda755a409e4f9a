"""``lthfast plot``: every figure renders from small report tables (written here in the report's
own format); each figure's content (panels, series, error bars, labels) is pinned by inspecting
the matplotlib Figure before it is saved; damaged or empty tables are one clear error line.

    python -m pytest -q tests/test_figures.py
"""

from __future__ import annotations

import numpy as np
import pytest

from lthfast.figures import FIGURES, PAPER
from lthfast.sweep.smoke import STAND_INS
from lthfast.results import (
    COLUMNS,
    ERRORS_HIST_COLUMNS,
    GRADS_STEP_COLUMNS,
    LMC_COLUMNS,
    SCHEME_COLUMNS,
    SCORE_COLUMNS,
    WARMUP_COLUMNS,
    write_csv,
)

BASE = {"dataset": "digits", "model": "resnet8", "lr": 0.1, "train_steps": 40,
        "batch_size": 32, "pretrain_lr": 0.2, "label_noise": 0.0, "noise_seed": 0, "seed": 0}


def imp_rows(schemes, levels=range(4), replicates=(0, 1), **extra):
    """(run, subset, size, t_r, accuracy at level 0) -> imp.csv rows, accuracy falling with
    level, replicate r adding 0.01·r."""
    return [{"run": run, **BASE, **extra, "subset": subset, "subset_size": size, "t_r": t_r,
             "replicate": r, "level": level, "weights_remaining": 0.8 ** level,
             "test_acc": acc - 0.01 * level + 0.01 * r, "test_loss": 0.3, "pretrain_acc": 0.5,
             "diverged": False, "finished": True}
            for run, subset, size, t_r, acc in schemes for r in replicates for level in levels]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("out") / "report"
    d.mkdir()
    write_csv(imp_rows([("imp_e256", "easy", 256, 20, 0.9), ("imp_r256", "random", 256, 20, 0.85),
                        ("imp_e512", "easy", 512, 20, 0.8), ("imp_all", "all", "", 20, 0.85),
                        ("imp_all0", "all", "", 0, 0.7)]), d / "imp.csv")
    lmc = [{"run": "lmc_x", **BASE, "subset": "all", "t_r": t, "spawn_step": t, "level": "",
            "children": 2, "alphas": "0.5", "replicate": r, "loss_barrier": 0.1 / (t + 1),
            "error_barrier": 0.05 / (t + 1) + 0.01 * r, "linearly_connected": t > 0}
           for t in (0, 10, 40) for r in (0, 1)]
    write_csv(lmc, d / "lmc.csv", LMC_COLUMNS)
    schemes = [{"run": f"imp_{s}", **BASE, "subset": s, "subset_size": 256, "t_r": 20,
                "level": 3, "replicate": r, "loss_barrier": b + 0.01 * r, "pretrain_acc": 0.5,
                "test_acc": a} for s, b, a in (("easy", 0.01, 0.9), ("random", 0.03, 0.85))
               for r in (0, 1)]
    write_csv(schemes, d / "schemes.csv", SCHEME_COLUMNS)
    hist = [{"run": "lmc_x", **BASE, "subset": s, "t_r": 20, "spawn_step": 20, "level": "",
             "replicate": r, "barrier": "loss_barrier", "bin_left": i / 10,
             "bin_right": (i + 1) / 10, "fraction": f, "mean": 0.1}
            for s, fr in (("all", (0.2, 0.8)), ("easy", (0.6, 0.4))) for r in (0, 1)
            for i, f in enumerate(fr)]
    write_csv(hist, d / "barrier_hist.csv",
              (*LMC_COLUMNS[:LMC_COLUMNS.index("replicate") + 1], "barrier", "bin_left",
               "bin_right", "fraction", "mean"))
    warm = [{"run": f"w_{s}_{t}", "dataset": "digits", "subset": s, "subset_size": 400,
             "warmup": t, "lr": 0.4, "replicate": r, "test_acc": 0.9 - 0.1 * r,
             "diverged": False} for s in ("easy", "random") for t in (0, 5, 20) for r in (0, 1)]
    write_csv(warm, d / "warmup.csv", WARMUP_COLUMNS)
    steps = [{"summary": f"pre_{s}/grads_x.json", **BASE, "subset": s, "subset_size": 256,
              "t_r": 20, "replicate": 0, "series": series, "step": t, "value": v}
             for s, base in (("easy", 0.8), ("random", 0.5))
             for series, pts in (("coherence", [(0, base), (10, base)]),
                                 ("test_acc", [(0, 0.1), (10, base)]),
                                 ("grad_norm", [(i, base * (1 + i / 20)) for i in range(20)]))
             for t, v in pts]
    write_csv(steps, d / "grads_steps.csv", GRADS_STEP_COLUMNS)
    errs = [{"summary": f"s_{s}_{level}", **BASE, "subset": s, "t_r": 20, "level": level,
             "replicate": 0, "bin_left": i / 2, "bin_right": (i + 1) / 2, "fraction": f}
            for s in ("all", "easy") for level in (0, 6)
            for i, f in enumerate((0.3, 0.7) if level else (0.6, 0.4))]
    write_csv(errs, d / "errors_hist.csv", ERRORS_HIST_COLUMNS)
    scores = [{"run": run, "score": kind, "dataset": "digits", "steps": steps_, "example": i,
               "value": v} for run, kind, steps_ in (("el2n_a", "el2n", 16), ("lmc_a", "lmc", 4),
                                                     ("lmc_b", "lmc", 8))
              for i, v in enumerate(np.linspace(0, 1, 50))]
    write_csv(scores, d / "scores.csv", SCORE_COLUMNS)
    assert set(COLUMNS) >= {"run", "subset", "finished"}
    return d


@pytest.fixture
def drawn(monkeypatch):
    """Figures a test draws, closed afterwards."""
    made = []
    yield made
    import matplotlib.pyplot as plt

    for d in made:
        plt.close(d.figure)


def draw(name, report, made):
    """The figures of a kind or a paper name (``fig14``), kept in ``made`` to be closed."""
    from lthfast.figures import draw as draw_figures

    out = draw_figures(name, report)
    made += out
    return out


def legends(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def title(ax) -> str:
    """A panel's title as one line (titles are wrapped to the panel's width)."""
    return ax.get_title().replace("\n", " ")


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_figure_renders(name, report, run_cli):
    code, out, err = run_cli(["plot", name, "--out", report.parent])
    assert code == 0, err
    paths = out.split()
    assert paths and {p.rsplit(".", 1)[1] for p in paths} == {"png", "pdf"}
    for p in paths:
        data = open(p, "rb").read()
        assert len(data) > 2000
        assert data[:8] == b"\x89PNG\r\n\x1a\n" or data[:5] == b"%PDF-"


def on(dataset: str, report, tmp_path, names=("barrier_hist.csv", "schemes.csv")):
    """A copy of ``report``'s tables ``names`` with every run moved to ``dataset``."""
    import csv

    d = tmp_path / "report"
    d.mkdir(exist_ok=True)
    for name in names:
        with open(report / name, newline="") as f:
            reader = csv.DictReader(f)
            rows = [r | {"dataset": dataset} for r in reader]
        write_csv(rows, d / name, reader.fieldnames)
    return d


def test_the_paper_names_draw_their_kinds_and_list_prints_the_map(report, tmp_path, run_cli):
    code, out, err = run_cli(["plot", "--list"])
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()] == [*PAPER, "table1"]
    assert "illustrat" in out.splitlines()[0]  # Fig. 1 right is not the onset plot
    # every figure's line names the datasets it draws
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert " cinic10 " in lines["fig14"] and "cifar" not in lines["fig14"]
    assert " cifar100, cinic10 " in lines["fig5"] and "cifar10," not in lines["fig5"]
    d = on(STAND_INS["cinic10"], report, tmp_path)  # Fig. 5 is CIFAR-100's and CINIC-10's
    code, out, err = run_cli(["plot", "fig5", "--out", d.parent])
    assert code == 0, err
    names = {p.rsplit("/", 1)[1] for p in out.split()}
    # a paper figure's files say which (its runs are a selection of the kind's)
    assert names == {f"fig5_{kind}{stem}.{ext}" for ext in ("png", "pdf") for kind, stem in (
        ("barriers", ""), ("barrier_hist", "_synthetic-size-8-test-360-train-1440_resnet8"))}
    code, out, err = run_cli(["plot", "fig99", "--out", report.parent])
    assert code == 2 and "unknown figure" in err and "--list" in err


def test_a_missing_table_is_one_clear_error(tmp_path, run_cli):
    code, out, err = run_cli(["plot", "warmup", "--out", tmp_path])
    assert code == 2 and "run 'lthfast report' first" in err and len(err.splitlines()) == 1
    code, out, err = run_cli(["plot", "nosuch", "--out", tmp_path])
    assert code == 2 and "unknown figure" in err


DAMAGE = {  # table -> (content, kind, what the error line says)
    "cut mid-row": ("imp.csv", None, "sparsity", "fewer cells than the header"),
    "garbage lmc.csv": ("lmc.csv", "\x00\x01garbage;;\nnot,a,table\n", "onset", "no column"),
    "non-numeric cell": ("warmup.csv", None, "warmup", "is not a number"),
    "empty imp.csv": ("imp.csv", "", "sparsity", "no rows: nothing to draw"),
    "header-only warmup.csv": ("warmup.csv", ",".join(WARMUP_COLUMNS) + "\n", "warmup",
                               "no rows: nothing to draw"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_table_is_one_line_exit_2_and_no_figure(case, report, tmp_path, run_cli):
    name, content, kind, says = DAMAGE[case]
    d = tmp_path / "report"
    d.mkdir()
    good = (report / name).read_text()
    if content is None and case == "cut mid-row":
        content = good[:len(good) // 2].rsplit(",", 3)[0]  # stops inside a row
    elif content is None:  # a number replaced by a word
        header, first, *rest = good.splitlines()
        cells = first.split(",")
        cells[header.split(",").index("test_acc")] = "0.9x"
        content = "\n".join([header, ",".join(cells), *rest]) + "\n"
    (d / name).write_text(content)
    code, out, err = run_cli(["plot", kind, "--out", tmp_path])
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and str(d / name) in err and says in err
    assert not list(d.glob("fig_*"))


def test_best_keeps_the_best_size_of_each_scheme_and_every_baseline(report, drawn):
    """Fig. 2: easy 256 (0.9) beats easy 512 (0.8), so easy 512 is not drawn; random has one
    size; both all-data runs are baselines (dashed)."""
    [d] = draw("best", report, drawn)
    ax = d.figure.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"easiest 256, t_r = 20", "random 256, t_r = 20",
                          "all data, t_r = 20", "all data, t_r = 0", "dense"}
    assert lines["all data, t_r = 0"].get_linestyle() == "--"
    assert list(lines["easiest 256, t_r = 20"].get_ydata()) == pytest.approx(
        [0.905, 0.895, 0.885, 0.875])
    assert len(ax.collections) == 4  # a ± std band per curve
    assert ax.get_xscale() == "log" and ax.get_xlim()[0] > ax.get_xlim()[1]  # dense on the left
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[:2] == ["100%", "80%"] and ax.get_ylabel().startswith("test accuracy")


def test_sparsity_is_a_panel_per_size_with_baselines_in_each(report, drawn):
    [d] = draw("sparsity", report, drawn)
    titles = [ax.get_title() for ax in d.figure.axes]
    assert titles == ["subsets of 256 examples", "subsets of 512 examples"]
    for ax in d.figure.axes:
        labels = {line.get_label() for line in ax.get_lines()}
        assert {"all data, t_r = 20", "all data, t_r = 0"} <= labels
    # a run keeps its colour in every panel
    a, b = ({line.get_label(): line.get_color() for line in ax.get_lines()}
            for ax in d.figure.axes)
    assert a["all data, t_r = 0"] == b["all data, t_r = 0"]


def test_runs_differing_only_in_train_steps_are_two_curves_named_in_words(tmp_path, drawn):
    rows = (imp_rows([("imp_a", "all", "", 20, 0.9)], train_steps=40)
            + imp_rows([("imp_b", "all", "", 20, 0.5)], train_steps=80))
    d = tmp_path / "report"
    write_csv(rows, d / "imp.csv")
    out = draw("best", d, drawn)  # other training: another comparison, never one curve
    found = {title(o.figure.axes[0]).rsplit(", ", 1)[1]:
             [line.get_ydata()[0] for line in o.figure.axes[0].get_lines()] for o in out}
    assert found == {"40 training steps": pytest.approx([0.905]),
                     "80 training steps": pytest.approx([0.505])}


def test_one_figure_per_comparison_not_per_dataset(tmp_path, drawn):
    """Runs with 10% label noise are another comparison (Fig. 4): another figure, titled so."""
    rows = (imp_rows([("imp_a", "all", "", 20, 0.9)])
            + imp_rows([("imp_b", "all", "", 20, 0.5)], label_noise=0.1))
    d = tmp_path / "report"
    write_csv(rows, d / "imp.csv")
    out = draw("best", d, drawn)
    assert len(out) == 2
    assert {title(o.figure.axes[0]).rsplit(": ", 1)[1] for o in out} == {
        "digits, resnet8, 0% label noise", "digits, resnet8, 10% label noise"}


def test_size_draws_the_papers_levels_with_baselines(tmp_path, drawn):
    """Fig. 3: levels 8, 10 and 12 when reached; the all-data runs at t_r = 0, t*/2 and t* as
    horizontal lines; error bars over replicates."""
    rows = imp_rows([("imp_e256", "easy", 256, 20, 0.9), ("imp_e512", "easy", 512, 20, 0.95),
                     ("imp_0", "all", "", 0, 0.5), ("imp_20", "all", "", 20, 0.8),
                     ("imp_40", "all", "", 40, 0.85)], levels=range(13))
    d = tmp_path / "report"
    write_csv(rows, d / "imp.csv")
    [out] = draw("size", d, drawn)
    axes = out.figure.axes
    assert [ax.get_title() for ax in axes] == [
        "16.8% weights (level 8)", "10.7% weights (level 10)", "6.87% weights (level 12)"]
    for ax, level in zip(axes, (8, 10, 12)):
        [curve] = ax.containers
        assert curve.get_label() == "easiest, t_r = 20"
        assert list(curve.lines[0].get_xdata()) == [256, 512]
        assert np.asarray(curve.lines[0].get_ydata(), float) == pytest.approx(
            [0.905 - 0.01 * level, 0.955 - 0.01 * level])
        assert curve.has_yerr
        flat = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines()
                if line.get_label().startswith("all data")}
        assert flat == pytest.approx({"all data, t_r = 0": 0.505 - 0.01 * level,
                                      "all data, t_r = 20": 0.805 - 0.01 * level,
                                      "all data, t_r = 40": 0.855 - 0.01 * level})
        assert [t.get_text() for t in ax.get_xticklabels()] == ["256", "512"]


def test_onset_has_error_bars_the_threshold_and_t0_apart_from_t1(tmp_path, drawn):
    from lthfast.experiments.analyses.lmc import CONNECTIVITY_THRESHOLD

    rows = [{"run": f"lmc_{seed}_{t}", **BASE, "subset": "all", "seed": seed, "spawn_step": t,
             "t_r": t, "level": "", "children": 2, "replicate": r, "loss_barrier": b,
             "error_barrier": b + 0.01 * r}
            for seed, b in ((0, 0.3), (1, 0.01)) for t in (0, 1, 10) for r in (0, 1)]
    d = tmp_path / "report"
    write_csv(rows, d / "lmc.csv", LMC_COLUMNS)
    [out] = draw("onset", d, drawn)
    ax_e, ax_l = out.figure.axes
    curves = {c.get_label(): c for c in ax_e.containers}
    assert set(curves) == {"all data, seed 0", "all data, seed 1"}
    assert list(curves["all data, seed 0"].lines[0].get_ydata()) == pytest.approx([0.305] * 3)
    assert curves["all data, seed 0"].has_yerr
    [thr] = [line for line in ax_e.get_lines() if "connected below" in line.get_label()]
    assert thr.get_ydata()[0] == CONNECTIVITY_THRESHOLD
    x0, x1 = ax_e.transData.transform([(0, 0), (1, 0)])[:, 0]
    assert x1 - x0 > 5  # pixels: t = 0 is drawn apart from t = 1
    assert "Fig. 1" not in out.figure.get_suptitle() and "Onset" in out.figure.get_suptitle()


def test_barrier_histograms_are_a_curve_per_scheme(report, drawn):
    [out] = draw("barrier_hist", report, drawn)
    ax = out.figure.axes[0]
    steps = {p.get_label(): p for p in ax.patches}
    assert set(steps) == {"all data, t_r = 20", "easiest, t_r = 20"}
    assert list(steps["easiest, t_r = 20"].get_data().values) == pytest.approx([0.6, 0.4])
    assert ax.get_xlabel() == "per-example train loss barrier"


def test_fig5_right_is_a_point_per_replicate_at_the_papers_level_per_dataset(tmp_path, drawn):
    rows = [{"run": f"imp_{d}_{s}", **BASE, "dataset": d, "subset": s, "subset_size": 256,
             "t_r": 400, "level": level, "replicate": r, "loss_barrier": 0.1 + r,
             "pretrain_acc": 0.4, "test_acc": 0.5 + 0.01 * level, "weights_remaining": 0.8 ** level}
            for d in ("cifar100", "cinic10") for s in ("easy", "random") for r in (0, 1, 2)
            for level in range(13)]
    d = tmp_path / "report"
    write_csv(rows, d / "schemes.csv", SCHEME_COLUMNS)
    [out] = draw("barriers", d, drawn)
    top = out.figure.axes[:2]
    assert [title(ax) for ax in top] == ["cifar100: 8.59% weights, level 11",
                                             "cinic10: 21% weights, level 7"]
    for ax, level in zip(out.figure.axes, (11, 7, 11, 7)):
        points = np.concatenate([c.get_offsets() for c in ax.collections])
        assert len(points) == 6  # 2 schemes × 3 replicates, none averaged
        assert set(np.round(points[:, 1], 6)) == {round(0.5 + 0.01 * level, 6)}
    assert sorted(out.figure.axes[2].collections[0].get_offsets()[:, 0]) == [0.1]


def test_warmup_is_mean_and_std_of_every_replicate_keyed_by_every_flag(tmp_path, drawn):
    """Diverged replicates count with their final accuracy (the authors'); lr 0.05 and lr 0.4
    runs of all data are two curves, not one 'all'."""
    rows = [{"run": f"w{lr}_{t}", "dataset": "digits", "subset": "all", "warmup": t, "lr": lr,
             "replicate": r, "test_acc": acc, "diverged": div}
            for lr in (0.05, 0.4) for t in (0, 4)
            for r, (acc, div) in enumerate([(0.9, False), (0.1, lr == 0.4 and t == 0)])]
    d = tmp_path / "report"
    write_csv(rows, d / "warmup.csv", WARMUP_COLUMNS)
    [out] = draw("warmup", d, drawn)
    ax = out.figure.axes[0]
    curves = {c.get_label(): c for c in ax.containers}
    assert set(curves) == {"all data, lr 0.05", "all data, lr 0.4 (1 diverged)"}
    line, _, (bars,) = curves["all data, lr 0.4 (1 diverged)"]
    assert list(line.get_ydata()) == pytest.approx([0.5, 0.5])
    assert curves["all data, lr 0.4 (1 diverged)"].has_yerr
    assert ax.get_ylabel().startswith("final test accuracy")


def test_dynamics_are_curves_vs_step_and_grad_norms_histograms(report, drawn):
    [dyn] = draw("dynamics", report, drawn)
    ax_a, ax_b = dyn.figure.axes
    coherence = {line.get_label(): line for line in ax_b.get_lines()}
    assert set(coherence) == {"easiest 256, t_r = 20", "random 256, t_r = 20"}
    assert list(coherence["easiest 256, t_r = 20"].get_xdata()) == [0, 10]
    assert list(coherence["easiest 256, t_r = 20"].get_ydata()) == pytest.approx([0.8, 0.8])
    assert ax_a.get_ylabel().startswith("accuracy") and ax_b.get_ylabel()
    [norms] = draw("grad_norms", report, drawn)
    hists = {p.get_label(): p for p in norms.figure.axes[0].patches}
    assert set(hists) == {"easiest 256, t_r = 20 (20 batches)",
                          "random 256, t_r = 20 (20 batches)"}
    assert sum(hists["easiest 256, t_r = 20 (20 batches)"].get_data().values) == pytest.approx(1)


def test_errors_are_distributions_dense_vs_sparse(report, drawn):
    [out] = draw("errors", report, drawn)
    axes = [ax for ax in out.figure.axes if ax.get_visible()]
    titles = [ax.get_title() for ax in axes]
    assert titles == ["all data, t_r = 20", "easiest, t_r = 20", "dense (level 0)",
                      "sparse projection"]
    per = {p.get_label(): list(p.get_data().values) for p in axes[1].patches}
    assert per == {"easiest, t_r = 20, level 0": pytest.approx([0.6, 0.4]),
                   "easiest, t_r = 20, level 6": pytest.approx([0.3, 0.7])}
    assert len(axes[2].patches) == 2 and len(axes[3].patches) == 2


def test_scores_scatter_el2n_against_each_lmc_score(report, drawn):
    [out] = draw("scores", report, drawn)
    assert [ax.get_title() for ax in out.figure.axes] == ["LMC score at 4", "LMC score at 8"]
    assert len(out.figure.axes[0].collections[0].get_offsets()) == 50
    assert out.figure.axes[0].get_xlabel() == "EL2N score (16 iterations)"


def test_legends_never_name_a_hash(tmp_path, drawn):
    rows = (imp_rows([("imp_a", "easy", 256, 20, 0.9)], scores="15a4ef68993c4d3b")
            + imp_rows([("imp_b", "easy", 256, 20, 0.8)], scores="99aa00bb11cc22dd"))
    d = tmp_path / "report"
    write_csv(rows, d / "imp.csv")
    [out] = draw("best", d, drawn)
    names = {line.get_label() for line in out.figure.axes[0].get_lines()}
    assert names == {"easiest 256, scores A, t_r = 20", "easiest 256, scores B, t_r = 20"}
    assert not any("15a4" in n or "imp_" in n for n in names | set(legends(out.figure)))


def test_size_legends_name_a_field_only_one_curve_sets(tmp_path):
    """Two curves that differ only where one leaves a field unset still get two legends."""
    from lthfast.figures import size_curves
    from lthfast.results import read_csv

    rows = [{"run": f"imp_{balanced}", "dataset": "digits", "subset": "random",
             "subset_size": 256, "class_balanced": balanced, "t_r": 20, "replicate": 0,
             "level": 0, "test_acc": 0.8, "diverged": False} for balanced in ("", True)]
    curves = size_curves(read_csv(write_csv(rows, tmp_path / "imp.csv")))
    assert set(curves) == {"random, t_r = 20", "random, class-balanced, t_r = 20"}


def test_barriers_without_a_scheme_is_one_clear_error(tmp_path, run_cli):
    """``report`` writes a header-only schemes.csv when every IMP replicate diverged; plotting
    it is one ``error:`` line (exit 2), not a traceback."""
    report = tmp_path / "report"
    write_csv([], report / "schemes.csv", SCHEME_COLUMNS)
    code, out, err = run_cli(["plot", "barriers", "--out", tmp_path])
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("error: ")
    assert not list(report.glob("fig_*"))


# --- what the smoke-scale paper run showed unreadable (issue 21's acceptance) ----------------

def diet_rows(**extra):
    """Fig. 2's grid (random / easiest / hardest at 8 sizes, t_r = 2), Fig. 12's class-balanced
    easy subsets ranked by forgetting and EL2N, and the all-data baselines at 0, 2, 4."""
    schemes = [(f"imp_all{t}", "all", "", t, 0.8) for t in (0, 2, 4)]
    rows = imp_rows(schemes, levels=range(3), replicates=(0,), **extra)
    for size in (45, 55, 65, 79, 101, 163, 286, 532):
        for subset, rank, balanced in (("random", "", True), ("easy", "el2n", False),
                                       ("hard", "el2n", False)):
            rows += imp_rows([(f"imp_{subset}{size}", subset, size, 2, 0.7)], levels=range(3),
                             replicates=(0,), rank_by=rank, class_balanced=balanced,
                             scores="5eb3f7" if rank else "", **extra)
    for size in (60, 79, 101):
        for rank, scores in (("forgetting", "2d4a6d"), ("el2n", "5eb3f7")):
            rows += imp_rows([(f"imp_{rank}{size}", "easy", size, 2, 0.75)], levels=range(3),
                             replicates=(0,), rank_by=rank, class_balanced=True, scores=scores,
                             **extra)
    return rows


def test_sparsity_wraps_panels_and_names_each_scheme_once_in_one_colour(tmp_path, drawn):

    d = tmp_path / "report"
    write_csv(diet_rows(), d / "imp.csv")
    [out] = draw("fig13", d, drawn)
    panels = [ax for ax in out.figure.axes if ax.get_visible()]
    assert len(panels) == 8 and len({round(ax.get_position().y0, 3) for ax in panels}) == 2
    # the legend: a scheme once (the panel says the size), baselines first, t_r in order, no
    # default flag (random is class-balanced, easy ranked by EL2N), no hash, no score letter
    assert legends(out.figure) == ["all data, t_r = 0", "all data, t_r = 2", "all data, t_r = 4",
                                   "random, t_r = 2", "easiest, t_r = 2", "hardest, t_r = 2",
                                   "dense"]
    colours = {}
    for ax in panels:
        for line in ax.get_lines():
            colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert all(len(c) == 1 for c in colours.values())  # a scheme keeps its colour
    assert len({c.pop() for c in colours.values()}) == 7  # and no two share one
    assert out.stem == "fig13_sparsity_digits_resnet8"


def test_each_paper_figure_draws_the_runs_its_caption_names(tmp_path, drawn, run_cli):

    d = tmp_path / "report"
    write_csv(diet_rows(), d / "imp.csv")
    [fig12] = draw("fig12", d, drawn)
    [fig2] = draw("fig2", d, drawn)
    assert [ax.get_title() for ax in fig12.figure.axes] == [
        f"subsets of {n} examples" for n in (60, 79, 101)]
    assert legends(fig12.figure) == [
        "all data, t_r = 0", "all data, t_r = 2", "all data, t_r = 4",
        "easiest, ranked by el2n, t_r = 2", "easiest, ranked by forgetting, t_r = 2", "dense"]
    names = {line.get_label() for line in fig2.figure.axes[0].get_lines()}
    assert not any("forgetting" in n or "class-balanced" in n for n in names)
    assert {n.split()[0] for n in names} == {"all", "random", "easiest", "hardest", "dense"}
    code, out, err = run_cli(["plot", "fig12", "--out", tmp_path])
    assert code == 0, err
    assert {p.rsplit("/", 1)[1] for p in out.split()} == {
        "fig12_sparsity_digits_resnet8.png", "fig12_sparsity_digits_resnet8.pdf"}


def test_subsets_pre_trained_for_two_t_r_are_two_figures_each_with_its_own_baselines(tmp_path,
                                                                                   drawn):
    """Fig. 14a (t_r = 200: baselines 0, 200, 400) and 14b (t_r = 400: 0, 400, 800) draw only
    the all-data runs the paper compares them with: rewinding to init, t*/2 and t*; a figure
    of all-data runs only draws every one."""
    rows = imp_rows([("imp_all0", "all", "", 0, 0.5), ("imp_all1", "all", "", 1, 0.6),
                     ("imp_all2", "all", "", 2, 0.7), ("imp_all4", "all", "", 4, 0.7),
                     ("imp_e1", "easy", 108, 1, 0.8), ("imp_e2", "easy", 108, 2, 0.9)],
                    levels=range(3))
    d = tmp_path / "report"
    write_csv(rows, d / "imp.csv")
    for kind in ("sparsity", "best"):
        out = draw(kind, d, drawn)
        assert [o.stem for o in out] == [f"{kind}_digits_resnet8_tr1",
                                         f"{kind}_digits_resnet8_tr2"]
        for o, t, base in zip(out, (1, 2), ((0, 1, 2), (0, 2, 4))):
            said = " ".join(filter(None, [o.figure.get_suptitle(),
                                          o.figure.axes[0].get_title()])).replace("\n", " ")
            assert f"pre-trained for t_r = {t}" in said
            assert [x for x in legends(o.figure) if x.startswith(("all", "easiest"))] == [
                *(f"all data, t_r = {b}" for b in base), f"easiest{' 108' * (kind == 'best')}"
                f", t_r = {t}"]
    write_csv([r for r in rows if r["subset"] == "all"], d / "imp.csv")
    [out] = draw("sparsity", d, drawn)
    assert legends(out.figure)[:4] == [f"all data, t_r = {t}" for t in (0, 1, 2, 4)]


def test_noisy_figures_have_the_rewind_to_init_baseline(tmp_path, drawn):
    """Fig. 4: t_r = 0 pre-trains nothing, so the clean rewind-to-init run is each noise
    level's baseline."""

    rows = imp_rows([("imp_0", "all", "", 0, 0.5)], levels=range(3))
    for noise in (0.1, 0.5):
        rows += imp_rows([(f"imp_a{noise}", "all", "", 2, 0.6),
                          (f"imp_e{noise}", "easy", 79, 2, 0.9)], levels=range(3),
                         label_noise=noise, rank_by="el2n", class_balanced=False)
    d = tmp_path / "report"
    write_csv(rows, d / "imp.csv")
    out = draw("fig4", d, drawn)
    assert [o.stem for o in out] == ["fig4_best_digits_resnet8_0.1", "fig4_best_digits_resnet8_0.5"]
    for o in out:
        assert legends(o.figure) == ["all data, t_r = 0", "all data, t_r = 2",
                                     "easiest 79, t_r = 2", "dense"]


def test_long_titles_are_wrapped_to_their_panel(tmp_path, drawn):
    """A synthetic stand-in's name would run over the next panel's title (smoke figures)."""
    from lthfast.figures import CHAR_WIDTH

    name = "synthetic:classes=20,noise=25,size=8,test=360,train=1440"
    rows = [r | {"dataset": name} for r in diet_rows()]
    d = tmp_path / "report"
    write_csv(rows, d / "imp.csv")
    [best] = draw("best", d, drawn)
    text = best.figure.axes[0].get_title()
    width = best.figure.get_figwidth() * 72 * 0.95
    size = best.figure.axes[0].title.get_fontsize()
    assert "\n" in text and all(len(line) * size * CHAR_WIDTH <= width
                                for line in text.split("\n"))
    assert text.replace("\n", "").replace(" ", "") == (
        f"IMP with rewinding, best subset size: {name}, resnet8").replace(" ", "")


def test_fig5_histograms_are_a_panel_per_size_with_the_all_data_children(tmp_path, drawn):
    """The subsets' children (t*/2) beside the all-data children at t*/2 and t*, measured
    alike; the onset's all-data children at other spawn steps are not Fig. 5's."""
    from lthfast.figures import SELECT

    hist = [{"run": "lmc_x", **BASE, "subset": s, "subset_size": n, "t_r": t, "spawn_step": t,
             "level": "", "children": 2, "replicate": 0, "barrier": "loss_barrier",
             "bin_left": i / 10, "bin_right": (i + 1) / 10, "fraction": f, "mean": 0.1}
            for s, n, t in (("all", "", 0), ("all", "", 2), ("all", "", 4), ("all", "", 16),
                            ("easy", 45, 2), ("random", 45, 2), ("easy", 79, 2))
            for i, f in enumerate((0.5, 0.5))]
    d = tmp_path / "report"
    write_csv(hist, d / "barrier_hist.csv",
              (*LMC_COLUMNS[:LMC_COLUMNS.index("replicate") + 1], "barrier", "bin_left",
               "bin_right", "fraction", "mean"))
    [out] = FIGURES["barrier_hist"](d, select=SELECT["fig5"]["barrier_hist"])
    drawn.append(out)
    panels = [ax for ax in out.figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["subsets of 45 examples", "subsets of 79 examples"]
    assert [p.get_label() for p in panels[0].patches] == [
        "all data, t_r = 2", "all data, t_r = 4", "random, t_r = 2", "easiest, t_r = 2"]
    assert [p.get_label() for p in panels[1].patches] == [
        "all data, t_r = 2", "all data, t_r = 4", "easiest, t_r = 2"]
    [every] = draw("barrier_hist", d, drawn)  # the kind: every all-data child too
    assert "all data, t_r = 16" in legends(every.figure)


def test_onset_draws_curves_over_spawn_steps_with_percent_barriers(tmp_path, drawn):
    rows = [{"run": f"lmc_{s}_{t}", **BASE, "subset": s, "subset_size": n, "spawn_step": t,
             "t_r": t, "level": "", "children": 2, "replicate": 0, "loss_barrier": 0.1,
             "error_barrier": 0.05 / (t + 1)}
            for s, n, ts in (("all", "", (0, 2, 4)), ("easy", 45, (2,))) for t in ts]
    d = tmp_path / "report"
    write_csv(rows, d / "lmc.csv", LMC_COLUMNS)
    [out] = draw("onset", d, drawn)
    ax = out.figure.axes[0]
    assert [c.get_label() for c in ax.containers] == ["all data"]  # a single step: no curve
    out.figure.canvas.draw()
    assert [t.get_text() for t in ax.get_yticklabels()][-1].endswith("%")


def test_scores_panels_of_one_spawn_step_say_what_differs(tmp_path, drawn):
    name = "synthetic:classes=20,noise=25,size=8"
    rows = [{"run": run, "score": kind, "dataset": name, "steps": steps, "models": 2,
             "children": children, "example": i, "value": v}
            for run, kind, steps, children in (("el2n_a", "el2n", 12, ""), ("lmc_a", "lmc", 8, 2),
                                               ("lmc_b", "lmc", 8, 3))
            for i, v in enumerate(np.linspace(0, 1, 20))]
    d = tmp_path / "report"
    write_csv(rows, d / "scores.csv", SCORE_COLUMNS)
    [out] = draw("scores", d, drawn)
    assert [ax.get_title() for ax in out.figure.axes] == ["LMC score at 8, 2 children",
                                                         "LMC score at 8, 3 children"]
    assert ":" not in out.stem and "=" not in out.stem


def test_the_eval_subset_accuracy_is_drawn_in_fig7a(tmp_path, drawn):
    steps = [{"summary": f"pre_{s}/grads_x.json", **BASE, "subset": s, "subset_size": 79,
              "t_r": 8, "replicate": 0, "series": series, "step": t, "value": 0.5}
             for s in ("easy", "all") for series in ("test_acc", "easy_acc", "coherence")
             for t in (0, 4)]
    d = tmp_path / "report"
    write_csv(steps, d / "grads_steps.csv", GRADS_STEP_COLUMNS)
    [out] = draw("dynamics", d, drawn)
    assert "train, the easy subset" in legends(out.figure)
    styles = {line.get_linestyle() for line in out.figure.axes[0].get_lines()
              if not line.get_label().startswith("train") and line.get_label() != "test"}
    assert "-." in styles  # the easy-subset accuracy curves are drawn, not only named
    out.figure.canvas.draw()
    for ax in out.figure.axes:  # steps are whole numbers
        assert all(float(t.get_text().replace("\u2212", "-")).is_integer()
                   for t in ax.get_xticklabels() if t.get_text())


# --- a paper figure draws the datasets the paper draws it on --------------------------------

CIFAR100, CINIC10 = STAND_INS["cifar100"], STAND_INS["cinic10"]  # the smoke stand-ins


def stems(out) -> set[str]:
    return {o.stem for o in out}


def test_a_paper_figure_draws_only_its_datasets_and_a_kind_every_one(tmp_path, drawn):
    """Fig. 14 is CINIC-10's, Fig. 13 CIFAR-10's and CIFAR-100's: at smoke scale their
    stand-ins' runs; ``sparsity`` (the kind) draws every dataset."""

    d = tmp_path / "report"
    write_csv(diet_rows() + diet_rows(dataset=CIFAR100) + diet_rows(dataset=CINIC10),
              d / "imp.csv")
    cinic = "sparsity_synthetic-size-8-test-360-train-1440_resnet8"
    cifar100 = "sparsity_synthetic-classes-20-noise-25-size-8-test-360-train-1440_resnet8"
    fig14 = draw("fig14", d, drawn)
    assert stems(fig14) == {f"fig14_{cinic}"}
    fig13 = draw("fig13", d, drawn)
    assert stems(fig13) == {"fig13_sparsity_digits_resnet8", f"fig13_{cifar100}"}
    fig12 = draw("fig12", d, drawn)  # CIFAR-10's forgetting subsets
    assert stems(fig12) == {"fig12_sparsity_digits_resnet8"}
    assert stems(draw("sparsity", d, drawn)) == {"sparsity_digits_resnet8", cinic, cifar100}
    # a figure's title and legend are of its dataset's runs only
    [only] = fig14
    assert CINIC10 in only.figure.get_suptitle().replace("\n", "")
    assert legends(only.figure) == legends(fig13[0].figure)


def test_a_paper_figure_takes_the_full_scale_name_as_well_as_its_stand_in(tmp_path, drawn):
    from lthfast.data.build import canonical_name

    # the tables hold a dataset's canonical name: the stand-ins are spelled that way
    assert all(canonical_name(name) == name for name in STAND_INS.values())
    d = tmp_path / "report"
    write_csv(diet_rows(dataset="cinic10") + diet_rows(dataset="cifar10")
              + diet_rows(dataset=CINIC10), d / "imp.csv")
    out = draw("fig14", d, drawn)
    assert stems(out) == {"fig14_sparsity_cinic10_resnet8",
                          "fig14_sparsity_synthetic-size-8-test-360-train-1440_resnet8"}
    out = draw("fig2", d, drawn)  # CIFAR-10, CIFAR-100 and CINIC-10
    assert stems(out) == {"fig2_best_cinic10_resnet8", "fig2_best_cifar10_resnet8",
                          "fig2_best_synthetic-size-8-test-360-train-1440_resnet8"}


def test_figs_7_and_8_draw_their_own_datasets_grads(tmp_path, drawn):
    """Fig. 7 is CIFAR-100's gradient statistics, Fig. 8 CIFAR-10's: one grads_steps.csv holds
    both at smoke scale."""

    steps = [{"summary": f"pre_{s}_{dataset}/grads_x.json", **BASE, "dataset": dataset,
              "subset": s, "subset_size": 79, "t_r": 8, "replicate": 0, "series": series,
              "step": t, "value": 0.5 + t / 10}
             for dataset in ("digits", CIFAR100) for s in ("easy", "random")
             for series in ("test_acc", "coherence", "grad_norm") for t in (0, 4)]
    d = tmp_path / "report"
    write_csv(steps, d / "grads_steps.csv", GRADS_STEP_COLUMNS)
    cifar100 = "synthetic-classes-20-noise-25-size-8-test-360-train-1440_resnet8"
    out = draw("fig7", d, drawn)
    assert stems(out) == {f"fig7_dynamics_{cifar100}"}
    out = draw("fig8", d, drawn)
    assert stems(out) == {"fig8_grad_norms_digits_resnet8"}
    assert stems(draw("dynamics", d, drawn)) == {"dynamics_digits_resnet8",
                                                 f"dynamics_{cifar100}"}


def test_fig5_draws_cifar100s_and_cinic10s_barriers_only(tmp_path, drawn):
    """Fig. 5 is CIFAR-100's and CINIC-10's: a CIFAR-10 scheme is neither a histogram nor a
    panel of its right part (schemes.csv), though the kinds draw it."""

    rows = [{"run": f"imp_{d}_{s}", **BASE, "dataset": d, "subset": s, "subset_size": 79,
             "t_r": 2, "level": 2, "replicate": 0, "loss_barrier": 0.1, "pretrain_acc": 0.4,
             "test_acc": 0.5, "weights_remaining": 0.64}
            for d in ("digits", "cinic10", CIFAR100) for s in ("easy", "random")]
    d = tmp_path / "report"
    write_csv(rows, d / "schemes.csv", SCHEME_COLUMNS)
    hist = [{"run": "lmc_x", **BASE, "dataset": dataset, "subset": s, "subset_size": n,
             "t_r": t, "spawn_step": t, "level": "", "children": 2, "replicate": 0,
             "barrier": "loss_barrier", "bin_left": i / 10, "bin_right": (i + 1) / 10,
             "fraction": 0.5, "mean": 0.1}
            for dataset in ("digits", CINIC10) for s, n, t in (("all", "", 2), ("easy", 45, 2))
            for i in (0, 1)]
    write_csv(hist, d / "barrier_hist.csv",
              (*LMC_COLUMNS[:LMC_COLUMNS.index("replicate") + 1], "barrier", "bin_left",
               "bin_right", "fraction", "mean"))
    [every] = draw("barriers", d, drawn)
    assert len(every.figure.axes) == 6  # the kind: a panel pair per dataset
    assert len(draw("barrier_hist", d, drawn)) == 2
    out = draw("fig5", d, drawn)
    assert stems(out) == {"fig5_barriers",
                          "fig5_barrier_hist_synthetic-size-8-test-360-train-1440_resnet8"}
    [right] = [o for o in out if o.stem == "fig5_barriers"]
    assert len(right.figure.axes) == 4
    tops = [ax.get_title().replace("\n", "") for ax in right.figure.axes[:2]]
    assert [t.startswith(f"{name}:") for t, name in zip(tops, ("cinic10", CIFAR100))] == [True] * 2


def test_a_paper_figure_with_no_runs_on_its_datasets_is_one_line_exit_2(tmp_path, run_cli):
    d = tmp_path / "report"
    write_csv(diet_rows(), d / "imp.csv")  # CIFAR-10's stand-in only
    code, out, err = run_cli(["plot", "fig14", "--out", tmp_path])
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "none of the runs this figure draws" in err
    assert not list(d.glob("fig*"))
    code, out, err = run_cli(["plot", "fig13", "--out", tmp_path])
    assert code == 0 and {p.rsplit("/", 1)[1] for p in out.split()} == {
        "fig13_sparsity_digits_resnet8.png", "fig13_sparsity_digits_resnet8.pdf"}


def test_every_paper_figure_draws_the_datasets_of_its_sweep_files():
    """docs/FIGURES.md's table names each figure's sweep files; their datasets are the ones
    ``PAPER`` says the figure draws (Fig. 3: 'same as Fig. 2')."""
    import re
    from pathlib import Path

    from lthfast.sweep import load_sweep

    root = Path(__file__).resolve().parent.parent
    found = {}
    for line in (root / "docs" / "FIGURES.md").read_text().splitlines():
        row = re.match(r"\| Fig\. (\d+) \| ([^|]*) \|", line)
        if not row:
            continue
        datasets = set()
        for name in re.findall(r"`([\w.]+\.toml)`", row[2]):
            for p in load_sweep(root / "sweeps" / name).points():
                datasets.add(p["dataset"])
        found[f"fig{row[1]}"] = datasets or found.get("fig2")
    assert set(found) == set(PAPER)
    assert found == {name: set(p.datasets) for name, p in PAPER.items()}


# --- one look per scheme in every figure (the captions' convention) -------------------------

def looks(fig) -> dict[str, tuple]:
    """legend -> (colour, marker, line style) of every line drawn, each legend's looks once."""
    from matplotlib.colors import to_hex

    out: dict = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                out.setdefault(line.get_label(), set()).add(
                    (to_hex(line.get_color()), line.get_marker(), line.get_linestyle()))
    return out


def test_a_scheme_looks_the_same_in_every_figure_as_the_captions_say(tmp_path, drawn):
    """Fig. 2's caption: random green circles, easiest red triangles, hardest pink crosses, all
    data dashed: t_r = 0 yellow, t*/2 orange, t* blue; the same in Figs. 2, 3, 13 and 12."""
    from matplotlib.colors import to_hex

    d = tmp_path / "report"
    write_csv(diet_rows(), d / "imp.csv")
    figs = {name: draw(name, d, drawn) for name in ("fig2", "fig3", "fig12", "fig13")}
    want = {"random": ("#2ca02c", "o", "-"), "easiest": ("#d62728", "^", "-"),
            "hardest": ("#e377c2", "x", "-"), "all data, t_r = 0": ("#e6b800", "None", "--"),
            "all data, t_r = 2": ("#ff7f0e", "None", "--"),
            "all data, t_r = 4": ("#1f77b4", "None", "--")}
    for name in ("fig2", "fig13"):
        got = looks(figs[name][0].figure)
        for label, style in want.items():
            # a subset's legend: its kind (and in Fig. 2 its size), then t_r
            [mine] = [v for k, v in got.items()
                      if k == label or k.split(",")[0].split(" ")[0] == label]
            assert mine == {style}, (name, label, mine)
    # Fig. 3's horizontal baselines and its subset curves in the same colours
    for ax in figs["fig3"][0].figure.axes:
        flat = {line.get_label(): to_hex(line.get_color()) for line in ax.get_lines()
                if line.get_label().startswith("all data")}
        assert flat == {k: v[0] for k, v in want.items() if k.startswith("all")}
        curves = {c.get_label(): to_hex(c.lines[0].get_color()) for c in ax.containers}
        assert curves["random, t_r = 2"] == "#2ca02c"
    # Fig. 12: EL2N-ranked easy red triangles, forgetting its own (purple diamonds)
    got = looks(figs["fig12"][0].figure)
    assert got["easiest, ranked by el2n, t_r = 2"] == {("#d62728", "^", "-")}
    assert got["easiest, ranked by forgetting, t_r = 2"] == {("#9467bd", "D", "-")}


def test_schemes_the_convention_does_not_name_still_look_apart(tmp_path, drawn):
    """Two easy subsets only class balance tells apart, an all-data t_r the baselines' roles
    do not name: every legend its own colour, marker and line style, the default one the
    convention's."""
    rows = imp_rows([("imp_all0", "all", "", 0, 0.5), ("imp_all3", "all", "", 3, 0.6),
                     ("imp_all2", "all", "", 2, 0.6), ("imp_e", "easy", 79, 2, 0.9)],
                    levels=range(3), rank_by="el2n", class_balanced=False)
    rows += imp_rows([("imp_eb", "easy", 79, 2, 0.8)], levels=range(3), rank_by="el2n",
                     class_balanced=True)
    d = tmp_path / "report"
    write_csv(rows, d / "imp.csv")
    [out] = draw("sparsity", d, drawn)
    got = looks(out.figure)
    assert all(len(v) == 1 for v in got.values())
    assert len({v for vs in got.values() for v in vs}) == len(got)
    assert got["easiest, not class-balanced, t_r = 2"] == {("#d62728", "^", "-")}


def test_fig2_draws_the_dense_model_dashed_grey_at_level_0(tmp_path, drawn):
    """Fig. 2's caption: "the dense model (dashed grey)": IMP's level 0 (all weights) of the
    all-data run at t* (twice the subsets' t_r), in Fig. 2 and in every panel of Fig. 13; the
    rewind-to-init run's where t* was not run."""
    from matplotlib.colors import to_hex

    d = tmp_path / "report"
    rows = diet_rows()
    for r in rows:  # each baseline's own dense accuracy, t* = 4 the highest
        if r["subset"] == "all" and r["level"] == 0:
            r["test_acc"] = {0: 0.61, 2: 0.62, 4: 0.64}[r["t_r"]]
    write_csv(rows, d / "imp.csv")
    for name, want in (("fig2", 0.64), ("fig13", 0.64)):
        [out] = draw(name, d, drawn)
        for ax in (a for a in out.figure.axes if a.get_visible()):
            [dense] = [line for line in ax.get_lines() if line.get_label() == "dense"]
            assert list(dense.get_ydata()) == pytest.approx([want, want])
            assert to_hex(dense.get_color()) == "#7f7f7f" and dense.get_linestyle() == "--"
    write_csv([r for r in rows if not (r["subset"] == "all" and r["t_r"] == 4)], d / "imp.csv")
    [out] = draw("fig2", d, drawn)
    [dense] = [line for line in out.figure.axes[0].get_lines() if line.get_label() == "dense"]
    assert dense.get_ydata()[0] == pytest.approx(0.61)


def test_axis_labels_say_how_many_replicates_each_point_averages(report, tmp_path, drawn):
    """"mean ± std" with one replicate promises a band that cannot be drawn: the label says n."""

    for kind in ("best", "sparsity", "size", "onset", "warmup", "dynamics"):
        for d in draw(kind, report, drawn):  # every series of 2 replicates but grads' (1)
            ax = d.figure.axes[0]
            want = "(1 replicate)" if kind == "dynamics" else "(mean ± std, n = 2)"
            assert ax.get_ylabel().endswith(want), (kind, ax.get_ylabel())
    d = tmp_path / "report"
    rows = diet_rows()
    rows += [r | {"replicate": 1} for r in rows if r["subset"] == "all"]
    write_csv(rows, d / "imp.csv")
    [out] = draw("fig13", d, drawn)
    assert out.figure.axes[0].get_ylabel() == "test accuracy (mean ± std, n = 1–2)"
    write_csv(diet_rows(), d / "imp.csv")
    [out] = draw("fig2", d, drawn)
    assert out.figure.axes[0].get_ylabel() == "test accuracy (1 replicate)"


def test_onset_marks_each_curves_onset_from_the_onset_table(tmp_path, drawn):
    """lmc_onset.csv's onset (train error barrier) and onset_test: a dotted vertical line at
    that step in the curve's colour, named in the legend; a zero line in every panel."""
    from lthfast.results import onset_columns, onset_rows

    rows = [{"run": f"lmc_{t}", **BASE, "subset": "all", "spawn_step": t, "t_r": t, "level": "",
             "children": 2, "alphas": "0.5", "bn": "average", "replicate": 0,
             "loss_barrier": 0.1 / (t + 1), "error_barrier": 0.3 if t < 4 else 0.01,
             "test_error_barrier": 0.3 if t < 8 else 0.01} for t in (0, 2, 4, 8)]
    d = tmp_path / "report"
    columns = (*LMC_COLUMNS, "test_error_barrier")
    write_csv(rows, d / "lmc.csv", columns)
    onset_table = onset_rows(rows, columns)
    write_csv(onset_table, d / "lmc_onset.csv", onset_columns(onset_table))
    [out] = draw("onset", d, drawn)
    train, test, loss = out.figure.axes
    for ax, step, words in ((train, 4, "onset"), (test, 8, "onset (test error)")):
        [mark] = [line for line in ax.get_lines() if line.get_label().startswith("onset")]
        assert mark.get_label() == f"{words} t̄ = {step}" and list(mark.get_xdata()) == [step] * 2
        assert mark.get_linestyle() == ":"
        assert mark.get_color() == ax.containers[0].lines[0].get_color()
    for ax in (train, test, loss):
        assert any(list(line.get_ydata()) == [0, 0] for line in ax.get_lines())
    assert "onset t̄ = 4" in legends(out.figure)


def test_barrier_histograms_say_how_much_lies_beyond_the_bins(tmp_path, drawn):
    """The loss barrier's bins end at its 0.5% / 99.5% quantiles: the tails are not folded into
    the end bins but counted (``beyond``) and named in the legend."""
    hist = [{"run": "lmc_x", **BASE, "subset": s, "subset_size": n, "t_r": 2, "spawn_step": 2,
             "level": "", "children": 2, "replicate": 0, "barrier": "loss_barrier",
             "bin_left": i / 10, "bin_right": (i + 1) / 10, "fraction": f, "mean": 0.1,
             "beyond": cut}
            for s, n, fr, cut in (("all", "", (0.5, 0.49), 0.01), ("easy", 45, (0.5, 0.5), 0.0))
            for i, f in enumerate(fr)]
    d = tmp_path / "report"
    write_csv(hist, d / "barrier_hist.csv",
              (*LMC_COLUMNS[:LMC_COLUMNS.index("replicate") + 1], "barrier", "bin_left",
               "bin_right", "fraction", "mean", "beyond"))
    [out] = draw("barrier_hist", d, drawn)
    assert legends(out.figure) == ["all data, t_r = 2 (1.0% beyond the range shown)",
                                   "easiest, t_r = 2"]


def test_the_report_counts_barriers_beyond_the_bins_instead_of_folding_them(tmp_path,
                                                                           monkeypatch):
    """Two far outliers of 1,000 examples: past the 99.5% quantile's bin edge, so counted in
    ``beyond`` (0.2%), never in the end bins."""
    from types import SimpleNamespace

    import lthfast.results as R

    np.save(tmp_path / "loss_barrier.npy", np.concatenate([np.linspace(0, 1, 998), [50, -50]]))
    stage = SimpleNamespace(array=lambda kind: tmp_path / f"{kind}.npy")
    run = SimpleNamespace(stage=lambda *a: stage, name="pre_x")
    monkeypatch.setattr(R, "summaries", lambda out, kind, damaged: iter([(
        run, {"lr": 0.1, "train_steps": 4}, tmp_path / "lmc_x.json", {"spawn_step": 2},
        [(0, None)])]))
    rows = R.barrier_hist_rows(tmp_path)
    assert rows and all(r["barrier"] == "loss_barrier" for r in rows)
    assert rows[0]["beyond"] >= 0.002
    assert sum(r["fraction"] for r in rows) + rows[0]["beyond"] == pytest.approx(1.0)
    assert rows[-1]["fraction"] < 0.05  # the end bin holds no folded tail
