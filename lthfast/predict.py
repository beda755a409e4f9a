"""Rank pre-training schemes by their barrier signature, without running IMP (beyond the paper).

Fig. 5 of the paper finds that the mean train loss barrier of children spawned at w_{t_r}
predicts the final sparse accuracy better than the pre-training accuracy does. ``predict`` makes
that a tool: for each candidate scheme (the grid points of an ``imp`` sweep file) it measures the
barrier of C dense children (``lthfast lmc``: no pruning, C children per replicate; appendix A's
midpoint loss barrier of the ``--bn`` kind, averaged BatchNorm statistics by default), ranks the
schemes by it (lower barrier, predicted better; a scheme whose children diverged ranks last),
prints the ranking with the training it cost against running IMP for every scheme, and says
plainly when the barriers of two neighbours in the ranking differ by less than their spread
over replicates (the signature cannot separate them). Where IMP results of the same schemes
exist, it reports the Spearman rank correlation between predicted and actual mean test accuracy
at ``level``.

    lthfast predict sweeps/demo_digits.toml --level 5
    # -> runs/predict_<hash>.json (ranking, barriers, cost, correlation)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np

from . import api
from .experiments.common import Runtime
from .files import atomic_write_json, config_hash
from .runs import RunStore


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (ties get their average rank)."""
    def ranks(x):
        x = np.asarray(x, dtype=float)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):  # average ranks of ties
            r[x == v] = r[x == v].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def sort_key(barrier: Optional[float]) -> tuple:
    """Lower barrier first; a scheme without a finite barrier (its children diverged) last."""
    finite = barrier is not None and math.isfinite(barrier)
    return (not finite, barrier if finite else 0.0)


def predict(points: list[dict], rt: Runtime, children: int = 2, replicates: int = 2,
            level: int = 12, progress=print, bn: str = "average") -> Path:
    requests = [api.request_from("imp", p)[0] for p in points]
    varying = [k for k in points[0] if len({repr(p.get(k)) for p in points}) > 1]
    names = [{k: p[k] for k in varying} or p for p in points]  # what tells the schemes apart
    rows = []
    for point, name, req in zip(points, names, requests):
        lmc = api.recast(req, api.LmcRequest, children=children, replicates=replicates, bn=bn)
        summary = json.loads(api.lmc(lmc, rt).read_text())
        per_rep = [s["loss_barrier"] for s in summary["replicates"].values()
                   if s.get("loss_barrier") is not None]
        barrier = summary["loss_barrier"]
        barrier = float("nan") if barrier is None else barrier
        preset = req.preset()
        t_r = preset.t_star if req.steps is None else req.steps
        after = preset.train_steps - t_r
        # the spread over replicates: sample std (ddof 1; 0 with one replicate)
        spread = float(np.std(per_rep, ddof=1)) if len(per_rep) > 1 else 0.0
        rows.append({"scheme": name, "flags": point, "loss_barrier": barrier,
                     "spread": spread, "error_barrier": summary["error_barrier"],
                     "bn": summary.get("bn", "recompute"), "diverged": summary.get("diverged"),
                     "cost_iterations": children * replicates * after,
                     "imp_iterations": (req.levels + 1) * req.replicates * after,
                     "actual_test_acc": actual_accuracy(req, rt, level)})
        progress(f"predict: {describe(name)}: loss barrier {barrier:.4f}")
    order = sorted(range(len(rows)), key=lambda i: sort_key(rows[i]["loss_barrier"]))
    ranking = [rows[i] | {"rank": n + 1} for n, i in enumerate(order)]
    unresolved = [[describe(a["scheme"]), describe(b["scheme"])]
                  for a, b in zip(ranking, ranking[1:])
                  if b["loss_barrier"] - a["loss_barrier"] <= max(a["spread"], b["spread"])]
    known = [r for r in ranking if r["actual_test_acc"] is not None
             and math.isfinite(r["loss_barrier"])]
    correlation = (spearman([-r["loss_barrier"] for r in known],
                            [r["actual_test_acc"] for r in known]) if len(known) >= 3 else None)
    cost = sum(r["cost_iterations"] for r in rows)
    imp_cost = sum(r["imp_iterations"] for r in rows)
    result = {"level": level, "children": children, "replicates": replicates, "bn": bn,
              "ranking": ranking, "not_separated": unresolved,
              "spearman_predicted_vs_actual": correlation,
              "cost_iterations": cost, "imp_iterations": imp_cost,
              "cost_fraction": cost / imp_cost if imp_cost else None}
    # every argument that changes the result is in the name: a rerun at another level (or BN
    # kind) writes a file of its own instead of overwriting this one
    key = config_hash({"points": points, "children": children, "replicates": replicates,
                       "level": level, "bn": bn})
    path = Path(rt.out) / f"predict_{key}.json"
    atomic_write_json(path, result)
    progress(report(result))
    return path


def actual_accuracy(req: api.ImpRequest, rt: Runtime, level: int) -> Optional[float]:
    """Mean test accuracy at ``level`` of this scheme's IMP run (the exact config ``imp`` with
    the same flags would use), if it exists."""
    store = RunStore(rt.out)
    scores = None
    if req.needs_scores():
        cfg = req.score_request().config()
        scores = store.run(cfg.score, cfg).scores_file
        if not scores.exists():
            return None
    run = store.run("imp", req.config(req.subset_spec(scores).identity()))
    accs = [r.test_acc for r in (run.records() if run.exists() else [])
            if r.level == level and r.test_acc is not None and r.diverged is None]
    return float(np.mean(accs)) if accs else None


def describe(point: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def report(result: dict) -> str:
    lines = ["rank  loss barrier (± spread)  scheme"]
    for r in result["ranking"]:
        actual = ("" if r["actual_test_acc"] is None
                  else f"   [IMP level {result['level']}: {r['actual_test_acc']:.3f}]")
        lines.append(f"{r['rank']:4d}  {r['loss_barrier']:+.4f} (± {r['spread']:.4f})      "
                     f"{describe(r['scheme'])}{actual}")
    if result["cost_fraction"] is not None:
        lines.append(f"cost: {result['cost_iterations']:,} training iterations, "
                     f"{100 * result['cost_fraction']:.0f}% of running IMP for every scheme "
                     f"({result['imp_iterations']:,})")
    if result["not_separated"]:
        lines.append("The signature cannot separate: " + "; ".join(
            f"({a}) and ({b})" for a, b in result["not_separated"]) +
            " (barriers within their spread over replicates).")
    corr = result["spearman_predicted_vs_actual"]
    if corr is not None:
        lines.append(f"Spearman rank correlation, predicted vs IMP test accuracy at level "
                     f"{result['level']}: {corr:+.2f}")
    return "\n".join(lines)
