"""Collect the run store into tables (CSV), one per kind of result, for ``lthfast report``.

Reads only what the run store records — each run's config, each stage's record, the analyses'
summaries and per-example arrays — never checkpoints, and only through ``Run`` and ``Stage``
(which name every file), so it is cheap and safe to run while a sweep is still writing. Levels
of a run that is still going are included and flagged ``finished = False``.

A table's rows carry the whole config of what made them, so no figure merges runs that differ in
any flag. Tables whose rows are analyses put the identity first and the measured values after
the ``replicate`` column; a figure's curve is every column before ``replicate`` but its x axis.
A file the store cannot read (a truncated ``done.json``, summary or array) is named in
``damaged`` with what was left out and how to repair it; nothing else is dropped because of it.

    lthfast report --out runs       # -> runs/report/imp.csv (+ lmc.csv, warmup.csv, ...)
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from .errors import UserError
from .files import atomic_write_bytes
from .runs import CONFIG, Run, RunStore

# The run's identity, flattened (what separates curves), then the stage's results.
CONFIG_COLUMNS = ("dataset", "model", "subset", "subset_size", "rank_by", "scores",
                  "class_balanced", "offset", "subset_seed", "shared_subset", "t_r", "pretrain_lr",
                  "lr", "train_steps", "batch_size", "label_noise", "noise_seed", "seed")
COLUMNS = ("run", *CONFIG_COLUMNS, "replicate", "level", "weights_remaining", "test_acc",
           "test_loss", "pretrain_acc", "diverged", "loader", "finished")


class Damaged(list):
    """Files the report could not read: one line each, naming the file, what was left out of
    the tables and the command that repairs it."""

    def add(self, path: Path, why: str, left_out: str, repair: str) -> None:
        line = f"{path} is damaged ({why}): left out {left_out}; to repair, {repair}"
        if line not in self:  # a file two tables read is named once
            self.append(line)


def _rerun(run: Run, command: str, delete: Optional[Path] = None) -> str:
    first = f"delete {delete} and " if delete else ""
    return (f"{first}rerun the 'lthfast {command}' command that made {run.name} (its flags are "
            f"in its {CONFIG}): what finished is kept")


def config_columns(config: dict) -> dict:
    """An ``imp`` run's config.json as the table's identity columns."""
    pre, level = config["pretrain"], config["recipe"]
    subset = pre["subset"]
    return {
        "dataset": pre["dataset"], "model": level["model"], "subset": subset.get("kind", "all"),
        "subset_size": subset.get("size", ""), "rank_by": subset.get("rank_by", ""),
        # the ranking scores by content: ensembles of other sizes or lengths rank otherwise
        "scores": subset.get("scores", ""), "class_balanced": subset.get("class_balanced", ""),
        "offset": subset.get("offset", ""), "subset_seed": subset.get("seed", ""),
        "shared_subset": subset.get("shared", ""),
        "t_r": pre["recipe"]["steps"], "pretrain_lr": pre["recipe"]["lr"], "lr": level["lr"],
        "train_steps": level["steps"], "batch_size": level["batch_size"],
        "label_noise": pre.get("label_noise", 0.0), "noise_seed": pre.get("noise_seed", 0),
        "seed": pre.get("seed", 0)}


def pretrain_columns(pre: dict) -> dict:
    """A pre-training config (``pretrain_<hash>/config.json``) as identity columns."""
    return config_columns({"pretrain": pre, "recipe": {
        "model": pre["recipe"]["model"], "lr": "", "steps": "", "batch_size": pre["recipe"][
            "batch_size"]}})


def _records(run: Run, damaged: Optional[Damaged], command: str) -> list:
    found: list = []
    records = run.records(found)
    for path, why in found:
        if damaged is not None:
            damaged.add(path, "not valid JSON" if "corrupt JSON" in why else "not a stage record",
                        f"that stage's results ({path.parent.relative_to(run.path)})",
                        _rerun(run, command, delete=path))
    return records


def imp_rows(out: Path, damaged: Optional[Damaged] = None) -> list[dict]:
    """Every finished level of every replicate of every IMP run under ``out``."""
    store = RunStore(out)
    rows = []
    for run in store.runs("imp", damaged=[] if damaged is None else _Sink(damaged, "imp")):
        try:
            identity = config_columns(run.config)
        except (KeyError, TypeError, AttributeError):
            continue  # not a config this version writes (or a hand-edited one): skip, not crash
        records = _records(run, damaged, "imp")
        pre_run = store.run("pretrain", run.config["pretrain"])
        pre_acc = {r.replicate: r.test_acc for r in _records(pre_run, damaged, "imp")}
        finished = run.results_file.exists()
        for rec in records:
            rows.append({"run": run.name, **identity, "replicate": rec.replicate,
                         "level": rec.level, "weights_remaining": rec.weights_remaining,
                         "test_acc": rec.test_acc, "test_loss": rec.test_loss,
                         "pretrain_acc": pre_acc.get(rec.replicate),
                         "diverged": rec.diverged is not None, "loader": rec.loader,
                         "finished": finished})
    return rows


class _Sink(list):
    """Collects (path, message) of unreadable configs from ``RunStore.runs`` into ``Damaged``."""

    def __init__(self, damaged: Damaged, command: str):
        super().__init__()
        self.damaged, self.command = damaged, command

    def append(self, item) -> None:
        path, why = item
        self.damaged.add(path, why, f"every result of {path.parent.name}",
                         f"restore it, or rerun the 'lthfast {self.command}' command that made "
                         f"it after deleting {path.parent}")


# lmc.csv: who spawned (the parent's identity), how (the summary's own settings), then values.
LMC_SETTINGS = ("spawn_step", "level", "children", "alphas", "bn")
LMC_VALUES = ("loss_barrier", "error_barrier", "loss_barrier_naive_bn", "error_barrier_naive_bn",
              "linearly_connected")
LMC_COLUMNS = ("run", "parent", *CONFIG_COLUMNS, *LMC_SETTINGS, "replicate", *LMC_VALUES)


def summaries(out: Path, analysis: str, damaged: Optional[Damaged] = None):
    """(parent run, its identity columns, summary file, summary, [(replicate, its summary)])
    for every summary of ``analysis`` beside a pre-training point or an IMP run; one that cannot
    be read is named in ``damaged``."""
    store = RunStore(out)
    for kind in ("pretrain", "imp"):
        for run in store.runs(kind, damaged=None if damaged is None else _Sink(damaged, kind)):
            try:
                identity = (pretrain_columns(run.config) if kind == "pretrain"
                            else config_columns(run.config))
            except (KeyError, TypeError):
                continue
            for path in run.summaries(analysis):
                try:
                    summary = json.loads(path.read_text())
                    reps = sorted(((int(r), rep) for r, rep in summary["replicates"].items()),
                                  key=lambda kv: kv[0])
                    if not all(isinstance(rep, dict) for _, rep in reps):
                        raise ValueError("a replicate is not a record")
                except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
                    if damaged is not None:
                        why = ("not valid JSON" if isinstance(exc, json.JSONDecodeError)
                               else f"{type(exc).__name__}: {exc}")
                        damaged.add(path, why, f"every row of this {analysis} summary",
                                    f"rerun the 'lthfast {analysis}' command that made it (it "
                                    "rewrites the summary from the finished stages, training "
                                    "nothing again)")
                    continue
                yield run, identity, path, summary, reps


def _scalar(value) -> bool:
    return isinstance(value, (int, float, bool, str)) or value is None


def lmc_rows(out: Path, damaged: Optional[Damaged] = None) -> list[dict]:
    """One row per LMC summary and replicate, under pre-training points and IMP runs. ``lr`` and
    ``train_steps`` are the children's (an IMP parent's are the same; a pre-training parent has
    none, so they come from the summary). Every other scalar setting of the summary (``bn``, a
    seed, ...) and every scalar a replicate reports (``test_error_barrier``, the midpoint
    barrier, ...) become columns, so barriers measured otherwise are never averaged together."""
    rows = []
    for run, identity, path, summary, reps in summaries(out, "lmc", damaged):
        per_rep = {k for _, rep in reps for k in rep}
        settings = {k: v for k, v in summary.items()
                    if k not in per_rep and k not in ("replicates", "per_example", "lr",
                                                      "train_steps") and _scalar(v)}
        for r, rep in reps:
            # words a replicate records (how BN statistics were taken, ...) describe how it
            # was measured: identity, so barriers measured otherwise never share a curve
            how = {k: v for k, v in rep.items() if isinstance(v, str)}
            rows.append({"run": path.stem, "parent": run.name, **identity,
                         **{k: summary.get(k, "") for k in ("lr", "train_steps")
                            if identity[k] == ""},
                         **settings, **how,
                         "alphas": " ".join(str(a) for a in summary.get("alphas", [])),
                         "replicate": r, **{k: v for k, v in rep.items()
                                            if _scalar(v) and k not in how}})
    return rows


def analysis_columns(rows: list[dict], fixed: tuple[str, ...]) -> tuple[str, ...]:
    """``fixed``, with the settings and values rows have beyond it placed before and after the
    ``replicate`` column (so a reader keys curves on everything before ``replicate``)."""
    before = list(fixed[:fixed.index("replicate")])
    after = list(fixed[fixed.index("replicate") + 1:])
    for row in rows:
        seen_rep = False
        for k in row:
            if k == "replicate":
                seen_rep = True
            elif k not in before and k not in after:
                (after if seen_rep else before).append(k)
    return (*before, "replicate", *after)


def key_columns(columns: Iterable[str], leave_out: Iterable[str] = ()) -> tuple[str, ...]:
    """The identity of a row of an analysis table: every column before ``replicate`` but the
    run names (each one run, not one curve) and ``leave_out`` (the x axis)."""
    columns = list(columns)
    skip = {"run", "parent", "summary", *leave_out}
    return tuple(c for c in columns[:columns.index("replicate")] if c not in skip)


# Per-example barrier histograms (Fig. 5 left and centre): one row per bin.
HIST_BINS = 40
BARRIER_HIST_VALUES = ("barrier", "bin_left", "bin_right", "fraction", "mean", "beyond")


def barrier_hist_rows(out: Path, damaged: Optional[Damaged] = None) -> list[dict]:
    """The distribution of per-example barriers of every LMC replicate (the chosen barrier's
    per-example arrays), as histograms on edges shared by every replicate of the store so that
    curves compare: fraction of examples per bin, the replicate's mean, and the fraction of its
    examples beyond the edges (the loss barrier's are its 0.5% and 99.5% quantiles: the tails are
    counted there, not folded into the end bins)."""
    arrays = []
    for run, identity, path, summary, reps in summaries(out, "lmc", damaged):
        settings = {k: summary[k] for k in ("spawn_step", "level", "children", "bn")
                    if k in summary}
        extra = {k: summary.get(k, "") for k in ("lr", "train_steps") if identity[k] == ""}
        alphas = " ".join(str(a) for a in summary.get("alphas", []))
        for r, _ in reps:
            stage = run.stage(r, summary.get("level"), path.stem)
            for kind in ("loss_barrier", "error_barrier"):
                file = stage.array(kind)
                if not file.exists():
                    continue
                try:
                    values = np.load(file)
                    if values.ndim != 1 or values.size == 0:
                        raise ValueError(f"shape {values.shape}")
                except (OSError, ValueError, EOFError) as exc:
                    if damaged is not None:
                        damaged.add(file, f"{type(exc).__name__}: {exc}",
                                    f"the {kind.replace('_', ' ')} histogram of replicate {r}",
                                    f"delete {stage.done_file} and rerun the 'lthfast lmc' "
                                    "command that made it (the children are kept; only the "
                                    "barriers are measured again)")
                    continue
                arrays.append(({"run": path.stem, "parent": run.name, **identity, **extra,
                                **settings, "alphas": alphas, "replicate": r,
                                "barrier": kind}, values.astype(np.float64)))
    rows = []
    for kind in ("loss_barrier", "error_barrier"):
        mine = [(row, v) for row, v in arrays if row["barrier"] == kind]
        if not mine:
            continue
        finite = np.concatenate([v[np.isfinite(v)] for _, v in mine])
        if finite.size == 0:
            continue
        lo, hi = np.quantile(finite, [0.005, 0.995]) if kind == "loss_barrier" else (-1.0, 1.0)
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, HIST_BINS + 1)
        for row, v in mine:
            counts, _ = np.histogram(v[np.isfinite(v)], edges)
            total = max(int(np.isfinite(v).sum()), 1)
            beyond = 1 - counts.sum() / total
            for i, c in enumerate(counts):
                rows.append(row | {"bin_left": float(edges[i]), "bin_right": float(edges[i + 1]),
                                   "fraction": c / total, "mean": float(np.nanmean(v)),
                                   "beyond": float(beyond)})
    return rows


WARMUP_COLUMNS = ("run", "dataset", "model", "subset", "subset_size", "rank_by", "scores",
                  "class_balanced", "offset", "subset_seed", "warmup", "batch_size", "lr",
                  "train_steps", "seed", "replicate", "test_acc", "diverged", "diverged_step")


def warmup_rows(out: Path, damaged: Optional[Damaged] = None) -> list[dict]:
    """One row per warmup run and replicate (Fig. 6): diverged replicates included, flagged."""
    rows = []
    for run in RunStore(out).runs("warmup", None if damaged is None else _Sink(damaged, "warmup")):
        try:
            cfg, subset = run.config, run.config["subset"]
            recipe = cfg["recipe"]
            identity = {
                "dataset": cfg["dataset"], "model": recipe.get("model", ""),
                "subset": subset["kind"], "subset_size": subset.get("size", ""),
                "rank_by": subset.get("rank_by", ""), "scores": subset.get("scores", ""),
                "class_balanced": subset.get("class_balanced", ""),
                "offset": subset.get("offset", ""), "subset_seed": subset.get("seed", ""),
                "warmup": recipe.get("warmup", 0), "batch_size": recipe["batch_size"],
                "lr": recipe["lr"], "train_steps": recipe["steps"], "seed": cfg.get("seed", 0)}
        except (KeyError, TypeError):
            continue
        for rec in _records(run, damaged, "warmup"):
            rows.append({"run": run.name, **identity, "replicate": rec.replicate,
                         "test_acc": rec.test_acc, "diverged": rec.diverged is not None,
                         "diverged_step": rec.diverged["step"] if rec.diverged else ""})
    return rows


ANALYSIS_COLUMNS = ("analysis", "summary", *CONFIG_COLUMNS, "level", "replicate",
                    "mean_grad_norm", "mean_coherence", "final_train_acc", "final_subset_acc",
                    "final_test_acc", "error_mean", "error_q10", "error_q50", "error_q90")


def analysis_rows(out: Path, damaged: Optional[Damaged] = None) -> list[dict]:
    """Gradient statistics (grads summaries) and error distributions (errors summaries) of
    every pre-training point and IMP run: one row per summary and replicate."""
    rows = []
    for name in ("grads", "errors"):
        for run, identity, path, summary, reps in summaries(out, name, damaged):
            for r, rep in reps:
                row = {"analysis": name, "summary": f"{run.name}/{path.name}", **identity,
                       "level": summary.get("level", ""), "replicate": r}
                if name == "grads":
                    row |= {k: rep.get(k, "") for k in ANALYSIS_COLUMNS[-9:-4]}
                    row |= {k: v for k, v in rep.items()
                            if k.startswith("final_") and _scalar(v) and k not in row}
                else:
                    q = rep.get("quantiles", {})
                    row |= {"error_mean": rep.get("mean", ""), "error_q10": q.get("0.1", ""),
                            "error_q50": q.get("0.5", ""), "error_q90": q.get("0.9", "")}
                rows.append(row)
    return rows


# Training dynamics (Figs. 7a, 7b, 8): one row per replicate, series and step.
GRADS_SERIES = {  # series -> (values array, steps array or None: every step from 0)
    "grad_norm": ("grad_norms", None), "coherence": ("coherence", "coherence_steps"),
    "train_acc": ("train_acc", "speed_steps"), "subset_acc": ("subset_acc", "speed_steps"),
    "test_acc": ("test_acc", "speed_steps"),
    # accuracy on --eval-subset (Fig. 7a: the all-data network's on the easy subset): the
    # series is named after the subset's kind (easy_acc), and left out where none was given
    "eval_subset_acc": ("eval_subset_acc", "speed_steps")}
GRADS_STEP_COLUMNS = ("summary", *CONFIG_COLUMNS, "replicate", "series", "step", "value")


def grads_step_rows(out: Path, damaged: Optional[Damaged] = None) -> list[dict]:
    rows = []
    for run, identity, path, summary, reps in summaries(out, "grads", damaged):
        for r, _ in reps:
            stage = run.stage(r, None, path.stem)
            for series, (values, steps) in GRADS_SERIES.items():
                if not stage.array(values).exists():
                    continue
                try:
                    v = np.load(stage.array(values)).astype(float)
                    if v.ndim == 2:  # coherence: a cosine per probe batch; the step's mean
                        v = v.mean(axis=1)
                    s = np.arange(len(v)) if steps is None else np.load(stage.array(steps))
                    if v.shape != s.shape:
                        raise ValueError(f"{len(v)} values for {len(s)} steps")
                except (OSError, ValueError, EOFError) as exc:
                    if damaged is not None:
                        damaged.add(stage.array(values), f"{type(exc).__name__}: {exc}",
                                    f"the {series} series of replicate {r}",
                                    f"delete {stage.done_file} and rerun the 'lthfast grads' "
                                    "command that made it")
                    continue
                name = series
                if series == "eval_subset_acc":
                    if not np.isfinite(v).any():
                        continue  # no --eval-subset: NaN throughout
                    kind = (summary.get("config") or {}).get("eval_subset")
                    kind = kind.get("kind") if isinstance(kind, dict) else kind  # its spec
                    name = f"{kind}_acc" if kind else series
                rows += [{"summary": f"{run.name}/{path.name}", **identity, "replicate": r,
                          "series": name, "step": int(t), "value": float(x)}
                         for t, x in zip(s, v)]
    return rows


# Per-example error distributions (Fig. 9): one row per replicate and bin.
ERRORS_HIST_COLUMNS = ("summary", *CONFIG_COLUMNS, "level", "replicate", "bin_left",
                       "bin_right", "fraction")


def errors_hist_rows(out: Path, damaged: Optional[Damaged] = None) -> list[dict]:
    rows = []
    for run, identity, path, summary, reps in summaries(out, "errors", damaged):
        for r, rep in reps:
            hist = rep.get("histogram") or {}
            edges, counts = hist.get("edges", []), hist.get("counts", [])
            if len(edges) != len(counts) + 1 or not counts:
                continue
            total = max(sum(counts), 1)
            rows += [{"summary": f"{run.name}/{path.name}", **identity,
                      "level": summary.get("level") if summary.get("level") is not None else 0,
                      "replicate": r, "bin_left": edges[i], "bin_right": edges[i + 1],
                      "fraction": c / total} for i, c in enumerate(counts)]
    return rows


# Per-example scores of the train set (Fig. 10: EL2N vs LMC scores), one row per example and
# score run; only for datasets with both an EL2N and an LMC score run.
SCORE_COLUMNS = ("run", "score", "dataset", "steps", "models", "children", "example", "value")


def score_rows(out: Path, damaged: Optional[Damaged] = None) -> list[dict]:
    store, found = RunStore(out), []
    for kind in ("el2n", "lmc"):
        for run in store.runs(kind, None if damaged is None else _Sink(damaged, "scores")):
            if not run.scores_file.exists():
                continue
            try:
                values = np.load(run.scores_file)
                cfg = run.config
                steps = (cfg.get("parent") or {}).get("steps") if kind == "lmc" else None
                found.append((run, kind, cfg["dataset"],
                              steps if steps is not None else cfg["recipe"]["steps"],
                              cfg.get("models", ""), cfg.get("children", ""), values))
            except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
                if damaged is not None:
                    damaged.add(run.scores_file, f"{type(exc).__name__}: {exc}",
                                "these scores", f"delete it and rerun 'lthfast scores {kind}' "
                                f"with the flags in its {CONFIG}")
    datasets = {d for _, k, d, *_ in found if k == "el2n"} & {d for _, k, d, *_ in found
                                                             if k == "lmc"}
    return [{"run": run.name, "score": kind, "dataset": d, "steps": steps, "models": models,
             "children": children, "example": i, "value": float(v)}
            for run, kind, d, steps, models, children, values in found if d in datasets
            for i, v in enumerate(values)]


# The onset of linear mode connectivity: an LMC config but its spawn step (the parent's t_r).
ONSET_VALUES = ("spawn_steps", "error_barriers", "onset", "test_error_barriers", "onset_test")


def connectivity_threshold() -> float:
    from .experiments.analyses.lmc import CONNECTIVITY_THRESHOLD

    return CONNECTIVITY_THRESHOLD


def onset_key(row: dict, columns: Iterable[str] = LMC_COLUMNS) -> tuple:
    """The curve an lmc.csv row belongs to (a column an older table lacks counts as empty)."""
    return tuple(row.get(c, "") for c in key_columns(columns, ("t_r", "spawn_step")))


def _first_connected(ts: list, means: list, threshold: float):
    for i in range(len(ts)):
        if all(m < threshold for m in means[i:]):
            return ts[i]
    return ""


def _means(steps: dict, ts: list, col: str) -> list[float]:
    """Per spawn step, the mean of ``col`` over the rows that have it (NaN where none do)."""
    vals = [[float(r[col]) for r in steps[t] if r.get(col, "") not in ("", None)] for t in ts]
    return [sum(v) / len(v) if v else float("nan") for v in vals]


def onset_rows(lmc: list[dict], columns: Optional[Iterable[str]] = None) -> list[dict]:
    """The onset of linear mode connectivity (§2): per LMC config but the spawn step, the first
    spawn step after which the mean (train) error barrier stays under the 2% threshold (empty
    if it never does); ``onset_test`` the same with the test error barrier, where measured."""
    columns = tuple(columns) if columns is not None else analysis_columns(lmc, LMC_COLUMNS)
    keys = key_columns(columns, ("t_r", "spawn_step"))
    threshold = connectivity_threshold()
    groups: dict[tuple, dict[int, list]] = {}
    for row in lmc:
        groups.setdefault(tuple(row.get(c, "") for c in keys), {}).setdefault(
            int(row["spawn_step"]), []).append(row)
    out = []
    for key, steps in sorted(groups.items(), key=lambda kv: str(kv[0])):
        ts = sorted(steps)

        train, test = (_means(steps, ts, c) for c in ("error_barrier", "test_error_barrier"))
        has_test = any(not math.isnan(v) for v in test)
        out.append(dict(zip(keys, key)) | {
            "spawn_steps": " ".join(map(str, ts)),
            "error_barriers": " ".join(f"{m:.4f}" for m in train),
            "onset": _first_connected(ts, train, threshold),
            "test_error_barriers": " ".join(f"{m:.4f}" for m in test) if has_test else "",
            "onset_test": _first_connected(ts, test, threshold) if has_test else ""})
    return out


def onset_columns(rows: list[dict]) -> tuple[str, ...]:
    keys = [k for k in (rows[0] if rows else {}) if k not in ONSET_VALUES]
    return (*keys, *ONSET_VALUES)


SCHEME_COLUMNS = ("run", *CONFIG_COLUMNS, "children", "alphas", "bn", "lmc", "replicate",
                  "pretrain_acc", "loss_barrier", "error_barrier", "level", "weights_remaining",
                  "test_acc")


def scheme_rows(imp: list[dict], lmc: list[dict]) -> list[dict]:
    """Fig. 5 (right): per IMP run, replicate and level, the pre-training accuracy of that
    replicate's w_{t_r}, the barrier of the children spawned from that same w_{t_r} (dense
    parent, children trained like IMP's levels: same lr and train steps) and the replicate's
    final sparse accuracy. LMC runs that differ in any setting (children, alphas, BN kind, ...)
    give other rows; a run with no matching LMC has one row with empty barriers."""
    columns = analysis_columns(lmc, LMC_COLUMNS)
    settings = [c for c in key_columns(columns) if c not in CONFIG_COLUMNS
                and c not in ("spawn_step", "level")]
    values = [c for c in columns[columns.index("replicate") + 1:]
              if c not in ("linearly_connected", "batchnorm")]
    barriers: dict[tuple, dict[tuple, dict[int, dict]]] = {}
    for row in lmc:
        if row.get("level") in (None, ""):
            key = tuple(str(row.get(c, "")) for c in CONFIG_COLUMNS)
            how = tuple(row.get(c, "") for c in settings)
            barriers.setdefault(key, {}).setdefault(how, {})[int(row["replicate"])] = row
    out = []
    for row in imp:
        if row["test_acc"] is None or row["diverged"]:
            continue
        key = tuple(str(row[c] if row[c] is not None else "") for c in CONFIG_COLUMNS)
        ident = {"run": row["run"], **{c: row[c] for c in CONFIG_COLUMNS}}
        result = {"replicate": row["replicate"], "pretrain_acc": row["pretrain_acc"],
                  "level": row["level"], "weights_remaining": row["weights_remaining"],
                  "test_acc": row["test_acc"]}
        found = barriers.get(key, {})
        if not found:
            out.append(ident | result)
        for how, reps in sorted(found.items(), key=lambda kv: str(kv[0])):
            rep = reps.get(row["replicate"])
            # how the barrier was measured is identity (before ``replicate``), its values after
            out.append(ident | dict(zip(settings, how)) | {"lmc": rep["run"] if rep else ""}
                       | result | ({v: rep.get(v, "") for v in values} if rep else {}))
    return sorted(out, key=lambda r: (r["run"], str([r.get(c, "") for c in settings]),
                                      r["replicate"], r["level"]))


def write_csv(rows: list[dict], path: Path, columns=COLUMNS) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="",
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_bytes(path, buf.getvalue().encode())


NUMERIC = {"subset_size": int, "t_r": int, "replicate": int, "level": int, "offset": int,
           "subset_seed": int, "train_steps": int, "batch_size": int, "noise_seed": int,
           "seed": int, "label_noise": float, "weights_remaining": float, "test_acc": float,
           "test_loss": float, "pretrain_acc": float, "pretrain_lr": float, "lr": float}


def read_csv(path: Path) -> list[dict]:
    """The IMP table back, with numbers as numbers (empty cells, e.g. a diverged loss, as None).
    A table that cannot be read (cut mid-row, a column missing, a cell that is not a number) is
    one ``UserError`` naming the file, the line and how to remake it."""
    rows = []
    remake = "rerun 'lthfast report' to write it again"
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                if None in row or None in row.values():
                    raise UserError(f"{path} line {reader.line_num}: the row has "
                                    f"{'more' if None in row else 'fewer'} cells than the "
                                    f"header (cut or damaged): {remake}")
                for key, cast in NUMERIC.items():
                    value = row.get(key, "")
                    try:
                        row[key] = cast(value) if value != "" else None
                    except ValueError:
                        raise UserError(f"{path} line {reader.line_num}: {key} = {value!r} is "
                                        f"not a number: {remake}") from None
                for key in ("diverged", "finished"):
                    row[key] = row.get(key) == "True"
                rows.append(row)
    except csv.Error as exc:
        raise UserError(f"{path} is not a readable CSV table ({exc}): {remake}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text CSV table: {remake}") from None
    return rows
