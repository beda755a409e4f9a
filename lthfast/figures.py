"""Every kind of figure in the paper, drawn from ``lthfast report`` tables only (never from
checkpoints), as PNG and PDF with one style; each file's metadata names the table and runs.

Figures (``lthfast plot NAME``):
- ``sparsity``: test accuracy vs % weights remaining per dataset (Figs. 2, 4, 12-15; log x,
  mean ± std bands, all-data baselines dashed);
- ``size``: accuracy vs subset size at fixed levels (Fig. 3);
- ``onset``: error and loss barrier vs spawn step, 2% line (Fig. 1 right);
- ``barriers``: final sparse accuracy vs mean barrier and vs pre-training accuracy (Fig. 5 right);
- ``warmup``: final accuracy vs warmup length per warmup subset (Fig. 6);
- ``grads``: gradient norm, coherence and learning speed per scheme (Figs. 7-8);
- ``errors``: per-example error quantiles, dense vs sparse projections (Fig. 9).

    lthfast report && lthfast plot sparsity     # -> runs/report/fig_sparsity_<dataset>.png/.pdf
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import UserError
from .files import atomic_write_bytes
from .plots import LABEL_FIELDS, curves_by_run, describe, labels
from .registry import Registry
from .results import CONFIG_COLUMNS, ONSET_KEY, onset_key, read_csv

FIGURES = Registry("figure")  # name -> fn(report_dir) -> list of written paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
                         "legend.fontsize": 7, "figure.figsize": (6.4, 4.2)})
    return plt


def _table(report: Path, name: str) -> list[dict]:
    path = report / name
    if not path.exists():
        raise UserError(f"{path} is missing: run 'lthfast report' first (it needs runs of "
                        f"the kind this figure draws)")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _imp(report: Path) -> list[dict]:
    _table(report, "imp.csv")  # the one error line when it is missing
    return read_csv(report / "imp.csv")


def _save(fig, report: Path, stem: str, source: str) -> list[Path]:
    out = []
    for fmt in ("png", "pdf"):
        buf = io.BytesIO()
        meta = {"Subject": source} if fmt == "pdf" else {"Source": source}
        fig.savefig(buf, format=fmt, dpi=120, metadata=meta)
        out.append(atomic_write_bytes(report / f"fig_{stem}.{fmt}", buf.getvalue()))
    return out


def _num(value: str) -> float:
    return float(value) if value not in ("", None) else float("nan")


@FIGURES.register("sparsity")
def sparsity(report: Path) -> list[Path]:
    plt, rows, written = _pyplot(), _imp(report), []
    for dataset in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == dataset]
        names, subsets = labels(mine), {r["run"]: r["subset"] for r in mine}
        fig, ax = plt.subplots()
        for run, c in curves_by_run(mine).items():
            x = 100 * c["weights"]
            ax.plot(x, c["mean"], marker="o", markersize=3, label=names[run],
                    linestyle="--" if subsets[run] == "all" else "-")
            ax.fill_between(x, c["mean"] - c["std"], c["mean"] + c["std"], alpha=0.2)
        ax.set(xscale="log", xlabel="weights remaining (%)", ylabel="test accuracy",
               title=f"IMP with rewinding: {dataset}")
        ax.invert_xaxis()
        ax.legend()
        fig.tight_layout()
        written += _save(fig, report, f"sparsity_{dataset}",
                         f"imp.csv; runs {' '.join(sorted(names))}")
        plt.close(fig)
    return written


# A curve of Fig. 3: a run's whole config but its subset size (and replicate), so runs that
# differ in label noise, seed, lr, ... at the same sizes stay apart (paper.sh makes such runs).
SIZE_CURVE = tuple(c for c in CONFIG_COLUMNS if c != "subset_size")
# What a legend may name: every config column (the dataset where a figure does not say it).
LEGEND_FIELDS = (*LABEL_FIELDS, "shared_subset", "noise_seed")


def size_curves(rows: list[dict]) -> dict[str, dict[int, dict[int, list[float]]]]:
    """legend -> level -> subset size -> test accuracies of the finite replicates, from imp.csv
    rows of sized subsets; a legend names the dataset and whatever else tells curves apart."""
    by = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        if r["subset_size"] and r["test_acc"] is not None and not r["diverged"]:
            key = tuple(r[c] for c in SIZE_CURVE)
            by[key][r["level"]][r["subset_size"]].append(r["test_acc"])
    configs = {key: dict(zip(SIZE_CURVE, key)) for key in by}
    names = describe(configs, LEGEND_FIELDS)
    return dict(sorted((f"{configs[key]['dataset']} {names[key]}", by[key]) for key in by))


@FIGURES.register("size")
def size(report: Path) -> list[Path]:
    plt, curves = _pyplot(), size_curves(_imp(report))
    if not curves:
        raise UserError("no IMP runs on subsets of a given size in imp.csv")
    levels = sorted({level for c in curves.values() for level in c})
    picked = sorted({levels[len(levels) // 2], levels[-1]})
    fig, axes = plt.subplots(1, len(picked), squeeze=False, figsize=(4 * len(picked), 3.6))
    for ax, level in zip(axes[0], picked):
        for label, by_level in curves.items():
            sizes = by_level.get(level)
            if not sizes:  # no run of this curve reached the level
                continue
            xs = sorted(sizes)
            means = [np.mean(sizes[x]) for x in xs]
            stds = [np.std(sizes[x]) for x in xs]
            ax.errorbar(xs, means, yerr=stds, marker="o", markersize=3, capsize=2, label=label)
        ax.set(xscale="log", xlabel="subset size", ylabel="test accuracy",
               title=f"level {level}")
        ax.legend()
    fig.tight_layout()
    paths = _save(fig, report, "size", "imp.csv")
    plt.close(fig)
    return paths


@FIGURES.register("onset")
def onset(report: Path) -> list[Path]:
    plt, rows = _pyplot(), _table(report, "lmc.csv")
    by = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["level"] == "":  # children of dense parents w_t, t the spawn step
            by[onset_key(r)][int(r["spawn_step"])].append(
                (_num(r["error_barrier"]), _num(r["loss_barrier"])))
    if not by:
        raise UserError("lmc.csv has no children of a dense parent: run 'lthfast lmc' without "
                        "--level at a few --steps, then 'lthfast report'")
    configs = {key: dict(zip(ONSET_KEY, key)) for key in by}
    names = describe(configs, (*LEGEND_FIELDS, "children", "alphas"), always=())
    fig, (ax_e, ax_l) = plt.subplots(1, 2, figsize=(9, 3.6))
    for label, steps in sorted((f"{configs[k]['dataset']} {names[k]}", by[k]) for k in by):
        xs = sorted(steps)
        for ax, i in ((ax_e, 0), (ax_l, 1)):
            ax.plot([max(x, 1) for x in xs], [np.mean([v[i] for v in steps[x]]) for x in xs],
                    marker="o", markersize=3, label=label)
    ax_e.axhline(0.02, color="k", linestyle=":", label="2% (connected below)")
    ax_e.set(xscale="log", xlabel="spawn step t (0 drawn at 1)", ylabel="error barrier")
    ax_l.set(xscale="log", xlabel="spawn step t (0 drawn at 1)", ylabel="loss barrier")
    ax_e.legend()
    fig.tight_layout()
    paths = _save(fig, report, "onset", "lmc.csv")
    plt.close(fig)
    return paths


@FIGURES.register("barriers")
def barriers(report: Path) -> list[Path]:
    plt, rows = _pyplot(), _table(report, "schemes.csv")
    # schemes.csv has a row per scheme and level with finite IMP results (none at all when
    # every IMP replicate diverged), its barrier empty where no LMC ran at w_{t_r}
    rows = [r for r in rows if r["loss_barrier"] != "" and r["test_acc"] != ""]
    if not rows:
        raise UserError(f"{report / 'schemes.csv'} has no scheme with both a barrier and "
                        "finite IMP results: run 'lthfast lmc' and 'lthfast imp' with the same "
                        "flags (and IMP replicates that do not diverge), then 'lthfast report'")
    last = max(int(r["level"]) for r in rows)
    rows = [r for r in rows if int(r["level"]) == last]
    names = describe(dict(enumerate(rows)), (*LEGEND_FIELDS, "dataset"))
    fig, (ax_b, ax_p) = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, r in enumerate(rows):
        ax_b.scatter(_num(r["loss_barrier"]), _num(r["test_acc"]), label=names[i])
        ax_p.scatter(_num(r["pretrain_acc"]), _num(r["test_acc"]))
    ax_b.set(xlabel="mean train loss barrier at w_{t_r}", ylabel=f"test accuracy, level {last}")
    ax_p.set(xlabel="pre-training test accuracy", ylabel=f"test accuracy, level {last}")
    ax_b.legend()
    fig.tight_layout()
    paths = _save(fig, report, "barriers", "schemes.csv")
    plt.close(fig)
    return paths


@FIGURES.register("warmup")
def warmup(report: Path) -> list[Path]:
    plt, rows = _pyplot(), _table(report, "warmup.csv")
    by = defaultdict(lambda: defaultdict(list))
    diverged = defaultdict(lambda: defaultdict(int))
    for r in rows:
        key = (r["subset"], r["subset_size"])
        if r["diverged"] == "True":
            diverged[key][int(r["warmup"])] += 1
        else:
            by[key][int(r["warmup"])].append(_num(r["test_acc"]))
    fig, ax = plt.subplots()
    for key in sorted(set(by) | set(diverged)):
        xs = sorted(set(by[key]) | set(diverged[key]))
        means = [np.mean(by[key][x]) if by[key][x] else np.nan for x in xs]
        label = f"{key[0]} {key[1]}".strip() + (
            f" ({sum(diverged[key].values())} diverged)" if diverged[key] else "")
        ax.plot([max(x, 1) for x in xs], means, marker="o", markersize=3, label=label)
    ax.set(xscale="log", xlabel="warmup iterations t (0 drawn at 1)",
           ylabel="test accuracy (finite runs)", title="learning-rate warmup on data subsets")
    ax.legend()
    fig.tight_layout()
    paths = _save(fig, report, "warmup", "warmup.csv")
    plt.close(fig)
    return paths


def _bars(report: Path, analysis: str, metrics: list[str], stem: str) -> list[Path]:
    plt, rows = _pyplot(), [r for r in _table(report, "analyses.csv") if r["analysis"] == analysis]
    if not rows:
        raise UserError(f"analyses.csv has no {analysis} rows: run 'lthfast {analysis}' first")
    by = defaultdict(list)
    for r in rows:
        name = f"{r['subset']} {r['subset_size']}".strip() + (
            f" L{r['level']}" if r["level"] else "") + f" t_r={r['t_r']}"
        by[name].append([_num(r[m]) for m in metrics])
    fig, axes = plt.subplots(1, len(metrics), squeeze=False, figsize=(3.2 * len(metrics), 3.6))
    names = sorted(by)
    for i, (ax, metric) in enumerate(zip(axes[0], metrics)):
        values = [np.array(by[n])[:, i] for n in names]
        ax.bar(range(len(names)), [np.nanmean(v) for v in values],
               yerr=[np.nanstd(v) for v in values], capsize=2)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(metric.replace("_", " "))
    fig.tight_layout()
    paths = _save(fig, report, stem, f"analyses.csv ({analysis})")
    plt.close(fig)
    return paths


@FIGURES.register("grads")
def grads(report: Path) -> list[Path]:
    return _bars(report, "grads", ["mean_grad_norm", "mean_coherence", "final_train_acc",
                                   "final_test_acc"], "grads")


@FIGURES.register("errors")
def errors(report: Path) -> list[Path]:
    return _bars(report, "errors", ["error_mean", "error_q10", "error_q50", "error_q90"],
                 "errors")


def plot(name: str, report: Path) -> list[Path]:
    draw: Callable[[Path], list[Path]] = FIGURES.lookup(name)
    return draw(Path(report))
