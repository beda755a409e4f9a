"""Linear mode connectivity: children spawned from a parent, train loss / error barriers.

From a parent network (w_{t_r} after pre-training, or an IMP level's rewound sparse network with
its mask) spawn C children, train each on the full training set to the end of the schedule with
its own data order and augmentation (all children of all replicates as one packed model), then
for every pair (a, b) and every α evaluate the interpolation w(α) = α·w_a + (1 − α)·w_b on the
training set without augmentation (appendix A's procedure; the paper uses α = ½):

    barrier(x) = ℓ(w(α); x) − (α·ℓ(w_a; x) + (1 − α)·ℓ(w_b; x))

for the cross-entropy loss ℓ and for the 0-1 error. A pair's barrier is the largest over α of
the dataset mean; its per-example barriers are those at that α; the stage reports the mean over
pairs, and a pair is linearly mode connected when its error barrier is below 2% (Frankle et al.).

BatchNorm at interpolated weights: the running statistics are recomputed on the training set
(un-augmented, every example once, cumulative average), since the average of two networks'
statistics is not the statistics of the averaged network; the endpoints are measured the same
way, so α = 0 and α = 1 give a barrier of exactly 0. The naive numbers (``*_naive_bn``: averaged
statistics at the midpoint, each child's own at the endpoints) are reported beside them. All
endpoints and interpolation points evaluate as one packed model.

Layout: a branch of the parent stage, ``<parent stage>/lmc_<hash>/`` with ``child_<c>/``
stages (weights, metrics), per-example ``loss_barrier.npy`` / ``error_barrier.npy`` (float32,
dataset order, mean over pairs) and ``done.json`` whose ``extra`` holds the summary.

    lthfast lmc --dataset digits --subset random --size 256 --steps 20 --children 2
    # -> runs/pretrain_<hash>/lmc_<hash>.json (loss_barrier, error_barrier, per replicate)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ...config import Recipe
from ...data.loader import DeviceData, StreamSeeds, mix_seed
from ...files import atomic_save_npy, atomic_write_json
from ...models.packed import PackedResNet
from ...prune.magnitude import Masks
from ...runs import Run, Stage, StageRecord, hash_of
from ...train import checkpoint as ckpt
from ...train.evaluate import example_losses, predict
from .. import common
from ..stage import StageInputs, train_stage
from . import ANALYSES, finished

CONNECTIVITY_THRESHOLD = CONNECTED_BELOW = 0.02  # error barrier under 2%: connected (Frankle et al.)
LMC_SEEDS = 2  # seed domain of children (IMP replicates use 0, score ensembles 1)


@dataclass(frozen=True)
class LmcConfig:
    """How children are spawned and compared; the branch name is ``lmc_<hash of this>``."""

    recipe: Recipe  # the children train iterations [start, recipe.steps)
    start: int  # the spawn step t (the parent's t_r)
    children: int = 2
    alphas: tuple[float, ...] = (0.5,)
    level: Optional[int] = None  # parent: an IMP level's rewound sparse network; None: w_{t_r}
    seed: int = 0

    @property
    def branch(self) -> str:
        return f"lmc_{hash_of(self)}"


@dataclass(frozen=True)
class Parent:
    """The networks children spawn from: one finished stage per replicate."""

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


def connected(error_barrier: float) -> bool:
    return error_barrier < CONNECTED_BELOW


@torch.no_grad()
def recompute_batchnorm(model: PackedResNet, data: DeviceData, batch_size: int = 1024) -> None:
    """Running statistics of every BN layer from the un-augmented training set (cumulative
    average over batches). The grouped execution has one batch counter for all K models, which
    the cumulative average needs."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    execution, model.execution = model.execution, "grouped"
    model.train()
    for start in range(0, data.n, batch_size):
        x, _ = data.eval_batch(start, min(start + batch_size, data.n), model.k)
        model(x)
    model.execution = execution
    model.eval()
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum


def per_example(ctx: common.Context, states: list[dict], recompute_bn: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses and 0-1 errors (K×N) of K networks on the un-augmented training set."""
    data = ctx.train_split()
    model = common.packed_model(ctx, states)
    if recompute_bn:
        recompute_batchnorm(model, data)
    logits = predict(model, data, amp=False)
    return example_losses(logits, data.labels), (logits.argmax(-1) != data.labels).float()


def measure(ctx: common.Context, children: list[dict], alphas: Sequence[float]) -> dict:
    """Barriers between every pair of ``children`` at every α: summary and per-example arrays."""
    pairs = list(itertools.combinations(range(len(children)), 2))
    points = [(i, j, alpha) for i, j in pairs for alpha in alphas]
    mids = [interpolate(children[i], children[j], alpha) for i, j, alpha in points]
    # Endpoints and midpoints as one packed model, twice: with BN statistics recomputed for all
    # of them (the barriers: endpoints and midpoints measured alike, so α = 0 and 1 give 0), and
    # with their own / averaged statistics (the naive numbers).
    c = len(children)
    loss, err = per_example(ctx, children + mids, recompute_bn=True)
    end_loss, end_err, mid_loss, mid_err = loss[:c], err[:c], loss[c:], err[c:]
    loss, err = per_example(ctx, children + mids, recompute_bn=False)
    own_loss, own_err, naive_loss, naive_err = loss[:c], err[:c], loss[c:], err[c:]

    summary_pairs, loss_rows, err_rows = [], [], []
    for p, (i, j) in enumerate(pairs):
        curve = []
        for q, alpha in enumerate(alphas):
            m = p * len(alphas) + q
            lb = barrier(mid_loss[m], end_loss[i], end_loss[j], alpha)
            eb = barrier(mid_err[m], end_err[i], end_err[j], alpha)
            naive_lb = barrier(naive_loss[m], own_loss[i], own_loss[j], alpha)
            naive_eb = barrier(naive_err[m], own_err[i], own_err[j], alpha)
            curve.append({"alpha": alpha, "loss_barrier": lb.mean().item(),
                          "error_barrier": eb.mean().item(),
                          "loss_barrier_naive_bn": naive_lb.mean().item(),
                          "error_barrier_naive_bn": naive_eb.mean().item(), "_lb": lb, "_eb": eb})
        top = max(curve, key=lambda c: c["loss_barrier"])  # the sup over the path
        loss_rows.append(top.pop("_lb"))
        err_rows.append(top.pop("_eb"))
        for c in curve:
            c.pop("_lb", None), c.pop("_eb", None)
        summary_pairs.append({
            "children": [i, j], "alpha": top["alpha"], "loss_barrier": top["loss_barrier"],
            "error_barrier": max(c["error_barrier"] for c in curve),
            "loss_barrier_naive_bn": max(c["loss_barrier_naive_bn"] for c in curve),
            "error_barrier_naive_bn": max(c["error_barrier_naive_bn"] for c in curve),
            "linearly_connected": connected(max(c["error_barrier"] for c in curve)),
            "path": curve})
    mean = lambda key: float(np.mean([p[key] for p in summary_pairs]))  # noqa: E731
    summary = {key: mean(key) for key in ("loss_barrier", "error_barrier",
                                          "loss_barrier_naive_bn", "error_barrier_naive_bn")}
    summary |= {"linearly_connected": all(p["linearly_connected"] for p in summary_pairs),
                "pairs": summary_pairs, "children_train_acc": (1 - own_err.mean(1)).tolist(),
                "batchnorm": "recomputed on the un-augmented training set (naive: *_naive_bn)"}
    arrays = {"loss_barrier": torch.stack(loss_rows).mean(0).cpu().numpy(),
              "error_barrier": torch.stack(err_rows).mean(0).cpu().numpy()}
    return {"summary": summary, "arrays": arrays}


def run(ctx: common.Context, parent: Parent, cfg: LmcConfig) -> dict[int, StageRecord]:
    """Train the missing children, measure the missing replicates; records per replicate."""
    reps = [s.replicate for s in parent.stages]
    level = parent.stages[0].level
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
                result = measure(ctx, [ckpt.load(s.file("weights.pt")) for s in children[r]],
                                 cfg.alphas)
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
    those an earlier run with more ``--replicates`` measured, which a rerun must not drop."""
    stages = {s.replicate: s for s in finished(parent.run, cfg.level, cfg.branch)}
    per = {r: (records[r] if r in records else stages[r].record()).extra
           for r in sorted(set(stages) | set(records))}
    mean = lambda key: float(np.mean([s[key] for s in per.values()]))  # noqa: E731
    out = {key: mean(key) for key in ("loss_barrier", "error_barrier", "loss_barrier_naive_bn",
                                      "error_barrier_naive_bn")}
    out |= {"spawn_step": cfg.start, "level": cfg.level, "children": cfg.children,
            "alphas": list(cfg.alphas), "lr": cfg.recipe.lr, "train_steps": cfg.recipe.steps,
            "linearly_connected": connected(out["error_barrier"]),
            "replicates": {str(r): s for r, s in per.items()},
            "per_example": {str(r): str(parent.run.stage(r, cfg.level, cfg.branch).path)
                            for r in per}}
    return atomic_write_json(parent.run.file(f"{cfg.branch}.json"), out)


ANALYSES.register("lmc")(run)
