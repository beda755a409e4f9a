"""Figures from the results table (``lthfast.results``): test accuracy vs weights remaining.

One figure per dataset, one curve per run (the whole config but the replicate: runs differing in
any flag stay apart): the mean over replicates with a ±1 std band, weights remaining on a log axis
falling left to right, as in Figures 2 and 13 of the paper. Reads the CSV only.

    lthfast report --out runs       # -> runs/report/imp_<dataset>.png
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

import numpy as np


# What a legend says about a run, when it differs between the runs of one figure.
LABEL_FIELDS = ("subset", "subset_size", "rank_by", "scores", "class_balanced", "offset",
                "subset_seed",
                "t_r", "model", "pretrain_lr", "lr", "train_steps", "batch_size", "label_noise",
                "seed")


def describe(configs: dict, fields: tuple[str, ...] = LABEL_FIELDS,
             always: tuple[str, ...] = ("t_r",)) -> dict:
    """key -> a legend naming the subset (and its size), the ``always`` fields and every other
    field of ``fields`` whose value differs between ``configs`` (key -> config columns): only
    what tells the curves of one figure apart, so legends stay short. A field some configs leave
    unset (the subset seed of an "all" run) is named only when nothing else tells them apart."""
    unset = (None, "")

    def values(f: str, with_unset: bool) -> set:
        return {str(c.get(f)) for c in configs.values() if with_unset or c.get(f) not in unset}

    def legends(with_unset: bool) -> dict:
        varying = [f for f in fields if f in always or len(values(f, with_unset)) > 1]
        out = {}
        for key, c in configs.items():
            parts = [f"{c['subset']}" + (f" {c['subset_size']}" if c.get("subset_size") else "")]
            parts += [f"{f}={c[f]}" for f in varying
                      if f not in ("subset", "subset_size") and c.get(f) not in unset]
            out[key] = ", ".join(parts)
        return out

    out = legends(with_unset=False)
    return out if len(set(out.values())) == len(out) else legends(with_unset=True)


def labels(rows: list[dict]) -> dict[str, str]:
    """run -> a legend naming the subset, t_r and whatever else separates it from the others."""
    out = describe({row["run"]: row for row in rows})
    if len(set(out.values())) < len(out):  # identical legends: tell the runs apart by name
        out = {run: f"{label} ({run})" for run, label in out.items()}
    return out


def curves(rows: list[dict]) -> dict[str, dict[str, np.ndarray]]:
    """legend -> weights remaining, mean and std of test accuracy per level (finite runs only);
    one curve per run, i.e. per config."""
    names = labels(rows)
    return {names[run]: c for run, c in curves_by_run(rows).items()}


def curves_by_run(rows: list[dict]) -> dict[str, dict[str, np.ndarray]]:
    """run -> its curve (see ``curves``)."""
    by = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["test_acc"] is not None and not row["diverged"]:
            by[row["run"]][row["level"]].append((row["weights_remaining"], row["test_acc"]))
    out = {}
    for name, levels in sorted(by.items()):
        order = sorted(levels)
        out[name] = {
            "level": np.array(order),
            "weights": np.array([np.mean([w for w, _ in levels[k]]) for k in order]),
            "mean": np.array([np.mean([a for _, a in levels[k]]) for k in order]),
            "std": np.array([np.std([a for _, a in levels[k]]) for k in order]),
            "n": np.array([len(levels[k]) for k in order]),
        }
    return out


def plot_dataset(rows: list[dict], dataset: str, path: Path, title: str = "") -> Path:
    """All runs of one dataset; all-data runs (the dense and rewind-to-init baselines of the
    paper's figures) dashed. The figure's metadata names the runs it was drawn from."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    from .files import atomic_write_bytes

    mine = [r for r in rows if r["dataset"] == dataset]
    names, subsets = labels(mine), {r["run"]: r["subset"] for r in mine}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for run, c in curves_by_run(mine).items():
        x = 100 * c["weights"]
        ax.plot(x, c["mean"], marker="o", markersize=3, label=names[run],
                linestyle="--" if subsets[run] == "all" else "-")
        ax.fill_between(x, c["mean"] - c["std"], c["mean"] + c["std"], alpha=0.2)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title or f"IMP with rewinding: {dataset}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120,
                metadata={"Source": "lthfast report; runs: " + " ".join(sorted(names))})
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
