"""Linear mode connectivity: children spawned from a parent, train loss / error barriers.

From a parent network (w_{t_r} after pre-training, or an IMP level's rewound sparse network with
its mask) spawn C children, train each on the full training set to the end of the schedule with
its own data order and augmentation (all children of all replicates as one packed model), then
for every pair (a, b) evaluate the interpolation w(α) = α·w_a + (1 − α)·w_b on the training set
without augmentation (and on the test set) at α = ½ and at every ``--alphas`` point.

Two barriers, each named for what it is:

- the **midpoint barrier** (appendix A; Fig. 5, LMC scores, ``predict``): per example,
  ℓ(w(½); x) − ½(ℓ(w_a; x) + ℓ(w_b; x)) for the cross-entropy ℓ and for the 0-1 error; it may be
  negative. ``loss_barrier`` / ``error_barrier`` are its dataset means (averaged over the pairs),
  ``test_loss_barrier`` / ``test_error_barrier`` the same on the test set (§2 defines the barrier
  with the test error);
- **Frankle et al.'s barrier** (the connectivity verdict): the largest increase over the
  α-interpolation of the endpoints' dataset values, over α in {0, 1} ∪ ½ ∪ ``--alphas``: the
  endpoints are included, so it is ≥ 0 (``frankle_loss_barrier``, ``frankle_error_barrier``).

Two networks are linearly mode connected when their Frankle error barrier is below
``CONNECTIVITY_THRESHOLD`` (2%, Frankle et al.; appendix A) **and** both children trained: a
child trained when its accuracy on the un-augmented training set is finite and at least
``TRAINED_OVER_CHANCE`` (2) times chance (1 / classes). Two chance-level or diverged children
sit on one flat plateau and would otherwise read as "connected". One definition everywhere
(``connected``): a set of pairs (one pair, a replicate's pairs, every replicate of a run) is
connected when every child in it trained and the mean of its pairs' Frankle error barriers is
below the threshold.

BatchNorm at interpolated weights (``--bn``, part of the branch hash):

- ``average`` (default; the authors' ``mansheej/lth_diet``): every entry of the state dict,
  weights and BN running statistics alike, is interpolated, and every network is evaluated in
  eval mode with the statistics it carries (the endpoints with their own);
- ``recompute``: the running statistics of endpoints and interpolations are recomputed on the
  un-augmented training set (every example once, batches weighted by their size), so α = 0 and 1
  give exactly 0. (What lthfast did before; its runs have no ``bn`` in their summary.)

The chosen kind gives the unsuffixed keys and the per-example arrays; both kinds' values are in
the summary with a ``_average`` / ``_recompute`` suffix.

A child that diverged (non-finite weights or logits) has no barrier: its pairs' barriers are NaN
(null in JSON), it is never connected, and the summary says where it diverged (``diverged``).

Files (``<parent stage>`` is ``pretrain_<h>/replicate_<r>`` or ``imp_<h>/replicate_<r>/level_<k>``):

- ``<parent stage>/lmc_<hash>/child_<c>/``: each child's stage (weights.pt, metrics.jsonl,
  done.json)
- ``<parent stage>/lmc_<hash>/loss_barrier.npy``, ``error_barrier.npy``: float32, shape (N,)
  (N training examples, dataset order): the chosen kind's midpoint barrier per example, mean over
  the replicate's pairs whose children are finite (all NaN if none) — Fig. 5's histograms, the
  LMC score (appendix D.1 averages these over replicates)
- ``<parent stage>/lmc_<hash>/done.json``: ``extra`` = the replicate's summary (keys below)
- ``<parent run>/lmc_<hash>.json``: the run summary: every key of ``REPLICATE_KEYS`` as the mean
  over replicates with a finite value (null if none), ``bn``, ``spawn_step``, ``level``,
  ``children``, ``alphas``, ``lr``, ``train_steps``, ``connectivity_threshold``,
  ``linearly_connected``, ``diverged`` ({replicate: [{child, step, last_finite_loss}]}),
  ``replicates`` ({replicate: its summary}), ``per_example`` ({replicate: stage directory})

A replicate's summary: the ``REPLICATE_KEYS`` values (means over its pairs), ``bn``,
``linearly_connected``, ``children_train_acc``, ``children_trained``, ``children_diverged``,
``pairs`` (per pair: ``children``, the chosen kind's values, ``linearly_connected`` and ``path``,
the train barriers at every α evaluated).

    lthfast lmc --dataset digits --subset random --size 256 --steps 20 --children 2
    # -> runs/pretrain_<hash>/lmc_<hash>.json (loss_barrier, error_barrier, per replicate)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ...config import Recipe
from ...data.loader import DeviceData, StreamSeeds, mix_seed
from ...errors import UserError
from ...files import atomic_save_npy, atomic_write_json, config_hash
from ...models.packed import PackedResNet
from ...prune.magnitude import Masks
from ...runs import Run, Stage, StageRecord, to_dict
from ...train import checkpoint as ckpt
from ...train.evaluate import example_losses, predict
from .. import common
from ..stage import StageInputs, train_stage
from . import ANALYSES, finished

# Frankle et al.: an error barrier under 2% is linearly mode connected
CONNECTIVITY_THRESHOLD = CONNECTED_BELOW = 0.02
TRAINED_OVER_CHANCE = 2.0  # a child trained: train accuracy >= 2 x chance (1 / classes)
MIDPOINT = 0.5  # appendix A: the barrier at α = ½
LMC_SEEDS = 2  # seed domain of children (IMP replicates use 0, score ensembles 1)
BN_KINDS = ("average", "recompute")
BARRIERS = ("loss_barrier", "error_barrier", "frankle_loss_barrier", "frankle_error_barrier",
            "test_loss_barrier", "test_error_barrier")
# every value a replicate's summary holds (means over its pairs) and the run summary averages
REPLICATE_KEYS = BARRIERS + tuple(f"{b}_{k}" for k in BN_KINDS for b in BARRIERS) + (
    "loss_barrier_naive_bn", "error_barrier_naive_bn")  # legacy names of *_average (results.py)


@dataclass(frozen=True)
class LmcConfig:
    """How children are spawned and compared; the branch name is ``lmc_<hash of this>``."""

    recipe: Recipe  # the children train iterations [start, recipe.steps)
    start: int  # the spawn step t (the parent's t_r)
    children: int = 2
    alphas: tuple[float, ...] = (0.5,)
    level: Optional[int] = None  # parent: an IMP level's rewound sparse network; None: w_{t_r}
    seed: int = 0
    bn: str = "average"  # BatchNorm at interpolated weights: average | recompute

    def __post_init__(self):
        if self.bn not in BN_KINDS:
            raise UserError(f"--bn must be one of {', '.join(BN_KINDS)}, got {self.bn!r}")

    @property
    def branch(self) -> str:
        # ``bn`` is always hashed, even at its default (to_dict leaves defaults out): runs made
        # before it existed (recompute, no ``bn``) keep their hash and meaning, and no new run,
        # of either kind, shares a hash with one of them
        return f"lmc_{config_hash(to_dict(self) | {'bn': self.bn})}"


@dataclass(frozen=True)
class Parent:
    """The networks children spawn from: one stage per live replicate (its analyses' home)."""

    run: Run
    stages: Sequence[Stage]
    states: dict[int, dict]  # replicate -> K=1 state dict
    masks: dict[int, Optional[Masks]]


def interpolate(a: dict, b: dict, alpha: float) -> dict:
    """α·a + (1 − α)·b for every float tensor (weights and BN statistics); counters from a."""
    return {n: (alpha * a[n] + (1 - alpha) * b[n]) if a[n].is_floating_point() else a[n].clone()
            for n in a}


def barrier(mid: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-example barrier: the value at w(α) minus the same interpolation of the endpoints'."""
    return mid - (alpha * a + (1 - alpha) * b)


def trained(train_acc: float, num_classes: int) -> bool:
    """Not diverged and clearly above chance (module docstring)."""
    return math.isfinite(train_acc) and train_acc >= TRAINED_OVER_CHANCE / num_classes


def connected(frankle_error_barrier: Optional[float], all_trained: bool = True) -> bool:
    """The one connectivity rule (module docstring): every child trained, and the (mean)
    Frankle error barrier finite and below ``CONNECTIVITY_THRESHOLD``."""
    return (all_trained and frankle_error_barrier is not None
            and math.isfinite(frankle_error_barrier)
            and frankle_error_barrier < CONNECTIVITY_THRESHOLD)


def finite_mean(values) -> float:
    """Mean of the finite values (None and NaN left out); NaN when there are none."""
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(kept)) if kept else float("nan")


@torch.no_grad()
def recompute_batchnorm(model: PackedResNet, data: DeviceData, batch_size: int = 1024) -> None:
    """Running statistics of every BN layer from the un-augmented training set: the mean over
    batches weighted by batch size (momentum b / (n_seen + b)), so a last partial batch counts
    for its examples, not as much as a full one. The grouped execution has one batch counter
    for all K models."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
    execution, model.execution = model.execution, "grouped"
    model.train()
    seen = 0
    for start in range(0, data.n, batch_size):
        end = min(start + batch_size, data.n)
        for bn in bns:  # running = (1 − m)·running + m·batch: a size-weighted running mean
            bn.momentum = (end - start) / (seen + end - start)
        x, _ = data.eval_batch(start, end, model.k)
        model(x)
        seen = end
    model.execution = execution
    model.eval()
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum


def evaluate(ctx: common.Context, states: list[dict], recompute_bn: bool) -> dict:
    """split -> (losses, 0-1 errors), each K×N, of K networks on the un-augmented training set
    and the test set; NaN for a network whose logits of an example are not finite."""
    model = common.packed_model(ctx, states)
    if recompute_bn:
        recompute_batchnorm(model, ctx.train_split())
    out = {}
    for split, data in (("train", ctx.train_split()), ("test", ctx.test_split())):
        logits = predict(model, data, amp=False)
        ok = torch.isfinite(logits).all(-1)
        nan = torch.tensor(float("nan"), device=logits.device)
        err = (logits.argmax(-1) != data.labels).float()
        out[split] = (torch.where(ok, example_losses(logits, data.labels), nan),
                      torch.where(ok, err, nan))
    return out


def measure(ctx: common.Context, children: list[dict], alphas: Sequence[float],
            bn: str = "average", diverged: Optional[Sequence[Optional[dict]]] = None) -> dict:
    """Barriers between every pair of ``children``: the replicate's summary and its per-example
    arrays (module docstring). ``diverged``: each child's divergence record, if any."""
    c = len(children)
    pairs = list(itertools.combinations(range(c), 2))
    # α = ½ always (the midpoint barrier); 0 and 1 only when asked (exact copies of the
    # endpoints, 0 by construction: the Frankle barrier counts them without evaluating them)
    inner = sorted({float(a) for a in alphas} | {MIDPOINT})
    points = [(i, j, alpha) for i, j in pairs for alpha in inner]
    mids = [interpolate(children[i], children[j], alpha) for i, j, alpha in points]
    values = {kind: evaluate(ctx, children + mids, recompute_bn=kind == "recompute")
              for kind in BN_KINDS}
    own_err = values["average"]["train"][1][:c]  # each child with its own statistics
    train_acc = [float(1 - e.mean()) for e in own_err]
    ok = [trained(a, ctx.ds.num_classes) for a in train_acc]
    finite = [math.isfinite(a) for a in train_acc]

    per_pair: list[dict] = []
    arrays: dict[str, list[torch.Tensor]] = {"loss_barrier": [], "error_barrier": []}
    for p, (i, j) in enumerate(pairs):
        entry: dict = {"children": [i, j]}
        for kind in BN_KINDS:
            for split, prefix in (("train", ""), ("test", "test_")):
                loss, err = values[kind][split]
                for name, v in (("loss_barrier", loss), ("error_barrier", err)):
                    curve = {}
                    for q, alpha in enumerate(inner):
                        m = c + p * len(inner) + q
                        per_example = barrier(v[m], v[i], v[j], alpha)
                        curve[alpha] = per_example
                    mid = curve[MIDPOINT]
                    entry[f"{prefix}{name}_{kind}"] = float(mid.mean())
                    if split == "train":
                        means = [float(b.mean()) for b in curve.values()]
                        # endpoints included: 0 at α = 0 and 1, so the barrier is >= 0
                        top = max([0.0] + means) if all(map(math.isfinite, means)) else math.nan
                        entry[f"frankle_{name}_{kind}"] = top
                        if kind == bn:
                            entry.setdefault("path", {})
                            for alpha, b in curve.items():
                                entry["path"].setdefault(alpha, {"alpha": alpha})[name] = \
                                    float(b.mean())
                            if finite[i] and finite[j]:
                                arrays[name].append(mid)
        for b in BARRIERS:
            entry[b] = entry[f"{b}_{bn}"]
        entry["path"] = list(entry["path"].values())
        entry["linearly_connected"] = connected(entry["frankle_error_barrier"], ok[i] and ok[j])
        per_pair.append(entry)

    # means over the pairs whose children are finite, like the per-example arrays (NaN if none)
    summary = {key: finite_mean(p[key] for p in per_pair)
               for key in REPLICATE_KEYS if not key.endswith("_naive_bn")}
    summary["loss_barrier_naive_bn"] = summary["loss_barrier_average"]
    summary["error_barrier_naive_bn"] = summary["error_barrier_average"]
    summary |= {"bn": bn, "pairs": per_pair, "children_train_acc": train_acc,
                "children_trained": ok,
                "children_diverged": list(diverged) if diverged else [None] * c,
                "linearly_connected": connected(summary["frankle_error_barrier"], all(ok))}
    n = ctx.ds.train_size
    out = {name: (torch.stack(rows).mean(0).cpu().numpy() if rows
                  else np.full(n, np.nan, dtype=np.float32)) for name, rows in arrays.items()}
    return {"summary": summary, "arrays": out}


def run(ctx: common.Context, parent: Parent, cfg: LmcConfig) -> dict[int, StageRecord]:
    """Train the missing children, measure the missing replicates; records per replicate."""
    reps = [s.replicate for s in parent.stages]
    level = cfg.level
    children = {r: [parent.run.stage(r, level, f"{cfg.branch}/child_{c}")
                    for c in range(cfg.children)] for r in reps}
    everything = np.arange(ctx.ds.train_size)

    def prepare(stage: Stage) -> StageInputs:
        c = int(stage.branch.rsplit("_", 1)[1])
        r = stage.replicate
        return StageInputs(init=parent.states[r],
                           seeds=StreamSeeds(mix_seed(cfg.seed, LMC_SEEDS, r, c, 0),
                                             mix_seed(cfg.seed, LMC_SEEDS, r, c, 1)),
                           indices=everything, mask=parent.masks[r])

    records = {}
    with parent.run.lock():
        todo = [r for r in reps if not parent.run.stage(r, level, cfg.branch).is_done()]
        train_stage(ctx, [s for r in todo for s in children[r]], prepare, cfg.recipe,
                    ctx.train_split(), start=cfg.start, label=f"lmc children from t={cfg.start}")
        for r in reps:
            stage = parent.run.stage(r, level, cfg.branch)
            if not stage.is_done():
                diverged = [s.record().diverged for s in children[r]]
                result = measure(ctx, [ckpt.load(s.file("weights.pt")) for s in children[r]],
                                 cfg.alphas, cfg.bn, diverged)
                for name, array in result["arrays"].items():
                    atomic_save_npy(stage.file(f"{name}.npy"), array.astype(np.float32))
                stage.mark_done(StageRecord(
                    replicate=r, level=level, branch=cfg.branch, start=cfg.start,
                    end=cfg.recipe.steps, test_acc=None, test_loss=None,
                    loader=ctx.rt.loader, extra=result["summary"]))
            records[r] = stage.record()
    return records


def write_summary(parent: Parent, cfg: LmcConfig, records: dict[int, StageRecord]):
    """``<parent run>/<branch>.json``: the mean over replicates and each replicate's summary,
    for every replicate whose branch is finished on disk: ``records`` (this command's) and
    those an earlier run with more ``--replicates`` measured, which a rerun must not drop.
    Replicates whose barriers are not finite (diverged children) are left out of the means and
    named in ``diverged``; the run is connected only if every replicate's children trained."""
    stages = {s.replicate: s for s in finished(parent.run, cfg.level, cfg.branch)}
    per = {r: (records[r] if r in records else stages[r].record()).extra
           for r in sorted(set(stages) | set(records))}
    out = {key: finite_mean(s.get(key) for s in per.values()) for key in REPLICATE_KEYS}
    diverged = {str(r): [{"child": c} | d for c, d in enumerate(s.get("children_diverged") or [])
                         if d] for r, s in per.items()}
    all_trained = all(all(s.get("children_trained", [True])) for s in per.values()) and \
        not any(diverged.values())
    out |= {"bn": cfg.bn, "spawn_step": cfg.start, "level": cfg.level,
            "children": cfg.children, "alphas": list(cfg.alphas), "lr": cfg.recipe.lr,
            "train_steps": cfg.recipe.steps, "connectivity_threshold": CONNECTIVITY_THRESHOLD,
            "linearly_connected": connected(out["frankle_error_barrier"], all_trained),
            "diverged": {r: d for r, d in diverged.items() if d},
            "replicates": {str(r): s for r, s in per.items()},
            "per_example": {str(r): str(parent.run.stage(r, cfg.level, cfg.branch).path)
                            for r in per}}
    return atomic_write_json(parent.run.file(f"{cfg.branch}.json"), out)


ANALYSES.register("lmc")(run)
