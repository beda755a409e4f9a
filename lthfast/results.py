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
import json
from pathlib import Path

from .errors import UserError
from .files import atomic_write_bytes
from .runs import RunStore

# The run's identity, flattened (what separates curves), then the stage's results.
CONFIG_COLUMNS = ("dataset", "model", "subset", "subset_size", "rank_by", "scores",
                  "class_balanced", "offset", "subset_seed", "shared_subset", "t_r", "pretrain_lr", "lr",
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
        # the ranking scores by content: ensembles of other sizes or lengths rank otherwise
        "scores": subset.get("scores", ""), "class_balanced": subset.get("class_balanced", ""), "offset": subset.get("offset", ""),
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


def pretrain_columns(pre: dict) -> dict:
    """A pre-training config (``pretrain_<hash>/config.json``) as identity columns."""
    return config_columns({"pretrain": pre, "recipe": {
        "model": pre["recipe"]["model"], "lr": "", "steps": "", "batch_size": pre["recipe"][
            "batch_size"]}})


LMC_COLUMNS = ("run", "parent", *CONFIG_COLUMNS, "spawn_step", "level", "children", "alphas",
               "replicate", "loss_barrier", "error_barrier", "loss_barrier_naive_bn",
               "error_barrier_naive_bn", "linearly_connected")


def summaries(out: Path, patterns: tuple[str, ...]):
    """(parent run, its identity columns, summary file, summary, replicate, its summary) for
    every analysis summary matching ``patterns`` beside a pre-training point or an IMP run;
    unreadable ones (being written, or hand-edited) are skipped."""
    store = RunStore(out)
    for kind in ("pretrain", "imp"):
        for run in store.runs(kind):
            try:
                identity = (pretrain_columns(run.config) if kind == "pretrain"
                            else config_columns(run.config))
            except (KeyError, TypeError):
                continue
            for path in sorted(p for pattern in patterns for p in run.path.glob(pattern)):
                try:
                    summary = json.loads(path.read_text())
                    reps = sorted(summary["replicates"].items(), key=lambda kv: int(kv[0]))
                except (OSError, ValueError, KeyError, AttributeError):
                    continue
                for r, rep in reps:
                    yield run, identity, path, summary, int(r), rep


def lmc_rows(out: Path) -> list[dict]:
    """One row per LMC summary and replicate, under pre-training points and IMP runs. ``lr`` and
    ``train_steps`` are the children's (an IMP parent's are the same; a pre-training parent has
    none, so they come from the summary, empty in one written before summaries held them)."""
    return [{"run": path.stem, "parent": run.name, **identity,
             **{k: summary.get(k, "") for k in ("lr", "train_steps") if identity[k] == ""},
             "spawn_step": summary["spawn_step"], "level": summary["level"],
             "children": summary["children"],
             "alphas": " ".join(str(a) for a in summary.get("alphas", [])), "replicate": r,
             **{k: rep[k] for k in LMC_COLUMNS[-5:]}}
            for run, identity, path, summary, r, rep in summaries(out, ("lmc_*.json",))]


WARMUP_COLUMNS = ("run", "dataset", "subset", "subset_size", "rank_by", "warmup", "batch_size",
                  "lr", "train_steps", "seed", "replicate", "test_acc", "diverged",
                  "diverged_step")


def warmup_rows(out: Path) -> list[dict]:
    """One row per warmup run and replicate (Fig. 6): diverged replicates included, flagged."""
    rows = []
    for run in RunStore(out).runs("warmup"):
        try:
            cfg, subset = run.config, run.config["subset"]
            records = run.records()
        except (KeyError, UserError):
            continue
        for rec in records:
            rows.append({"run": run.name, "dataset": cfg["dataset"], "subset": subset["kind"],
                         "subset_size": subset.get("size", ""),
                         "rank_by": subset.get("rank_by", ""),
                         "warmup": cfg["recipe"].get("warmup", 0),
                         "batch_size": cfg["recipe"]["batch_size"], "lr": cfg["recipe"]["lr"],
                         "train_steps": cfg["recipe"]["steps"], "seed": cfg.get("seed", 0),
                         "replicate": rec.replicate, "test_acc": rec.test_acc,
                         "diverged": rec.diverged is not None,
                         "diverged_step": rec.diverged["step"] if rec.diverged else ""})
    return rows


ANALYSIS_COLUMNS = ("analysis", "summary", *CONFIG_COLUMNS, "level", "replicate",
                    "mean_grad_norm", "mean_coherence", "final_train_acc", "final_subset_acc",
                    "final_test_acc", "error_mean", "error_q10", "error_q50", "error_q90")


def analysis_rows(out: Path) -> list[dict]:
    """Gradient statistics (grads_<hash>.json) and error distributions (errors*.json) of every
    pre-training point and IMP run: one row per summary and replicate."""
    rows = []
    for run, identity, path, summary, r, rep in summaries(out, ("grads_*.json", "errors*.json")):
        name = "grads" if path.name.startswith("grads") else "errors"
        row = {"analysis": name, "summary": f"{run.name}/{path.name}", **identity,
               "level": summary.get("level", ""), "replicate": r}
        if name == "grads":
            row |= {k: rep.get(k, "") for k in ANALYSIS_COLUMNS[-9:-4]}
        else:
            q = rep["quantiles"]
            row |= {"error_mean": rep["mean"], "error_q10": q["0.1"], "error_q50": q["0.5"],
                    "error_q90": q["0.9"]}
        rows.append(row)
    return rows


# An onset curve (Fig. 1 right): an LMC run's whole config but its spawn step (the parent's
# t_r) and replicate, so runs differing in seed, pretrain lr, class balance, children, train
# steps, ... never merge.
ONSET_KEY = (*(c for c in CONFIG_COLUMNS if c != "t_r"), "level", "children", "alphas")
ONSET_COLUMNS = (*ONSET_KEY, "spawn_steps", "error_barriers", "onset")
CONNECTED_BELOW = 0.02  # the paper's rule: an error barrier under 2% counts as zero


def onset_key(row: dict) -> tuple:
    """The curve an lmc.csv row belongs to (a column an older table lacks counts as empty)."""
    return tuple(row.get(c, "") for c in ONSET_KEY)


def onset_rows(lmc: list[dict]) -> list[dict]:
    """The onset of linear mode connectivity (Fig. 1 right): per LMC config but the spawn step,
    the first spawn step after which the mean error barrier stays under 2% (empty if it never
    does)."""
    groups: dict[tuple, dict[int, list]] = {}
    for row in lmc:
        groups.setdefault(onset_key(row), {}).setdefault(int(row["spawn_step"]), []).append(
            float(row["error_barrier"]))
    out = []
    for key, steps in sorted(groups.items(), key=lambda kv: str(kv[0])):
        ts = sorted(steps)
        means = [sum(steps[t]) / len(steps[t]) for t in ts]
        onset = ""
        for i in range(len(ts)):
            if all(m < CONNECTED_BELOW for m in means[i:]):
                onset = ts[i]
                break
        out.append(dict(zip(ONSET_KEY, key)) | {
            "spawn_steps": " ".join(map(str, ts)),
            "error_barriers": " ".join(f"{m:.4f}" for m in means), "onset": onset})
    return out


SCHEME_COLUMNS = (*CONFIG_COLUMNS, "run", "replicates", "pretrain_acc", "loss_barrier",
                  "error_barrier", "level", "weights_remaining", "test_acc")


def scheme_rows(imp: list[dict], lmc: list[dict]) -> list[dict]:
    """Fig. 5 (right): per pre-training scheme and level, the mean pre-training accuracy, the
    mean barrier of children spawned at w_{t_r} (dense parent; empty when not measured) and
    the mean final sparse accuracy."""
    barriers: dict[tuple, list] = {}
    for row in lmc:
        if row["level"] in (None, ""):
            key = tuple(row[c] for c in CONFIG_COLUMNS if c not in ("lr", "train_steps"))
            barriers.setdefault(key, []).append((row["loss_barrier"], row["error_barrier"]))
    groups: dict[tuple, list] = {}
    for row in imp:
        if row["test_acc"] is not None and not row["diverged"]:
            groups.setdefault((row["run"], row["level"]), []).append(row)
    out = []
    for (run, level), rows in sorted(groups.items()):
        first = rows[0]
        key = tuple(first[c] for c in CONFIG_COLUMNS if c not in ("lr", "train_steps"))
        found = barriers.get(key, [])
        mean = lambda xs: sum(xs) / len(xs) if xs else ""  # noqa: E731
        out.append({**{c: first[c] for c in CONFIG_COLUMNS}, "run": run, "replicates": len(rows),
                    "pretrain_acc": mean([r["pretrain_acc"] for r in rows
                                          if r["pretrain_acc"] is not None]),
                    "loss_barrier": mean([b[0] for b in found]),
                    "error_barrier": mean([b[1] for b in found]), "level": level,
                    "weights_remaining": mean([r["weights_remaining"] for r in rows]),
                    "test_acc": mean([r["test_acc"] for r in rows])})
    return out


def write_csv(rows: list[dict], path: Path, columns=COLUMNS) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
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
