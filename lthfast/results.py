"""Collect finished IMP runs into one table (CSV): a row per run, replicate and level.

Reads only ``results.json`` and ``config.json`` of ``imp_<hash>`` directories, never checkpoints,
so it is cheap and safe to run while a sweep is still writing (results are replaced atomically).
Plots (``lthfast.plots``) read this table.

    lthfast report --out runs       # -> runs/report/imp.csv (+ one accuracy-vs-sparsity PNG per dataset)
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .store import atomic_write_bytes

COLUMNS = ("run", "dataset", "model", "subset", "subset_size", "t_r", "label_noise", "replicate",
           "level", "weights_remaining", "test_acc", "test_loss", "diverged", "loader")


def imp_rows(out: Path) -> list[dict]:
    """Every level of every replicate of every IMP run under ``out`` (unreadable runs skipped)."""
    rows = []
    for results_path in sorted(Path(out).glob("imp_*/results.json")):
        try:
            results = json.loads(results_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a run being created right now; the next report picks it up
        pre = results["config"]["pretrain"]
        for row in results["rows"]:
            rows.append({
                "run": results_path.parent.name, "dataset": pre["dataset"], "model": pre["model"],
                "subset": results.get("subset", ""), "subset_size": pre["subset_size"],
                "t_r": pre["steps"], "label_noise": pre.get("label_noise", 0.0),
                "replicate": row["replicate"], "level": row["level"],
                "weights_remaining": row["weights_remaining"], "test_acc": row["test_acc"],
                "test_loss": row["test_loss"], "diverged": row["diverged"] is not None,
                "loader": row.get("loader", "device")})  # runs from before the field: device
    return rows


def write_csv(rows: list[dict], path: Path) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_bytes(path, buf.getvalue().encode())


def read_csv(path: Path) -> list[dict]:
    """The table back, with numbers as numbers (empty cells, e.g. a diverged loss, as None)."""
    numeric = {"subset_size": int, "t_r": int, "replicate": int, "level": int,
               "label_noise": float, "weights_remaining": float, "test_acc": float,
               "test_loss": float}
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key, cast in numeric.items():
                row[key] = cast(row[key]) if row[key] != "" else None
            row["diverged"] = row["diverged"] == "True"
            rows.append(row)
    return rows
