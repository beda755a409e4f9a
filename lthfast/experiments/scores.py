"""Per-example scores of the training set: the registry, the ensemble runner, EL2N (Paul et al.
2021), forgetting (Toneva et al.) and LMC scores; further scores live one file each in
``lthfast/experiments/scorers/`` (GraNd, AUM, training loss, prediction variance).

Scores are registered by name; each trains K networks from different inits (seeds of their own,
independent of the IMP replicates) as one packed model through the stage runner, saves each
member's per-example values beside its weights (``replicate_<m>/<score>.npy``) and writes their
mean as float32 ``scores.npy`` in dataset order (one value per train example) in a run directory
keyed by the config hash. Each entry says which end is easy (``ScoreKind.easy``): lower is
easier for EL2N, forgetting and LMC; a higher AUM margin is easier.

- ``el2n``: after t iterations, ‖softmax(f(x)) − onehot(y)‖₂ per example, averaged over K.
  Defaults per dataset from appendix A (ResNet-20 / 7,800 iterations for CIFAR-10, ...). The
  logits are computed in fp32 even where training uses bf16 autocast: bf16 would coarsen the
  small margins that separate the easiest examples.
- ``forgetting``: during training, each time an example is in a mini-batch, a change from
  correctly to incorrectly classified is a forgetting event; the score is the count, averaged
  over K. An example never classified correctly ranks hardest: it gets one more than the
  largest count of that model.

EL2N and forgetting scores with label noise use the noisy labels (appendix A: the noisy examples
then rank as hard). LMC scores use them as ``lthfast lmc`` does: the parent pre-trains on them
(label noise is for pre-training only), its children train and their barriers are measured on the
true labels.

    lthfast scores el2n --dataset digits --models 4 --steps 60
    # -> runs/el2n_<hash>/scores.npy
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..config import Preset, Recipe
from ..data.loader import DeviceData, StreamSeeds
from ..errors import UserError
from ..files import atomic_save_npy
from ..models.packed import PackedResNet
from ..registry import Registry
from ..runs import Run, Stage, register_kind
from ..train.evaluate import el2n, predict
from ..train.hooks import Hook
from .common import SCORE_SEEDS, Context, replicate_seeds
from .stage import StageInputs, train_stage


@dataclass(frozen=True)
class ScoreConfig:
    """The identity of ``<score>_<hash>``: K networks trained by ``recipe`` for recipe.steps."""

    score: str
    dataset: str
    recipe: Recipe
    models: int  # K (lmc: replicates of the parent)
    seed: int = 0
    label_noise: float = 0.0
    noise_seed: int = 0
    parent: Optional[Recipe] = None  # lmc: the parent's pre-training, up to the spawn step
    children: int = 0  # lmc: children per replicate
    # lmc: the BatchNorm kind of the barriers (lmc.BN_KINDS); None for the others, so their
    # hashes stay. Set for every lmc score, so LMC scores made before it existed (recomputed
    # statistics) never share a hash with the authors' averaged kind.
    bn: Optional[str] = None


@dataclass(frozen=True)
class ScoreKind:
    """A registered score: its default length and models, and either an ensemble (the hooks it
    trains with and each trained member's per-example values, K arrays of N) or a ``compute``
    of its own (ctx, config, run) -> N values."""

    default_steps: Callable[[Preset], int]
    per_model: Optional[Callable[[Context, PackedResNet, Sequence[Hook], DeviceData],
                                 Sequence[np.ndarray]]] = None
    # (ctx, config, the training data, K) -> the hooks a K-model group trains with
    hooks: Callable[[Context, "ScoreConfig", DeviceData, int], Sequence[Hook]] = \
        lambda ctx, cfg, data, k: ()
    compute: Optional[Callable[[Context, "ScoreConfig", Run], np.ndarray]] = None
    default_models: int = 10
    easy: str = "low"  # which scores are easy: "low" (EL2N, forgetting, ...) or "high" (AUM)
    min_steps: int = 1  # 0 where the score is read from the untrained networks (GraNd at init)
    reference: str = ""  # where the score comes from, for people (README, --help)

    def __post_init__(self):
        if self.easy not in ("low", "high"):
            raise ValueError(f"ScoreKind.easy is 'low' or 'high', got {self.easy!r}")


SCORES = Registry("score", on_register=register_kind)  # name -> ScoreKind; each a run kind


class ForgettingCounter(Hook):
    """Counts forgetting events per (model, example) on the device, without host syncs.

    A batch that crosses an epoch boundary (or a subset smaller than the batch) can hold an
    example more than once: its presentations count in order (the second compares with the
    first), which a plain gather/scatter would not do (both would compare with the stored
    state, and which write wins is undefined on CUDA). So the batch is stably sorted by example,
    each presentation compares with the one before it, and only an example's last presentation
    is written back: the others write to a spare column ``n``, never read.
    """

    def __init__(self, k: int, n: int, device: torch.device):
        self.n = n
        self.last_correct = torch.zeros(k, n + 1, dtype=torch.bool, device=device)
        self.ever_correct = torch.zeros(k, n + 1, dtype=torch.bool, device=device)
        self.forgotten = torch.zeros(k, n, dtype=torch.int32, device=device)

    def on_batch(self, step: int, logits: torch.Tensor, y: torch.Tensor,
                 idx: torch.Tensor) -> None:
        idx, order = torch.sort(idx.T, dim=1, stable=True)  # K×B, presentations of one example
        correct = (logits.argmax(-1) == y).T.gather(1, order)  # adjacent, in batch order
        repeat = torch.zeros_like(correct)
        repeat[:, 1:] = idx[:, 1:] == idx[:, :-1]  # not the example's first presentation here
        before = torch.zeros_like(correct)
        before[:, 1:] = correct[:, :-1]
        prev = torch.where(repeat, before, self.last_correct.gather(1, idx))
        self.forgotten.scatter_add_(1, idx, (prev & ~correct).int())
        spare = torch.full_like(idx, self.n)
        last = torch.ones_like(correct)
        last[:, :-1] = ~repeat[:, 1:]  # the next presentation is of another example
        self.last_correct.scatter_(1, torch.where(last, idx, spare), correct)
        self.ever_correct.scatter_(1, torch.where(correct, idx, spare), correct)

    def state_dict(self) -> dict:
        return {"last_correct": self.last_correct[:, : self.n],
                "ever_correct": self.ever_correct[:, : self.n], "forgotten": self.forgotten}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            getattr(self, name)[:, : self.n].copy_(value)

    def per_model(self) -> np.ndarray:
        """K×N: each model's counts; an example it never got right scores its largest count + 1."""
        counts = self.forgotten.float()
        top = counts.max(dim=1, keepdim=True).values + 1
        return torch.where(~self.ever_correct[:, : self.n], top, counts).cpu().numpy()

    def scores(self) -> np.ndarray:
        return self.per_model().mean(0)


class PresentationMean(Hook):
    """The mean over an example's presentations in training (each time a mini-batch draws it)
    of a per-example value of the training forward's logits, per model: AUM's margin, the
    training loss. No extra pass: it reads the logits the step computed (augmented images,
    BatchNorm in train mode, as the loss saw them). Sums are float64 scatter-adds, so repeats
    within a batch each count."""

    def __init__(self, k: int, n: int, device: torch.device,
                 value: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.value = value  # (logits B×K×C float32, labels B×K) -> B×K
        self.total = torch.zeros(k, n, dtype=torch.float64, device=device)
        self.count = torch.zeros(k, n, dtype=torch.int64, device=device)

    def on_batch(self, step: int, logits: torch.Tensor, y: torch.Tensor,
                 idx: torch.Tensor) -> None:
        values = self.value(logits.float(), y).T.double()  # K×B
        self.total.scatter_add_(1, idx.T, values)
        self.count.scatter_add_(1, idx.T, torch.ones_like(idx.T))

    def state_dict(self) -> dict:
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.total.copy_(state["total"])
        self.count.copy_(state["count"])

    def per_model(self, hardest: str, name: str) -> np.ndarray:
        """K×N means. An example a model never drew (fewer steps than an epoch) has no value:
        it gets that model's hardest value (``hardest``: "max" or "min"), as forgetting ranks
        never-learned examples hardest, and a warning says how many."""
        total, count = self.total.cpu().numpy(), self.count.cpu().numpy()
        drawn = count > 0
        out = np.where(drawn, total / np.maximum(count, 1), np.nan)
        undrawn = int((~drawn).sum())
        if undrawn:
            print(f"warning: {name}: {undrawn} (model, example) pairs were never drawn in "
                  f"training; they score as the model's hardest (train at least one epoch)",
                  file=sys.stderr)
            fill = getattr(np, f"nan{hardest}")(out, axis=1, keepdims=True)
            out = np.where(drawn, out, fill)
        return out


def forgetting_from_sequence(correct: list[bool]) -> int:
    """Reference for one example's presentations: the number of correct -> incorrect changes."""
    return sum(1 for a, b in zip(correct, correct[1:]) if a and not b)


def el2n_per_model(ctx: Context, model: PackedResNet, hooks, data: DeviceData):
    logits = predict(model, data, amp=False)  # fp32 logits, also on a bf16 GPU (module doc)
    return el2n(logits, data.labels).cpu().numpy()


def forgetting_per_model(ctx: Context, model: PackedResNet, hooks, data: DeviceData):
    return hooks[0].per_model()


def lmc_scores(ctx: Context, cfg: ScoreConfig, run: Run) -> np.ndarray:
    """Definition D.1: the per-example train loss barrier of children spawned from the dense
    network at iteration t (all data), averaged over instances: ``children`` choose 2 pairs in
    each of ``models`` replicates (3 pairs × 2 replicates = 6 by default, as in appendix D.2).
    The parent is the all-data pre-training ``imp --subset all --steps t`` uses; the barriers
    live in its LMC branch, so ``lthfast lmc`` with the same settings shares them."""
    from ..data.subsets import SubsetSpec
    from .analyses import lmc
    from .imp import PretrainConfig, parent as spawn_parent

    everything = SubsetSpec(kind="all")
    pre_cfg = PretrainConfig(dataset=cfg.dataset, recipe=cfg.parent,
                             subset=everything.identity(), seed=cfg.seed,
                             label_noise=cfg.label_noise, noise_seed=cfg.noise_seed)
    reps = list(range(cfg.models))
    parent = spawn_parent(ctx, pre_cfg, everything, None, cfg.models)
    pre = parent.run
    lcfg = lmc.LmcConfig(recipe=cfg.recipe, start=cfg.parent.steps, children=cfg.children,
                         seed=cfg.seed, bn=cfg.bn or "recompute")
    summary = lmc.write_summary(parent, lcfg, lmc.run(ctx, parent, lcfg))
    # replicates whose children diverged have NaN barriers: the score is the mean over the rest
    arrays = [a for a in (pre.stage(r, None, lcfg.branch).load("loss_barrier") for r in reps)
              if np.all(np.isfinite(a))]
    if not arrays:
        raise UserError(f"lmc scores: the children of every replicate diverged (see "
                        f"'diverged' in {summary}); no barrier to rank by")
    return np.mean(arrays, axis=0)


# EL2N is read early in training (appendix A); forgetting looks at the whole course of it; LMC
# scores are taken before the onset of linear mode connectivity (appendix D.2; default t*, what
# Fig. 11b uses for CINIC-10; Fig. 11a spawns CIFAR-100's at 1,600: its sweep sets --score-steps).
SCORES.register("el2n")(ScoreKind(default_steps=lambda p: p.el2n_steps, per_model=el2n_per_model,
                                  reference="Paul et al. 2021"))
SCORES.register("forgetting")(ScoreKind(
    default_steps=lambda p: p.train_steps, per_model=forgetting_per_model,
    hooks=lambda ctx, cfg, data, k: [ForgettingCounter(k, ctx.ds.train_size, ctx.device)],
    reference="Toneva et al. 2019"))
SCORES.register("lmc")(ScoreKind(default_steps=lambda p: p.t_star, compute=lmc_scores,
                                 default_models=2, reference="Paul et al. 2022, Def. D.1"))


def check_score_request(models: int, steps: int, min_steps: int = 1) -> None:
    if models < 1:
        raise UserError("--models must be >= 1")
    if steps < min_steps:
        raise UserError(f"--steps must be >= {min_steps}")


def train_members(ctx: Context, cfg: ScoreConfig, run: Run, members: Sequence[int]) -> None:
    """Train the ensemble members ``members`` of ``run`` that are not done, packed as one
    model, and save each one's per-example values (``replicate_<m>/<score>.npy``). A member's
    values do not depend on which members it was packed with (tests train some alone)."""
    kind = SCORES.lookup(cfg.score)
    data = ctx.train_split(cfg.label_noise, cfg.noise_seed)  # noisy examples score as hard
    everything = np.arange(ctx.ds.train_size)

    def prepare(stage: Stage) -> StageInputs:
        seeds = replicate_seeds(cfg.seed, stage.replicate, domain=SCORE_SEEDS)
        return StageInputs(init=seeds["init"], seeds=StreamSeeds(seeds["order"], seeds["augment"]),
                           indices=everything)

    stages = [run.stage(m) for m in members]
    train_stage(ctx, stages, prepare, cfg.recipe, data, label=f"{cfg.score} K={len(stages)}",
                hooks=lambda k: kind.hooks(ctx, cfg, data, k),
                artifacts=lambda model, hooks, _: {
                    cfg.score: kind.per_model(ctx, model, hooks, data)})


def easy_is_high(name: str) -> bool:
    """Whether high values of the registered score ``name`` are the easy ones (AUM)."""
    return SCORES.lookup(name).easy == "high"


def compute_scores(ctx: Context, cfg: ScoreConfig) -> Path:
    """Train the K networks (or reuse them) and write ``scores.npy``; returns its path."""
    kind = SCORES.lookup(cfg.score)
    check_score_request(cfg.models, cfg.recipe.steps, kind.min_steps)
    if cfg.parent is not None and cfg.parent.steps >= cfg.recipe.steps:
        # children train [t, T): from t >= T nothing, and every barrier would be 0
        raise UserError(f"lmc scores: the spawn step {cfg.parent.steps} must be smaller than "
                        f"the {cfg.recipe.steps} iterations of training")
    run = ctx.store.run(cfg.score, cfg).create()

    with run.lock():
        if not run.is_done() and kind.compute is None:
            train_members(ctx, cfg, run, range(cfg.models))
        if not run.is_done() and kind.compute is not None:
            scores = kind.compute(ctx, cfg, run)
            if scores.shape != (ctx.ds.train_size,) or not np.all(np.isfinite(scores)):
                raise UserError(f"{cfg.score} scores are not finite (training diverged?); see "
                                f"{run.path}")
            atomic_save_npy(run.scores_file, scores.astype(np.float32))
            run.mark_done({"score": cfg.score, "models": cfg.models})
        if not run.is_done():
            members = [run.stage(m) for m in range(cfg.models)]
            records = [m.record() for m in members]
            if any(r.diverged for r in records):
                raise UserError(f"{cfg.score} scores are not finite (training diverged); see "
                                f"{run.path}/replicate_*/metrics.jsonl")
            scores = np.mean([np.load(m.file(f"{cfg.score}.npy")) for m in members], axis=0)
            if scores.shape != (ctx.ds.train_size,) or not np.all(np.isfinite(scores)):
                raise UserError(f"{cfg.score} scores are not finite (training diverged?); see "
                                f"{run.path}/replicate_*/metrics.jsonl")
            atomic_save_npy(run.scores_file, scores.astype(np.float32))
            run.mark_done({"score": cfg.score, "models": cfg.models})
    return run.scores_file


from . import scorers  # noqa: E402,F401  (registers every score in lthfast/experiments/scorers/)
