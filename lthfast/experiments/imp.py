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

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Iterator, Optional, Sequence

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


def pretrain_seeds(seed: int, replicate: int) -> tuple[int, StreamSeeds]:
    """Replicate r's pre-training seeds: its init and its data order and augmentation. The one
    derivation: ``grads`` replays pre-training bit-identically because it calls this too."""
    seeds = replicate_seeds(seed, replicate)
    return seeds["init"], StreamSeeds(seeds["pretrain_order"], seeds["pretrain_augment"])


def parent(ctx: Context, cfg, subset: SubsetSpec, level: Optional[int], replicates: int):
    """The networks an analysis starts from (``analyses.lmc.Parent``), trained if missing:
    w_{t_r} of each replicate (``cfg`` an ImpConfig or a PretrainConfig), or with ``level`` the
    rewound sparse network of that IMP level (w_{t_r} under the level's mask; ``cfg`` an
    ImpConfig). What the analyses and the LMC scores all spawn from.

    Level k's mask prunes the weights trained at level k − 1, so only levels 0 … k − 1 train
    here (none for level 0, whose mask keeps everything); level k itself never needs training.
    Replicates whose pre-training or an earlier level diverged are left out."""
    from .analyses.lmc import Parent

    pre_cfg = getattr(cfg, "pretrain", cfg)
    reps = list(range(replicates))
    pre = ctx.store.run("pretrain", pre_cfg)
    if level is None:
        states = dict(zip(reps, pretrain(ctx, pre_cfg, subset, reps)))
        return Parent(pre, [pre.stage(r) for r in reps], states, dict.fromkeys(reps))
    if level == 0:
        rewinds = dict(zip(reps, pretrain(ctx, pre_cfg, subset, reps)))
        run = ctx.store.run("imp", cfg).create()
    else:
        run = run_imp(ctx, cfg, subset, level - 1, replicates)
    alive = [r for r in reps if pre.stage(r).record().diverged is None
             and (level == 0 or (run.stage(r, level - 1).is_done()
                                 and run.stage(r, level - 1).record().diverged is None))]
    if not alive:
        raise UserError(f"every replicate diverged before level {level}; nothing to start from")
    masks, states = {}, {}
    for r in alive:
        state = rewinds[r] if level == 0 else ckpt.load(pre.stage(r).file("weights.pt"))
        stage = run.stage(r, level)
        mask = (ckpt.load(stage.file("mask.pt")) if stage.is_done() else
                level_masks(run, stage, state, cfg.prune_fraction))
        masks[r] = mask
        states[r] = {n: t * mask[n] if n in mask else t for n, t in state.items()}
    return Parent(run, [run.stage(r, level) for r in alive], states, masks)


def pretrain(ctx: Context, cfg: PretrainConfig, subset: SubsetSpec,
             replicates: list[int]) -> list[dict]:
    """w_{t_r} for each replicate (K=1 state dicts), training the missing ones packed.

    Each replicate's stage keeps the subset it trained on (``subset.npy``)."""
    states = pretrain_many(ctx, [(cfg, subset, replicates)])[0]
    return [states[r] for r in replicates]


def pretrain_many(ctx: Context, wanted: Sequence[tuple[PretrainConfig, SubsetSpec, list[int]]]
                  ) -> list[dict[int, dict]]:
    """w_{t_r} of several pre-training runs ({replicate: K=1 state dict} per entry), the missing
    stages of all of them trained as few packed models as their recipes and data allow."""
    runs = [ctx.store.run("pretrain", cfg).create() for cfg, _, _ in wanted]
    by_path = {run.path: (cfg, subset) for run, (cfg, subset, _) in zip(runs, wanted)}

    def prepare(stage: Stage) -> StageInputs:
        cfg, subset = by_path[stage.run.path]
        init, seeds = pretrain_seeds(cfg.seed, stage.replicate)
        return StageInputs(init=init, seeds=seeds, indices=subset_of(ctx, subset, stage.replicate))

    def artifacts(model, hooks, trained: list[Stage]):
        return {"subset": [subset_of(ctx, by_path[s.run.path][1], s.replicate) for s in trained]}

    def group_key(stage: Stage) -> tuple:  # packed models share a recipe shape and one split
        cfg = by_path[stage.run.path][0]
        return _shape(cfg.recipe), Context.train_split_key(cfg.label_noise, cfg.noise_seed)

    stages = unique([run.stage(r) for run, (_, _, reps) in zip(runs, wanted) for r in reps])
    with locked_runs(runs):
        for group in packable(stages, group_key):
            cfg = by_path[group[0].run.path][0]
            train_stage(ctx, group, prepare, [by_path[s.run.path][0].recipe for s in group],
                        ctx.train_split(cfg.label_noise, cfg.noise_seed), label="pre-train",
                        artifacts=artifacts)
        return [{r: ckpt.load(run.stage(r).file("weights.pt")) for r in reps}
                for run, (_, _, reps) in zip(runs, wanted)]


def subset_of(ctx: Context, subset: SubsetSpec, replicate: int) -> np.ndarray:
    return make_subset(ctx.ds, subset.for_replicate(replicate))


@dataclass(frozen=True)
class ImpJob:
    """One IMP run to do: its config, subset, levels and replicates."""

    cfg: ImpConfig
    subset: SubsetSpec
    levels: int
    replicates: int


def run_imp(ctx: Context, cfg: ImpConfig, subset: SubsetSpec, levels: int,
            replicates: int) -> Run:
    """Run (or finish) IMP for ``levels`` pruning levels and ``replicates`` replicates.

    A replicate whose pre-training or level diverged is not trained further: later levels
    would train from NaN weights. Its record says where it diverged."""
    return run_imps(ctx, [ImpJob(cfg, subset, levels, replicates)])[0]


def run_imps(ctx: Context, jobs: Sequence[ImpJob]) -> list[Run]:
    """Several IMP runs at once, packed across runs: every pre-training stage of compatible
    recipe and data in one model, then level by level every stage of every run whose level
    recipe has the same shape (model, batch, momentum, t_r and end) in one model. Fig. 2's
    5 schemes x 4 replicates x 12 levels are then 13 packed stages, not 260 runs. On a CPU the
    result is bit-identical to running the jobs one by one (tests/test_imp.py)."""
    for job in jobs:
        check_config(job.cfg)
    asked = jobs
    jobs = merged(ctx, jobs)  # requests of one run (differing in levels / replicates) as one
    # pre-training first: if its weights turn out unreadable, no IMP directory is left behind
    rewinds = pretrain_many(ctx, [(j.cfg.pretrain, j.subset, list(range(j.replicates)))
                                  for j in jobs])
    runs = [ctx.store.run("imp", job.cfg).create() for job in jobs]
    by_path = {run.path: (job, rewind) for run, job, rewind in zip(runs, jobs, rewinds)}
    data = ctx.train_split()  # true labels: noise is for pre-training only
    everything = np.arange(ctx.ds.train_size)

    def prepare(stage: Stage) -> StageInputs:
        job, rewind = by_path[stage.run.path]
        seeds = replicate_seeds(job.cfg.pretrain.seed, stage.replicate)
        return StageInputs(init=rewind[stage.replicate],
                           seeds=StreamSeeds(seeds["order"], seeds["augment"]),
                           indices=everything,
                           mask=level_masks(stage.run, stage, rewind[stage.replicate],
                                            job.cfg.prune_fraction))

    # a replicate whose pre-training diverged has NaN weights to rewind to: no level trains
    lost = [[r for r in range(job.replicates)
             if ctx.store.run("pretrain", job.cfg.pretrain).stage(r).record().diverged is not None]
            for job in jobs]
    alive = {run.path: [r for r in range(job.replicates) if r not in gone]
             for run, job, gone in zip(runs, jobs, lost)}
    with locked_runs(runs):
        for run, job in zip(runs, jobs):  # more levels or replicates asked: not finished now
            if any(not run.stage(r, level).is_done()
                   for r in alive[run.path] for level in range(job.levels + 1)):
                unfinish(run)
        for level in range(max(job.levels for job in jobs) + 1):
            stages = [run.stage(r, level) for run, job in zip(runs, jobs)
                      if level <= job.levels for r in alive[run.path]]
            for group in packable(stages, lambda s: (_shape(by_path[s.run.path][0].cfg.recipe),
                                                     by_path[s.run.path][0].cfg.pretrain.recipe.steps)):
                start = by_path[group[0].run.path][0].cfg.pretrain.recipe.steps
                records = train_stage(ctx, group, prepare,
                                      [by_path[s.run.path][0].cfg.recipe for s in group], data,
                                      start=start, label=f"level {level}")
                for stage, record in zip(group, records):
                    if record.diverged is not None:
                        alive[stage.run.path].remove(stage.replicate)
        for run, gone in zip(runs, lost):
            write_results(run, diverged_in_pretraining=gone)
    by_run = {run.path: run for run in runs}
    return [by_run[ctx.store.run("imp", job.cfg).path] for job in asked]


def merged(ctx: Context, jobs: Sequence[ImpJob]) -> list[ImpJob]:
    """One job per IMP run: levels and replicates are not part of a run's identity, so jobs
    that differ only in them are one run, done to the most levels and replicates asked."""
    by_path: dict[Path, ImpJob] = {}
    for job in jobs:
        path = ctx.store.run("imp", job.cfg).path
        seen = by_path.get(path)
        by_path[path] = job if seen is None else dataclasses.replace(
            seen, levels=max(seen.levels, job.levels),
            replicates=max(seen.replicates, job.replicates))
    return list(by_path.values())


def _shape(recipe: Recipe) -> tuple:
    """What packed stages must share (the stage runner checks it too)."""
    return recipe.model, recipe.batch_size, recipe.momentum, recipe.steps


MAX_PACKED = 20  # models in one packed group: Fig. 2's 5 schemes x 4 replicates, and a bound
# on activation memory (a K-model group holds K networks' activations at once)


def packable(stages: Sequence[Stage], key: Callable[[Stage], Hashable],
             limit: int = MAX_PACKED) -> list[list[Stage]]:
    """``stages`` grouped by ``key``, in first-seen order, at most ``limit`` a group: each group
    trains as one model (a replicate's numbers do not depend on its group, so any split works)."""
    groups: dict[Hashable, list[Stage]] = {}
    for stage in stages:
        groups.setdefault(key(stage), []).append(stage)
    return [group[i : i + limit] for group in groups.values()
            for i in range(0, len(group), limit)]


def unique(stages: Sequence[Stage]) -> list[Stage]:
    """Each stage once (IMP runs that differ only after t_r share their pre-training)."""
    seen: dict[Path, Stage] = {}
    for stage in stages:
        seen.setdefault(stage.path, stage)
    return list(seen.values())


@contextlib.contextmanager
def locked_runs(runs: Sequence[Run]) -> Iterator[None]:
    """Every distinct run's lock, taken in path order: two processes packing overlapping sets
    of runs cannot each hold a lock the other waits for."""
    with contextlib.ExitStack() as stack:
        for path in sorted({run.path for run in runs}):
            stack.enter_context(next(run for run in runs if run.path == path).lock())
        yield


def level_masks(run: Run, stage: Stage, rewind_state: dict, fraction: float):
    """Level 0: all ones. Level k: prune the weights trained at level k-1 under its mask."""
    if stage.level == 0:
        return full_masks(rewind_state)
    prev = run.stage(stage.replicate, stage.level - 1)
    return prune(ckpt.load(prev.file("weights.pt")), ckpt.load(prev.file("mask.pt")), fraction)


def unfinish(run: Run) -> None:
    """A run that is asked for more (levels, replicates) is unfinished until they are done:
    its ``results.json`` (which ``report`` reads as "finished", and which is rebuilt from the
    stages' records at the end) goes first. No result is lost: every level keeps its own."""
    run.results_file.unlink(missing_ok=True)


def write_results(run: Run, diverged_in_pretraining: list[int]) -> None:
    """results.json: every finished level of every replicate (also those of earlier, longer
    runs), and the replicates that never reached a level because pre-training diverged."""
    atomic_write_json(run.results_file, {
        "config": run.config, "rows": [r.to_json() for r in run.records()],
        "diverged_in_pretraining": diverged_in_pretraining})
