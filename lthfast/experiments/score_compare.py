"""Scores compared: rank correlations between every computed score of a dataset, a scatter of
any two (the paper's Fig. 10 is EL2N against LMC scores), and IMP results by ranking score.

``compare`` finds every finished score run of the dataset under ``--out`` (every registered
score: el2n, forgetting, lmc, grand, aum, ...), writes their per-example values side by side
(``report/scores_<dataset>.csv``: index, label, one column per score run), the Spearman rank
correlation of every pair (``report/scores_<dataset>_spearman.csv``) and a heat map of it, and
with ``x`` and ``y`` a scatter of those two columns. The plots read the CSV tables only. A
column is named by its score when the dataset has one run of it, else by score and step
(``grand@0``, ``grand@60``), else by its run directory (``el2n_<hash>``: other ensembles or
label noise).

Spearman's ρ is Pearson's correlation of the average ranks (ties share the mean of their
ranks), in numpy: no scipy. Each score's correlation with itself is 1; the correlations are
of the raw values, so a score whose high end is easy (AUM) correlates negatively with the
others where they agree on which examples are hard.

    lthfast scores compare --dataset digits
    lthfast scores compare --dataset cinic10 --x el2n --y lmc     # Fig. 10
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import UserError
from ..files import atomic_write_bytes
from ..runs import RunStore


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``; tied values get the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    # runs of equal values: [start, end) positions in sorted order
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of positions start+1 .. end
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def spearman_matrix(columns: dict[str, np.ndarray]) -> np.ndarray:
    names = list(columns)
    out = np.eye(len(names))
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            out[i, j] = out[j, i] = spearman(columns[a], columns[names[j]])
    return out


def score_runs(out: Path, dataset: str) -> dict[str, Path]:
    """Column name -> scores.npy of every finished score run of ``dataset`` under ``out``."""
    from .scores import SCORES

    store = RunStore(out)
    found: dict[str, list] = {}
    for kind in SCORES:
        for run in store.runs(kind):
            if run.config.get("dataset") == dataset and run.is_done() \
                    and run.scores_file.exists():
                found.setdefault(kind, []).append(run)
    out_paths = {}
    for kind, runs in found.items():
        steps = [_steps(run.config) for run in runs]
        for run, t in zip(runs, steps):
            name = (kind if len(runs) == 1 else f"{kind}@{t}" if steps.count(t) == 1
                    else run.name)
            out_paths[name] = run.scores_file
    return out_paths


def _steps(config: dict):
    """The step a score run reads its networks at (lmc: the spawn step, its parent's end)."""
    recipe = config.get("parent") or config.get("recipe") or {}
    return recipe.get("steps", "?")


def write_table(rows: list[list], header: list[str], path: Path) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_bytes(path, buf.getvalue().encode())


def read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def compare(out: Path, dataset: str, x: Optional[str] = None, y: Optional[str] = None,
            root: Optional[Path] = None) -> list[Path]:
    """Write the tables and plots of the module docstring; returns their paths (the
    correlation table last). ``root``: the data root, for the labels column (optional)."""
    from ..data.subsets import load_scores

    if (x is None) != (y is None):
        raise UserError("--x and --y come together (the two scores of the scatter)")
    paths = score_runs(Path(out), dataset)
    if len(paths) < 2:
        raise UserError(f"scores compare needs at least two computed scores of {dataset} under "
                        f"{out} (found: {', '.join(paths) or 'none'}); compute them with "
                        f"'lthfast scores NAME --dataset {dataset}'")
    for name in (x, y):
        if name is not None and name not in paths:
            raise UserError(f"no computed score '{name}' of {dataset} under {out} "
                            f"(known: {', '.join(paths)})")
    first = np.load(next(iter(paths.values())), allow_pickle=False)
    columns = {name: load_scores(path, len(first)) for name, path in paths.items()}
    names = list(columns)
    report = Path(out) / "report"
    labels = _labels(root, dataset, len(first))
    values = write_table(
        [[i, "" if labels is None else int(labels[i]), *(f"{columns[n][i]:.7g}" for n in names)]
         for i in range(len(first))], ["index", "label", *names],
        report / f"scores_{dataset}.csv")
    rho = spearman_matrix(columns)
    table = write_table([[a, *(f"{v:.6f}" for v in rho[i])] for i, a in enumerate(names)],
                        ["score", *names], report / f"scores_{dataset}_spearman.csv")
    written = [values, heat_map(table, report / f"scores_{dataset}_spearman.png")]
    if x is not None:
        written.append(scatter(values, table, x, y,
                               report / f"scores_{dataset}_{x}_vs_{y}.png"))
    return written + [table]


def _labels(root: Optional[Path], dataset: str, n: int) -> Optional[np.ndarray]:
    if root is None or not (Path(root) / dataset / "meta.json").exists():
        return None
    from ..data.arrays import open_dataset

    labels = np.asarray(open_dataset(root, dataset).train_labels)
    return labels if len(labels) == n else None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, metadata={"Software": None})
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def heat_map(table: Path, path: Path) -> Path:
    """The correlation table as a heat map, each cell labelled with its ρ."""
    header, rows = read_table(table)
    names = header[1:]
    rho = np.array([[float(v) for v in row[1:]] for row in rows])
    plt = _pyplot()
    size = 1.2 + 0.7 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(rho, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{rho[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(rho[i, j]) > 0.6 else "black")
    fig.colorbar(image, ax=ax, label="Spearman ρ")
    ax.set_title(table.stem.replace("_spearman", "") + ": rank correlations")
    fig.tight_layout()
    return _save(fig, path)


def scatter(values: Path, table: Path, x: str, y: str, path: Path) -> Path:
    """Per-example scores ``y`` against ``x`` (Fig. 10), titled with their ρ."""
    header, rows = read_table(values)
    ix, iy = header.index(x), header.index(y)
    xs = np.array([float(r[ix]) for r in rows])
    ys = np.array([float(r[iy]) for r in rows])
    names, rho_rows = read_table(table)
    rho = float(rho_rows[names.index(x) - 1][names.index(y)])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(xs, ys, s=2, alpha=0.3, linewidths=0)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{y} vs {x} (Spearman ρ = {rho:.2f})")
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------
# the report's IMP results by ranking score
# ------------------------------------------------------------------------------------------------

IMP_BY_SCORE_COLUMNS = ("dataset", "subset", "rank_by", "scores", "class_balanced",
                        "subset_size", "t_r", "level", "weights_remaining", "test_acc_mean",
                        "test_acc_std", "replicates", "run")


def imp_by_score_rows(rows: list[dict]) -> list[dict]:
    """``report/imp.csv``'s rows (``results.imp_rows``) as one row per run and level: the mean
    and spread over finished, non-diverged replicates, sorted so that the subsets ranked by
    each score (and the random / all-data baselines, ``rank_by`` empty) of one dataset, size,
    t_r and level are read one under the other, best first."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row.get("diverged") or row.get("test_acc") is None:
            continue
        groups.setdefault((row["run"], row["level"]), []).append(row)
    out = []
    for (run, level), members in groups.items():
        acc = np.array([float(m["test_acc"]) for m in members])
        first = members[0]
        out.append({k: first.get(k, "") for k in IMP_BY_SCORE_COLUMNS[:7]} | {
            "level": level, "weights_remaining": first["weights_remaining"],
            "test_acc_mean": float(acc.mean()),
            "test_acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "replicates": len(acc), "run": run})
    return sorted(out, key=lambda r: (str(r["dataset"]), _number(r["level"]),
                                      _number(r["subset_size"]), _number(r["t_r"]),
                                      -r["test_acc_mean"]))


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return -1.0  # empty: the all-data rows first
