"""Per-example error distributions at a pre-training point (Fig. 9 of the paper, appendix C.2).

For every training example, the error ‖softmax(f(x)) − onehot(y)‖₂ (true labels, no
augmentation, fp32 logits) of the dense network w_{t_r} and, given an IMP level k, of its sparse
projection: level k's mask applied to w_{t_r} with no further training (only levels 0 … k − 1
train to make that mask). Fig. 9's "level 0" is the dense network (``errors`` without
``--level``; ``--level 0``'s mask keeps every weight, so it gives the same numbers), "level 6"
is ``errors --level 6``.

Files (N training examples, dataset order):

- dense: ``pretrain_<h>/replicate_<r>/errors/errors.npy``, float32 (N,); summary
  ``pretrain_<h>/errors.json``
- level k: ``imp_<h>/replicate_<r>/level_<k>/errors/errors.npy``, float32 (N,); summary
  ``imp_<h>/errors_level_<k>.json``
- a summary: ``level``, ``t_r``, ``mean`` (over replicates with finite errors), ``diverged``
  ({replicate: {step, last_finite_loss}} of pre-trainings that diverged: their errors are NaN
  and their statistics null), ``replicates`` ({r: mean, quantiles 0.1/0.5/0.9, histogram with
  ``edges`` (41, over [0, √2]) and ``counts`` (40)}), ``per_example`` ({r: path of errors.npy})

    lthfast errors --dataset digits --subset random --size 256 --steps 20 --level 3
    # -> runs/imp_<hash>/errors_level_3.json (and the dense one beside the pre-training run)
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ...files import atomic_save_npy, atomic_write_json
from ...runs import Run, StageRecord
from ...train.evaluate import el2n, predict
from ..common import Context, packed_model
from . import ANALYSES, finished

BRANCH = "errors"
BINS = np.linspace(0.0, np.sqrt(2.0), 41)  # ‖p − y‖₂ lies in [0, √2]
QUANTILES = (0.1, 0.5, 0.9)


def measure(ctx: Context, states: dict[int, dict]) -> dict[int, np.ndarray]:
    """Replicate -> per-example errors, all replicates as one packed model."""
    reps = sorted(states)
    data = ctx.train_split()
    logits = predict(packed_model(ctx, [states[r] for r in reps]), data, amp=False)
    errors = el2n(logits, data.labels).cpu().numpy()
    return {r: errors[i] for i, r in enumerate(reps)}


def summarize(errors: np.ndarray, diverged: Optional[dict] = None) -> dict:
    """Mean, quantiles and histogram; a network whose errors are not finite (it diverged) has
    none: null statistics and where it diverged."""
    if not np.all(np.isfinite(errors)):
        return {"mean": None, "quantiles": {str(q): None for q in QUANTILES}, "histogram": None,
                "diverged": diverged or {"step": None}}
    counts, _ = np.histogram(errors, BINS)
    return {"mean": float(errors.mean()),
            "quantiles": {str(q): float(np.quantile(errors, q)) for q in QUANTILES},
            "histogram": {"edges": BINS.tolist(), "counts": counts.tolist()}}


def run(ctx: Context, parent: Run, states: dict[int, dict], level: Optional[int], start: int,
        diverged: Optional[dict[int, Optional[dict]]] = None):
    """Measure the replicates whose branch is missing; write ``<parent>/errors[_level_k].json``.
    ``diverged``: per replicate, the divergence record of the network measured, if any."""
    diverged = diverged or {}
    with parent.lock():
        stages = {r: parent.stage(r, level, BRANCH) for r in states}
        todo = {r: s for r, s in states.items() if not stages[r].is_done()}
        for r, errors in (measure(ctx, todo) if todo else {}).items():
            atomic_save_npy(stages[r].file("errors.npy"), errors.astype(np.float32))
            stages[r].mark_done(StageRecord(replicate=r, level=level, branch=BRANCH, start=start,
                                            end=start, test_acc=None, test_loss=None,
                                            extra=summarize(errors, diverged.get(r))))
        return write_summary(parent, level, start)


def write_summary(parent: Run, level: Optional[int], start: int):
    """``<parent>/errors[_level_k].json`` over every replicate measured so far (also those of
    an earlier run with more ``--replicates``, which a rerun with fewer must not drop)."""
    stages = {str(s.replicate): s for s in finished(parent, level, BRANCH)}
    per = {r: s.record().extra for r, s in stages.items()}
    name = "errors.json" if level is None else f"errors_level_{level}.json"
    means = [p["mean"] for p in per.values() if p.get("mean") is not None]
    return atomic_write_json(parent.file(name), {
        "level": level, "t_r": start, "mean": float(np.mean(means)) if means else None,
        "diverged": {r: p["diverged"] for r, p in per.items() if p.get("diverged")},
        "replicates": per,
        "per_example": {r: str(s.file("errors.npy")) for r, s in stages.items()}})


ANALYSES.register("errors")(run)
