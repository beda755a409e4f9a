"""IMP with weight rewinding and data-diet pre-training (Algorithm 1 of the paper).

Pre-train the dense network for t_r iterations on a subset S (optionally with noisy labels) at
the pre-training lr; then, level after level, train the masked network from w_{t_r} to the end of
the schedule on the full training set with true labels, prune 20% of the remaining weights by
global magnitude, and rewind the survivors to w_{t_r}. Level k's test accuracy is that of the
sparse network with 0.8^k of its weights.

IMP = a pre-training recipe + a level recipe + pruning. The pre-training result is its own run
(``pretrain_<hash>``, keyed by what determines w_{t_r}), so IMP runs that differ only after t_r
share it; each level is a stage ``imp_<hash>/replicate_<r>/level_<k>``. Both go through the stage
runner, which trains the replicates that are missing as one packed model.

    lthfast imp --dataset digits --subset random --size 256 --steps 20 --levels 3
    # -> runs/imp_<hash> with results.json (test_acc per replicate and level)
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from ..config import Recipe
from ..data.loader import StreamSeeds
from ..data.subsets import SubsetSpec, make_subset
from ..errors import UserError
from ..files import atomic_write_json
from ..prune.magnitude import full_masks, prune
from ..runs import Run, Stage
from ..train import checkpoint as ckpt
from .common import Context, replicate_seeds
from .stage import StageInputs, train_stage


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines w_{t_r}: the run identity of ``pretrain_<hash>``."""

    dataset: str
    recipe: Recipe  # steps = t_r
    subset: dict  # SubsetSpec.identity(): what the subset is made of, files by content
    seed: int = 0
    label_noise: float = 0.0
    noise_seed: int = 0


@dataclass(frozen=True)
class ImpConfig:
    """The identity of ``imp_<hash>``: pre-training, the level recipe, the pruning rate."""

    pretrain: PretrainConfig
    recipe: Recipe  # each level trains iterations [t_r, recipe.steps)
    prune_fraction: float = 0.2


def check_config(cfg: ImpConfig) -> None:
    t_r, total = cfg.pretrain.recipe.steps, cfg.recipe.steps
    if t_r < 0:
        raise UserError("--steps must be >= 0")
    if t_r >= total:
        raise UserError(f"--steps {t_r} must be smaller than the schedule's {total} iterations "
                        "(--train-steps)")
    if not 0 < cfg.prune_fraction < 1:
        raise UserError(f"the pruning fraction must be in (0, 1), got {cfg.prune_fraction}")


def pretrain(ctx: Context, cfg: PretrainConfig, subset: SubsetSpec,
             replicates: list[int]) -> list[dict]:
    """w_{t_r} for each replicate (K=1 state dicts), training the missing ones packed.

    Each replicate's stage keeps the subset it trained on (``subset.npy``)."""
    run = ctx.store.run("pretrain", cfg).create()
    data = ctx.train_split(cfg.label_noise, cfg.noise_seed)

    def prepare(stage: Stage) -> StageInputs:
        seeds = replicate_seeds(cfg.seed, stage.replicate)
        return StageInputs(init=seeds["init"],
                           seeds=StreamSeeds(seeds["pretrain_order"], seeds["pretrain_augment"]),
                           indices=subset_of(ctx, subset, stage.replicate))

    def artifacts(model, hooks, trained: list[Stage]):
        return {"subset": [subset_of(ctx, subset, s.replicate) for s in trained]}

    with run.lock():
        stages = [run.stage(r) for r in replicates]
        train_stage(ctx, stages, prepare, cfg.recipe, data, label="pre-train",
                    artifacts=artifacts)
        return [ckpt.load(s.file("weights.pt")) for s in stages]


def subset_of(ctx: Context, subset: SubsetSpec, replicate: int) -> np.ndarray:
    return make_subset(ctx.ds, subset.for_replicate(replicate))


def run_imp(ctx: Context, cfg: ImpConfig, subset: SubsetSpec, levels: int,
            replicates: int) -> Run:
    """Run (or finish) IMP for ``levels`` pruning levels and ``replicates`` replicates.

    A replicate whose pre-training or level diverged is not trained further: later levels
    would train from NaN weights. Its record says where it diverged."""
    check_config(cfg)
    reps = list(range(replicates))
    # pre-training first: if its weights turn out unreadable, no IMP directory is left behind
    rewind = dict(zip(reps, pretrain(ctx, cfg.pretrain, subset, reps)))
    run = ctx.store.run("imp", cfg).create()
    data = ctx.train_split()  # true labels: noise is for pre-training only
    everything = np.arange(ctx.ds.train_size)

    def prepare(stage: Stage) -> StageInputs:
        seeds = replicate_seeds(cfg.pretrain.seed, stage.replicate)
        return StageInputs(init=rewind[stage.replicate],
                           seeds=StreamSeeds(seeds["order"], seeds["augment"]),
                           indices=everything,
                           mask=level_masks(run, stage, rewind[stage.replicate],
                                            cfg.prune_fraction))

    pre = ctx.store.run("pretrain", cfg.pretrain)
    # a replicate whose pre-training diverged has NaN weights to rewind to: no level trains
    alive = [r for r in reps if pre.stage(r).record().diverged is None]
    with run.lock():
        for level in range(levels + 1):
            stages = [run.stage(r, level) for r in alive]
            records = train_stage(ctx, stages, prepare, cfg.recipe, data,
                                  start=cfg.pretrain.recipe.steps, label=f"level {level}")
            alive = [r.replicate for r in records if r.diverged is None]
        write_results(run, diverged_in_pretraining=sorted(set(reps) - set(
            r for r in reps if pre.stage(r).record().diverged is None)))
    return run


def level_masks(run: Run, stage: Stage, rewind_state: dict, fraction: float):
    """Level 0: all ones. Level k: prune the weights trained at level k-1 under its mask."""
    if stage.level == 0:
        return full_masks(rewind_state)
    prev = run.stage(stage.replicate, stage.level - 1)
    return prune(ckpt.load(prev.file("weights.pt")), ckpt.load(prev.file("mask.pt")), fraction)


def write_results(run: Run, diverged_in_pretraining: list[int]) -> None:
    """results.json: every finished level of every replicate (also those of earlier, longer
    runs), and the replicates that never reached a level because pre-training diverged."""
    atomic_write_json(run.file("results.json"), {
        "config": run.config, "rows": [r.to_json() for r in run.records()],
        "diverged_in_pretraining": diverged_in_pretraining})
