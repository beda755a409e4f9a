"""Learning-rate warmup with data subsets during warmup only (appendix A, Fig. 6 of the paper).

ResNet-20 on CIFAR-10, batch 1024, SGD lr 3.2 (momentum 0.9, weight decay 1e-4), linear warmup
over t iterations, 160 epochs with ×0.1 at epochs 80 and 120. During the warmup only, the
network trains on a subset (easiest / hardest by EL2N, or random, of 5,120 / 10,240 / 25,600
examples, or all data); afterwards on the full training set, with one optimizer throughout (the
data switch; momentum and schedule go on). Replicates (8 in the paper) train as one packed
model. A replicate whose loss turns non-finite is recorded as diverged at that step, a result
of the sweep, never a crash.

    lthfast warmup --dataset digits --subset easy --size 400 --warmup 20 --train-steps 200
    # -> runs/warmup_<hash> (test accuracy and divergence per replicate in results.json)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import Recipe
from ..data.loader import StreamSeeds
from ..data.subsets import SubsetSpec
from ..files import atomic_write_json
from ..runs import Run, Stage
from .common import Context, replicate_seeds
from .imp import subset_of
from .stage import StageInputs, train_stage


@dataclass(frozen=True)
class WarmupConfig:
    """The identity of ``warmup_<hash>``."""

    dataset: str
    recipe: Recipe  # recipe.warmup = t: the warmup, on the subset
    subset: dict  # SubsetSpec.identity() of the warmup data
    seed: int = 0


def run_warmup(ctx: Context, cfg: WarmupConfig, subset: SubsetSpec, replicates: int) -> Run:
    run = ctx.store.run("warmup", cfg).create()
    everything = np.arange(ctx.ds.train_size)
    t = cfg.recipe.warmup

    def prepare(stage: Stage) -> StageInputs:
        seeds = replicate_seeds(cfg.seed, stage.replicate)
        return StageInputs(init=seeds["init"], seeds=StreamSeeds(seeds["order"], seeds["augment"]),
                           indices=everything,
                           early=(t, subset_of(ctx, subset, stage.replicate)) if t else None)

    with run.lock():
        stages = [run.stage(r) for r in range(replicates)]
        records = train_stage(ctx, stages, prepare, cfg.recipe, ctx.train_split(),
                              label=f"warmup t={t}")
        atomic_write_json(run.results_file, {
            "config": run.config, "rows": [r.to_json() for r in run.records()],
            "diverged": sum(r.diverged is not None for r in records)})
    return run
