"""Frozen configuration: dataset presets (the paper's Table 1) and hashing of run configs.

A preset holds every per-dataset hyperparameter of Table 1 plus the EL2N defaults of appendix A.
``digits`` and ``synthetic`` presets are scaled down so a CPU finishes an IMP run in a minute,
keeping the paper's proportions where they matter to its comparisons:

- t* is a small fraction of T. The paper's t*/T is 0.64% (CIFAR-10: 400 of 62,400), 1.3%
  (CIFAR-100) and 2.6% (CINIC-10); ours is 2% (digits: 4 of 200). IMP levels train [t_r, T), so a
  t* of 10% of T (these presets' old 20 of 200) gave every rewound level 10% fewer steps than
  t_r = 0 in a still under-trained regime, biasing the rewind comparison toward initialisation
  (on a harder synthetic set t_r = 0 then "won" by 3-7 points; at a 4x longer T it did not).
- A schedule of a fixed number of epochs: synthetic sets come in any size, so the synthetic
  preset's T is ``SMALL_EPOCHS`` passes over its training set (digits': 200 steps of 64 over
  1,438 examples, 8.9 epochs), with drops at 50% / 75% of T, t* at 2% of T and the EL2N score at
  30% of T (digits: 60 of 200), all scaled with the set's size. A variant's size comes from its
  name (``synthetic:train=2000,...``, see ``lthfast.data.sources.synthetic``); plain
  ``synthetic`` is the default 5,000 examples.

Runs keep their meaning across preset changes: the values a run used (T, t_r, milestones) are in
its config, hence its hash; changing a preset makes new runs, it never relabels old ones.
``Recipe`` is how any stage trains (model, batch, schedule, momentum, weight decay, steps); the
presets make the recipes of pre-training, IMP levels and score ensembles.

    python -c "from lthfast.config import PRESETS; print(PRESETS['cifar10'])"
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from .errors import UserError
from .train.schedule import Schedule


@dataclass(frozen=True)
class Preset:
    """Table 1 of the paper, one column."""

    model: str = field(metadata={"help": "network, e.g. resnet20"})
    batch_size: int = field(metadata={"help": "batch size in pre-training and training"})
    pretrain_lr: float = field(metadata={"help": "lr for the first t_r iterations (pre-training)"})
    lr: float = field(metadata={"help": "lr of the training schedule"})
    milestones: tuple[int, ...] = field(
        metadata={"help": "iterations where lr is multiplied by gamma"})
    train_steps: int = field(metadata={"help": "total iterations T of the training schedule"})
    t_star: int = field(metadata={"help": "t*: the smallest rewind step giving matching tickets"})
    el2n_model: str = field(metadata={"help": "network for EL2N scores (appendix A)"})
    el2n_steps: int = field(metadata={"help": "iterations before EL2N is computed"})
    momentum: float = 0.9
    weight_decay: float = 1e-4
    gamma: float = 0.1
    prune_fraction: float = 0.2


PRESETS: dict[str, Preset] = {
    "cifar10": Preset("resnet20", 128, 0.4, 0.1, (31200, 46800), 62400, 400, "resnet20", 7800),
    "cifar100": Preset("resnet32", 128, 0.4, 0.1, (31200, 46800), 62400, 800, "resnet32", 7800),
    "cinic10": Preset("resnet56", 256, 0.1, 0.1, (15625, 23440), 31250, 800, "resnet56", 8000),
    # Not in the paper: small enough for a CPU. Same shape of schedule (drops at 50% / 75%),
    # t* at 2% of T (see the module docstring).
    "digits": Preset("resnet8", 64, 0.2, 0.1, (100, 150), 200, 4, "resnet8", 60),
}

SMALL_EPOCHS = 9  # passes over a synthetic set in its preset's T (digits: 200 * 64 / 1438 = 8.9)


def small_preset(train_size: int, epochs: float = SMALL_EPOCHS, batch_size: int = 64) -> Preset:
    """The CPU preset of a set of ``train_size`` examples: T = ``epochs`` passes, drops at 50% /
    75% of T, t* at 2% and the EL2N score at 30% of T (digits' proportions)."""
    steps = max(8, round(epochs * train_size / batch_size))
    return Preset("resnet8", batch_size, 0.2, 0.1, (round(steps / 2), round(steps * 3 / 4)),
                  steps, max(1, round(0.02 * steps)), "resnet8", max(1, round(0.3 * steps)))


def _synthetic_preset(options) -> Preset:
    from .data.sources.synthetic import SyntheticSpec

    return small_preset(SyntheticSpec.parse(options).train)


# Presets computed from a dataset name's options (``synthetic:train=2000``): source -> function
SIZED_PRESETS = {"synthetic": _synthetic_preset}
PRESETS["synthetic"] = _synthetic_preset(None)  # the default 5,000 examples: T = 703


def preset_for(dataset: str) -> Preset:
    from .data.sources import split_name

    kind, options = split_name(dataset)
    if kind in SIZED_PRESETS:
        return SIZED_PRESETS[kind](options)
    if dataset not in PRESETS:
        raise UserError(f"no preset for dataset '{dataset}' (known: {', '.join(PRESETS)})")
    return PRESETS[dataset]


@dataclass(frozen=True)
class WarmupDesign:
    """Appendix A's learning-rate warmup experiment: batch, peak lr, epochs, drops (epochs)."""

    batch_size: int
    lr: float
    epochs: int = 160
    drops: tuple[int, ...] = (80, 120)


# The paper runs it on CIFAR-10 only; digits and synthetic are scaled for a CPU (batch 128,
# the same lr per example: 3.2 / 1024 × 128 = 0.4).
WARMUP_DESIGNS: dict[str, WarmupDesign] = {
    "cifar10": WarmupDesign(1024, 3.2),
    "digits": WarmupDesign(128, 0.4),
    "synthetic": WarmupDesign(128, 0.4),
}


def warmup_recipe(dataset: str, train_size: int, warmup: int, batch_size: Optional[int] = None,
                  lr: Optional[float] = None, train_steps: Optional[int] = None) -> Recipe:
    """The warmup design's recipe: linear warmup over ``warmup`` iterations, 160 epochs (as
    iterations of the given batch), ×0.1 at epochs 80 and 120 (at the same fractions when
    ``train_steps`` shortens it)."""
    from .data.sources import split_name

    kind = split_name(dataset)[0]  # a synthetic variant has synthetic's design
    if kind not in WARMUP_DESIGNS:
        raise UserError(f"the warmup design (appendix A) is for {', '.join(WARMUP_DESIGNS)}; "
                        f"not {dataset}")
    design = WARMUP_DESIGNS[kind]
    batch = batch_size or design.batch_size
    total = train_steps or round(design.epochs * train_size / batch)
    milestones = tuple(round(total * d / design.epochs) for d in design.drops)
    return Recipe(preset_for(dataset).model, batch, lr or design.lr, milestones, total,
                  warmup=warmup)


def scaled_milestones(preset: Preset, train_steps: int) -> tuple[int, ...]:
    """Milestones at the same fractions of a shortened (or lengthened) schedule."""
    if train_steps == preset.train_steps:
        return preset.milestones
    return tuple(round(m * train_steps / preset.train_steps) for m in preset.milestones)


@dataclass(frozen=True)
class Recipe:
    """How a network is trained: the one hyperparameter type of every training stage.

    A stage trains iterations [start, ``steps``) of this schedule: pre-training runs [0, t_r) at
    the pre-training lr, an IMP level [t_r, T) at the training lr, a score ensemble [0, t).
    """

    model: str = field(metadata={"help": "network, e.g. resnet20"})
    batch_size: int = field(metadata={"help": "examples per iteration and model"})
    lr: float = field(metadata={"help": "peak learning rate"})
    milestones: tuple[int, ...] = field(
        metadata={"help": "iterations where lr is multiplied by gamma"})
    steps: int = field(metadata={"help": "the iteration the stage trains up to (exclusive)"})
    gamma: float = 0.1
    warmup: int = field(default=0, metadata={"help": "linear lr warmup over this many iterations"})
    momentum: float = 0.9
    weight_decay: float = 1e-4

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.lr, tuple(self.milestones), self.gamma, self.warmup)


def pretrain_recipe(preset: Preset, steps: int) -> Recipe:
    """Pre-training: t_r iterations at the pre-training lr (same milestones as the full
    schedule)."""
    return Recipe(preset.model, preset.batch_size, preset.pretrain_lr, preset.milestones, steps,
                  preset.gamma, 0, preset.momentum, preset.weight_decay)


def train_recipe(preset: Preset) -> Recipe:
    """An IMP level (or any full training): the schedule of Table 1 up to T."""
    return Recipe(preset.model, preset.batch_size, preset.lr, preset.milestones,
                  preset.train_steps, preset.gamma, 0, preset.momentum, preset.weight_decay)


def score_recipe(preset: Preset, steps: int) -> Recipe:
    """A score ensemble: the score network on the training schedule, stopped after ``steps``."""
    return dataclasses.replace(train_recipe(preset), model=preset.el2n_model, steps=steps)


@dataclass(frozen=True)
class Overrides:
    """The small CPU flags shared by imp, scores and analyses: each replaces its preset value."""

    model: Optional[str] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    pretrain_lr: Optional[float] = None
    train_steps: Optional[int] = None

    def apply(self, preset: Preset) -> Preset:
        changes = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        for key in ("batch_size", "train_steps"):
            if key in changes and changes[key] < 1:
                raise UserError(f"--{key.replace('_', '-')} must be >= 1")
        for key in ("lr", "pretrain_lr"):
            if key in changes and not changes[key] > 0:
                raise UserError(f"--{key.replace('_', '-')} must be > 0")
        if "train_steps" in changes:
            changes["milestones"] = scaled_milestones(preset, changes["train_steps"])
        return dataclasses.replace(preset, **changes)
