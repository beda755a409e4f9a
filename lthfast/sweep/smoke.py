"""Smoke scale: any sweep file's grid, on small stand-in datasets, small enough for a CPU.

``smoke_sweep`` is a plain function from a loaded sweep to another sweep with the same command,
the same grid axes and the same number of values on every axis (so the same number of runs),
but every value moved to a tiny scale. Each full-scale dataset has its own stand-in, so the
figures of one dataset never merge with another's (a ``dataset`` axis maps value by value):

| full scale | stand-in (8x8 images, ~1,440 train examples, resnet8) | at smoke scale, test acc. |
|---|---|---|
| cifar10  | ``digits`` (10 classes, real handwritten digits) | ~90% |
| cifar100 | ``synthetic:classes=20,noise=25,size=8,test=360,train=1440`` (more classes) | ~50% |
| cinic10  | ``synthetic:size=8,test=360,train=1440`` (10 classes, noise 40) | ~80% |

(test accuracy after the 40-iteration schedule, 2 IMP levels; digits and synthetic sets stay as
they are.) Every stand-in is about digits' size, so a point costs what a digits point costs, and
its preset (``lthfast.config``) sets the smoke schedule: T / 5 iterations (40), its t* (4), its
EL2N steps / 5 (12). Iteration counts keep their fraction of the quantity they count (t_r of
t*, a warmup of the whole schedule, score steps of the score's default); subset sizes are
mapped in order onto 40 to 1,000 examples (an affine map: the same size gives the same smoke
size in every file); levels keep their fraction of 12 (2 for the paper's 12); replicates and
score ensembles shrink to 1-2; LMC children stay as the paper has them (3: imp --rank-by lmc's
score uses 3, and `scores lmc` must make the same score run). Values of one axis that were
distinct stay distinct (a collision is moved up by one step), so every axis still varies. Cost
flags that a file leaves at their full-scale default (t_r = t*, 10 EL2N networks, 12 levels,
...) are set too. The result is checked point by point like any sweep file.

    lthfast sweep sweeps/fig2_baselines_cifar10.toml --smoke   # 3 runs, ~20 s on 2 CPU cores
    lthfast sweep sweeps/fig2_3_cifar100.toml --smoke --dry-run # the 18 smoke commands
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import UserError

DATASET = "digits"  # cifar10's stand-in, and the default
# Each full-scale dataset's stand-in (see the module docstring): 8x8, about digits' size.
STAND_INS = {"cifar10": DATASET,
             "cifar100": "synthetic:classes=20,noise=25,size=8,test=360,train=1440",
             "cinic10": "synthetic:size=8,test=360,train=1440"}
SHRINK = 5  # the smoke schedule: the stand-in's T and EL2N steps / SHRINK
# digits' smoke schedule (every stand-in's: a test checks it)
TRAIN_STEPS = 40  # T: 1/5 of the digits preset's 200, so a level trains in about a second
T_STAR = 4  # t* on that schedule (the preset's t*: 2% of its T)
SCORE_STEPS = 12  # iterations of a score ensemble (digits' default 60, / 5)
LEVELS = 2  # IMP levels, for the paper's 12
FULL_LEVELS = 12
SIZE_MIN, SIZE_MAX, SIZE_STEP = 40, 1000, 10  # subsets of digits' 10 classes (~144 each)
# Train-set sizes of the full-scale datasets (sizes keep their fraction of it); digits: its split.
TRAIN_SIZE = {"cifar10": 50_000, "cifar100": 50_000, "cinic10": 180_000}
# children are not capped: imp --rank-by lmc scores with 3 children (the LMC score's fixed
# default), so a capped `scores lmc` would be another score run, a second Fig. 10 panel.
CAPS = {"replicates": 1, "models": 2, "score_models": 2, "coherence_batches": 4,
        "batch_size": 64}


def small(dataset: str) -> bool:
    """A CPU-sized set (digits, a synthetic variant): it is its own stand-in."""
    from ..data.sources import split_name

    return split_name(dataset)[0] in ("digits", "synthetic")


def stand_in(dataset: str) -> str:
    """The small dataset a full-scale one runs on at smoke scale."""
    if small(dataset):
        return dataset
    if dataset not in STAND_INS:
        raise UserError(f"no smoke scale for dataset '{dataset}' (known: "
                        f"{', '.join(STAND_INS)}, digits, synthetic)")
    return STAND_INS[dataset]


def train_size(dataset: str) -> int:
    from ..data.sources import split_name
    from ..data.sources.synthetic import SyntheticSpec

    if dataset in TRAIN_SIZE:
        return TRAIN_SIZE[dataset]
    kind, options = split_name(dataset)
    return SyntheticSpec.parse(options).train if kind == "synthetic" else 1_438  # digits


@dataclass(frozen=True)
class Scale:
    """Full scale -> smoke scale factors of one sweep, from its (first) dataset's preset, and
    the smoke schedule from its stand-in's preset."""

    command: str
    pretrain: float  # t_r and spawn steps: t_star / t*
    train: float  # whole-schedule iterations: train_steps / T
    score: float  # score ensemble iterations: score_steps / the preset's EL2N steps
    size: float  # examples: smoke examples per full-scale example
    size_base: int  # examples added to every non-zero size (0 where the dataset is small)
    dataset: str = DATASET  # the stand-in
    model: str = "resnet8"  # the stand-in's network
    train_steps: int = TRAIN_STEPS  # the smoke schedule: the stand-in's T / SHRINK
    t_star: int = T_STAR  # the stand-in's t*
    score_steps: int = SCORE_STEPS  # the stand-in's EL2N steps / SHRINK

    def examples(self, value: int) -> int:
        return 0 if value == 0 else min(SIZE_MAX, self.size_base + round(value * self.size))

    @property
    def schedule(self) -> tuple:
        return (self.model, self.train_steps, self.t_star, self.score_steps)

    @classmethod
    def of(cls, command: str, dataset: str) -> "Scale":
        from ..config import WARMUP_DESIGNS, preset_for, warmup_recipe
        from ..data.sources import split_name

        target = stand_in(dataset)
        mine = preset_for(target)
        steps, t_star = round(mine.train_steps / SHRINK), mine.t_star
        score_steps = round(mine.el2n_steps / SHRINK)
        if not small(dataset) and train_size(target) <= SIZE_MAX:
            raise UserError(f"the smoke stand-in {target} has {train_size(target)} training "
                            f"examples: too few for subsets of up to {SIZE_MAX}")
        preset = preset_for(dataset)
        # warmup trains appendix A's design (160 epochs), not the preset's schedule
        warmup = command == "warmup" and split_name(dataset)[0] in WARMUP_DESIGNS
        total = (warmup_recipe(dataset, train_size(dataset), 0).steps if warmup
                 else preset.train_steps)
        # Sizes: an affine map SIZE_MIN + v * (SIZE_MAX - SIZE_MIN) / N, so that the paper's
        # sizes (256 apart at least) stay distinct and in order, and the same size maps to the
        # same smoke size in every file (fig9's subsets are fig2_3's); a small set stays as it is.
        keep_sizes = small(dataset)
        return cls(command, t_star / preset.t_star, steps / total,
                   score_steps / preset.el2n_steps,
                   1.0 if keep_sizes else (SIZE_MAX - SIZE_MIN) / train_size(dataset),
                   0 if keep_sizes else SIZE_MIN, target, mine.model, steps, t_star,
                   score_steps)


def scaled(value: int, factor: float, floor: int = 1, cap: int | None = None) -> int:
    """``value * factor`` rounded; 0 stays 0 and anything else stays >= ``floor``."""
    if value == 0:
        return 0
    out = max(floor, round(value * factor))
    return out if cap is None else min(out, cap)


def refused(name: str) -> Callable:
    def rule(value: Any, scale: Scale) -> Any:
        raise UserError(f"--{name.replace('_', '-')} names a file of the full-scale dataset; "
                        "a sweep that sets it has no smoke scale")
    return rule


def keep(value: Any, scale: Scale) -> Any:
    return value


def capped(name: str) -> Callable:
    return lambda value, scale: min(value, CAPS[name])


# Every field of every request and every runtime flag a sweep may set has a rule (a test checks
# it), so a new flag must say how it shrinks. Rules map one value; (rule, step of a collision).
RULES: dict[str, tuple[Callable[[Any, Scale], Any], int]] = {
    "dataset": (lambda v, s: stand_in(v), 0),  # value by value: each its own stand-in
    "model": (lambda v, s: s.model, 0),  # the stand-in preset's network (8x8 images)
    "batch_size": (capped("batch_size"), 1),
    # t_r (imp-like commands) or a score ensemble's iterations (scores)
    "steps": (lambda v, s: scaled(v, s.score if s.command == "scores" else s.pretrain), 1),
    "score_steps": (lambda v, s: scaled(v, s.score), 1),
    "train_steps": (lambda v, s: scaled(v, s.train, floor=s.train_steps // 4), 1),
    "warmup": (lambda v, s: scaled(v, s.train, floor=2), 1),  # a 1-step warmup is none
    "eval_every": (lambda v, s: scaled(v, s.train), 1),
    "coherence_every": (lambda v, s: scaled(v, s.train), 1),
    "levels": (lambda v, s: scaled(v, LEVELS / FULL_LEVELS), 1),
    "level": (lambda v, s: scaled(v, LEVELS / FULL_LEVELS), 1),
    "size": (lambda v, s: s.examples(v), SIZE_STEP),
    "eval_size": (lambda v, s: s.examples(v), SIZE_STEP),
    "offset": (lambda v, s: s.examples(v) - s.size_base if v else 0, 1),
    **{name: (capped(name), 1) for name in CAPS if name != "batch_size"},
    "subset_file": (refused("subset_file"), 0), "scores": (refused("scores"), 0),
    **{name: (keep, 0) for name in (
        "seed", "label_noise", "noise_seed", "lr", "pretrain_lr", "kind", "subset",
        "subset_seed", "shared_subset", "class_balanced", "rank_by", "alphas", "prune_fraction",
        "bn", "eval_subset", "children",
        "deterministic", "compile", "loader", "checkpoint_every", "threads")},
    "cuda_graph": (lambda v, s: False, 0),  # a smoke sweep runs on the CPU: no CUDA graphs
}
# Flags whose default stands for an expensive full-scale value (None: the preset's): set at
# smoke scale when a file leaves them out. Defaults that are numbers go through their rule.


def implicit(command: str, scale: Scale) -> dict:
    base = {"steps": scale.t_star, "train_steps": scale.train_steps,
            "score_models": CAPS["score_models"], "score_steps": scale.score_steps,
            "models": CAPS["models"]}
    if command == "scores":  # scores' steps: the ensemble's
        base["steps"] = scale.score_steps
    return base


ABSENT = {"warmup": {"steps"}}  # None there means "no such phase", not the preset's value


def smoke_axis(name: str, values: list, scale: Scale) -> list:
    """One axis at smoke scale; values that were distinct stay distinct (in the same order)."""
    rule, step = RULES[name]
    out = [rule(v, scale) for v in values]
    if step and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        taken: dict[Any, int] = {}  # full-scale value -> smoke value, walked in increasing order
        for v, s in sorted(zip(values, out), key=lambda pair: pair[0]):
            if v not in taken:
                taken[v] = s if not taken else max(s, max(taken.values()) + step)
        out = [taken[v] for v in values]
    return out


def smoke_sweep(spec):
    """The same grid at smoke scale (see the module docstring), every point checked."""
    from ..api import REQUESTS
    from ..data.subsets import SCORED  # subsets ranked by a score: only they need score_* flags
    from .spec import check_points

    for name in list(spec.flags) + list(spec.grid):
        if name not in RULES:
            raise UserError(f"{spec.path}: flag '{name}' has no smoke scale")
    default = next(f.default for f in dataclasses.fields(REQUESTS[spec.command])
                   if f.name == "dataset")
    datasets = ([spec.flags["dataset"]] if "dataset" in spec.flags
                else spec.grid.get("dataset", [default]))
    scale = Scale.of(spec.command, datasets[0])
    for other in datasets[1:]:  # a dataset axis shares one smoke schedule (its values' scale)
        if Scale.of(spec.command, other).schedule != scale.schedule:
            raise UserError(f"{spec.path}: the smoke stand-ins of {datasets[0]} and {other} "
                            "train on different schedules; give each dataset its own file")
    lmc_scores = spec.argument == "lmc" or spec.flags.get("rank_by") == "lmc"
    if lmc_scores:  # an LMC score's "steps" is its spawn step: it shrinks like t*, not like EL2N's
        scale = dataclasses.replace(scale, score=scale.pretrain)
    flags = {name: smoke_axis(name, [value], scale)[0] for name, value in spec.flags.items()}
    # the pre-training subset and an accuracy's eval subset (Fig. 7a's easy examples: the same
    # smoke-scale EL2N ensemble must rank both, or "easy" is two different subsets)
    subsets = [spec.flags.get("subset", "all"), *spec.grid.get("subset", []),
               spec.flags.get("eval_subset"), *spec.grid.get("eval_subset", [])]
    defaults = implicit(spec.command, scale)
    if lmc_scores:  # the default spawn step is t*
        defaults |= {"steps" if spec.command == "scores" else "score_steps": scale.t_star}
    cls = REQUESTS[spec.command]
    # fields the command does not use are refused when set (e.g. children for el2n scores)
    unused = set(cls(**({"kind": spec.argument} if spec.argument else {})).unused())
    for f in dataclasses.fields(cls):
        if f.name in spec.flags or f.name in spec.grid or f.name not in RULES or f.name in unused:
            continue
        if f.name.startswith("score_") and not set(subsets) & set(SCORED):
            continue  # no point ranks a subset: the flags would only clutter its commands
        if f.default is None and f.name in defaults and f.name not in ABSENT.get(spec.command, ()):
            flags[f.name] = defaults[f.name]
        elif f.default is not None and RULES[f.name][0](f.default, scale) != f.default:
            flags[f.name] = RULES[f.name][0](f.default, scale)
    if "dataset" not in spec.grid:
        flags["dataset"] = scale.dataset
    grid = {name: smoke_axis(name, values, scale) for name, values in spec.grid.items()}
    smoke = dataclasses.replace(spec, flags=flags, grid=grid, scale="smoke")
    check_points(smoke)
    return smoke
