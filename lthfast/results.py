"""Collect IMP runs into one table (CSV): a row per run, replicate and level.

Reads only what the run store records (``config.json`` and each stage's ``done.json``), never
checkpoints, so it is cheap and safe to run while a sweep is still writing. Levels of a run that
is still going (or was stopped) are included and flagged ``finished = False``. A curve's identity
is the whole run config minus the replicate, which is exactly the run directory (``run``): runs
that differ in any flag (rank-by score, class balance, offset, subset seed, model or lr, label
noise, t_r, ...) never merge. Plots (``lthfast.plots``) read this table.

    lthfast report --out runs       # -> runs/report/imp.csv (+ one accuracy-vs-sparsity PNG per dataset)
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .errors import UserError
from .files import atomic_write_bytes
from .runs import RunStore

# The run's identity, flattened (what separates curves), then the stage's results.
CONFIG_COLUMNS = ("dataset", "model", "subset", "subset_size", "rank_by", "class_balanced",
                  "offset", "subset_seed", "shared_subset", "t_r", "pretrain_lr", "lr",
                  "train_steps", "batch_size", "label_noise", "noise_seed", "seed")
COLUMNS = ("run", *CONFIG_COLUMNS, "replicate", "level", "weights_remaining", "test_acc",
           "test_loss", "pretrain_acc", "diverged", "loader", "finished")


def config_columns(config: dict) -> dict:
    """An ``imp`` run's config.json as the table's identity columns."""
    pre, level = config["pretrain"], config["recipe"]
    subset = pre["subset"]
    return {
        "dataset": pre["dataset"], "model": level["model"], "subset": subset.get("kind", "all"),
        "subset_size": subset.get("size", ""), "rank_by": subset.get("rank_by", ""),
        "class_balanced": subset.get("class_balanced", ""), "offset": subset.get("offset", ""),
        "subset_seed": subset.get("seed", ""), "shared_subset": subset.get("shared", ""),
        "t_r": pre["recipe"]["steps"], "pretrain_lr": pre["recipe"]["lr"], "lr": level["lr"],
        "train_steps": level["steps"], "batch_size": level["batch_size"],
        "label_noise": pre.get("label_noise", 0.0), "noise_seed": pre.get("noise_seed", 0),
        "seed": pre.get("seed", 0)}


def imp_rows(out: Path) -> list[dict]:
    """Every finished level of every replicate of every IMP run under ``out``."""
    store = RunStore(out)
    rows = []
    for run in store.runs("imp"):
        try:
            identity = config_columns(run.config)
            records = run.records()
            pre_acc = {r.replicate: r.test_acc
                       for r in store.run("pretrain", run.config["pretrain"]).records()}
        except (KeyError, TypeError, AttributeError, UserError):
            continue  # not a config this version writes (or a hand-edited one): skip, not crash
        finished = run.file("results.json").exists()
        for rec in records:
            rows.append({"run": run.name, **identity, "replicate": rec.replicate,
                         "level": rec.level, "weights_remaining": rec.weights_remaining,
                         "test_acc": rec.test_acc, "test_loss": rec.test_loss,
                         "pretrain_acc": pre_acc.get(rec.replicate),
                         "diverged": rec.diverged is not None, "loader": rec.loader,
                         "finished": finished})
    return rows


def write_csv(rows: list[dict], path: Path) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_bytes(path, buf.getvalue().encode())


NUMERIC = {"subset_size": int, "t_r": int, "replicate": int, "level": int, "offset": int,
           "subset_seed": int, "train_steps": int, "batch_size": int, "noise_seed": int,
           "seed": int, "label_noise": float, "weights_remaining": float, "test_acc": float,
           "test_loss": float, "pretrain_acc": float, "pretrain_lr": float, "lr": float}


def read_csv(path: Path) -> list[dict]:
    """The table back, with numbers as numbers (empty cells, e.g. a diverged loss, as None)."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key, cast in NUMERIC.items():
                row[key] = cast(row[key]) if row.get(key, "") != "" else None
            for key in ("diverged", "finished"):
                row[key] = row[key] == "True"
            rows.append(row)
    return rows
