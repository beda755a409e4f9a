"""The Python API: what the CLI, the sweeps and a notebook call.

Each experiment is a frozen request (the flags a user sets, with the CLI's names and defaults)
and one function that checks it whole, before any data is built or any file written, then
ensures what it depends on and runs it. ``imp`` computes missing EL2N (forgetting, LMC) scores
for easy / hard subsets, then pre-trains and prunes, and returns the run store's ``Run``;
``scores`` returns a score file; the analyses (``lmc``, ``errors``, ``grads``) start from the
pre-training point (or IMP level) that ``imp`` with the same flags uses and return their summary
JSON; ``warmup`` returns its run directory. ``request_from`` builds any request from plain
values with every value checked against its field's type (what sweep files go through).

    from lthfast import api
    rt = api.runtime(out="runs", device="cpu")
    run = api.imp(api.ImpRequest(dataset="digits", subset="random", size=256, steps=20,
                                 levels=3, replicates=2), rt)
    print(run.path, [r.test_acc for r in run.records()])
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

from .config import Overrides, Preset, pretrain_recipe, preset_for, score_recipe, train_recipe
from .errors import UserError
from .experiments.common import Context, Runtime, check_device, default_device, setup_torch
from .runs import Run

# Datasets that need no download or source: built on first use.
EMBEDDED = ("digits",)


def runtime(root: str | Path = "datasets", out: str | Path = "runs", device: Optional[str] = None,
            deterministic: bool = False, compile: Optional[bool] = None,
            checkpoint_every: int = 0, loader: str = "device", progress=None,
            cuda_graph: bool = False) -> Runtime:
    """How to run (never part of a run's identity), checked."""
    check_runtime_flags(checkpoint_every=checkpoint_every, loader=loader)
    check_device(device or default_device())
    return Runtime(root=Path(root), out=Path(out), device=device or default_device(),
                   deterministic=deterministic, compile=compile, progress=progress,
                   checkpoint_every=checkpoint_every, loader=loader, cuda_graph=cuda_graph)


def check_runtime_flags(checkpoint_every: int = 0, loader: str = "device", **_: Any) -> None:
    """The runtime flags' own bounds (``Runtime.__post_init__`` checks how they combine with
    the device): what ``runtime`` and every sweep point go through."""
    from .data.streams import STREAMS

    if checkpoint_every < 0:
        raise UserError(f"--checkpoint-every must be >= 0 (0: by wall time only), got {checkpoint_every}")
    STREAMS.lookup(loader)


def with_flags(rt: Runtime, flags: dict[str, Any]) -> Runtime:
    """``rt`` with a sweep point's runtime flags (``RUNTIME_FLAGS``), checked as ``runtime``
    checks them: their bounds, then ``Runtime.__post_init__`` on the result (e.g. --cuda-graph
    on a CPU device)."""
    check_runtime_flags(**flags)
    return dataclasses.replace(rt, **flags)


def open_data(root: str | Path, dataset: str):
    """A built dataset; the embedded ones are built on first use."""
    from .data.arrays import open_dataset
    from .data.build import build_dataset
    from .data.sources import get_source

    get_source(dataset)
    if dataset in EMBEDDED and not (Path(root) / dataset / "meta.json").exists():
        build_dataset(dataset, Path(root))
    return open_dataset(root, dataset)


def context(rt: Runtime, dataset: str) -> Context:
    setup_torch(rt)  # also: this run starts from a clean torch global state
    return Context(rt, open_data(rt.root, dataset))


@dataclass(frozen=True)
class Common:
    """Flags shared by every training command: the dataset, the base seed and small overrides."""

    dataset: str = "cifar10"
    seed: int = 0
    label_noise: float = 0.0
    noise_seed: int = 0
    model: Optional[str] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None

    COMMAND: ClassVar[str] = ""  # the CLI command of the request, for messages

    def command(self) -> str:
        return self.COMMAND

    def unused(self) -> tuple[str, ...]:
        """Fields this command does not use. Set to anything but their default they are
        refused: two requests that differ only there would be the same run (and a sweep's
        grid points along such an axis would collide)."""
        return ()

    def check_unused(self) -> None:
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in self.unused():
            value = getattr(self, name)
            if value != defaults[name]:
                raise UserError(f"{self.command()} does not use --{name.replace('_', '-')} "
                                f"(got {value!r}): leave it out")

    def check_common(self) -> None:
        from .config import PRESETS
        from .data.sources import SOURCES
        from .data.subsets import check_noise_fraction

        self.check_unused()
        SOURCES.lookup(self.dataset)
        if self.dataset not in PRESETS:
            raise UserError(f"no preset for dataset '{self.dataset}' (known: {', '.join(PRESETS)})")
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")
        check_noise_fraction(self.label_noise, self.noise_seed)


@dataclass(frozen=True)
class ScoreRequest(Common):
    """``lthfast scores KIND``: K networks, per-example scores of the train set."""

    kind: str = "el2n"
    models: Optional[int] = None  # default: the score's (10 networks; lmc: 2 replicates)
    steps: Optional[int] = None
    children: int = 3  # lmc: children per replicate (3 pairs each)
    train_steps: Optional[int] = None
    pretrain_lr: Optional[float] = None  # lmc: the parent's pre-training lr
    bn: str = "average"  # lmc: BatchNorm at interpolated weights (average | recompute)

    COMMAND: ClassVar[str] = "scores"

    def command(self) -> str:
        return f"scores {self.kind}"

    def unused(self) -> tuple[str, ...]:
        # el2n / forgetting train score ensembles on the training schedule: no parent
        return () if self.kind == "lmc" else ("children", "pretrain_lr", "bn")

    def preset(self) -> Preset:
        preset = Overrides(self.model, self.batch_size, self.lr, self.pretrain_lr,
                           self.train_steps).apply(preset_for(self.dataset))
        return dataclasses.replace(preset, el2n_model=self.model) if self.model else preset

    def check(self) -> None:
        from .experiments.scores import SCORES, check_score_request
        from .models import resolve

        self.check_common()
        kind = SCORES.lookup(self.kind)
        preset = self.preset()
        resolve(preset.el2n_model)
        check_score_request(kind.default_models if self.models is None else self.models,
                            kind.default_steps(preset) if self.steps is None else self.steps)
        if self.children < 2:
            raise UserError(f"--children must be >= 2 (barriers are between pairs), got "
                            f"{self.children}")
        self.check_spawn("--steps")
        check_bn(self.bn)

    def check_spawn(self, flag: str) -> None:
        """lmc: children train from the spawn step to the end of the schedule, so the spawn
        step must come before it (at or past T they would train nothing: all-zero scores)."""
        if self.kind != "lmc":
            return
        from .experiments.scores import SCORES

        preset = self.preset()
        t = SCORES.lookup("lmc").default_steps(preset) if self.steps is None else self.steps
        if t >= preset.train_steps:
            given = (f"{flag} {t} (the lmc spawn step)" if self.steps is not None else
                     f"the lmc spawn step ({flag}, default t* = {t})")
            raise UserError(f"{given} must be smaller than the {preset.train_steps} "
                            "iterations of training (--train-steps)")

    def config(self):
        from .experiments.scores import SCORES, ScoreConfig

        preset = self.preset()
        kind = SCORES.lookup(self.kind)
        steps = kind.default_steps(preset) if self.steps is None else self.steps
        models = kind.default_models if self.models is None else self.models
        common = dict(score=self.kind, dataset=self.dataset, models=models, seed=self.seed,
                      label_noise=self.label_noise, noise_seed=self.noise_seed)
        if self.kind == "lmc":  # a dense parent pre-trained to t; children to the end
            return ScoreConfig(recipe=train_recipe(preset), parent=pretrain_recipe(preset, steps),
                               children=self.children, bn=self.bn, **common)
        return ScoreConfig(recipe=score_recipe(preset, steps), **common)


def check_bn(bn: str) -> None:
    from .experiments.analyses.lmc import BN_KINDS

    if bn not in BN_KINDS:
        raise UserError(f"--bn must be one of {', '.join(BN_KINDS)}, got {bn!r}")


@dataclass(frozen=True)
class ImpRequest(Common):
    """``lthfast imp``: pre-train on a subset for t_r iterations, then IMP with rewinding."""

    subset: str = "all"
    size: Optional[int] = None
    subset_file: Optional[Path] = None
    subset_seed: int = 0
    shared_subset: bool = False
    class_balanced: Optional[bool] = None
    offset: int = 0
    scores: Optional[Path] = None
    rank_by: str = "el2n"
    steps: Optional[int] = None
    levels: int = 12
    replicates: int = 1
    el2n_models: Optional[int] = None  # default: the score's (10; lmc: 2)
    el2n_steps: Optional[int] = None
    pretrain_lr: Optional[float] = None
    train_steps: Optional[int] = None

    COMMAND: ClassVar[str] = "imp"

    def preset(self) -> Preset:
        return Overrides(self.model, self.batch_size, self.lr, self.pretrain_lr,
                         self.train_steps).apply(preset_for(self.dataset))

    def subset_spec(self, scores: Optional[Path] = None):
        from .data.subsets import SubsetSpec

        scores = scores or self.scores
        return SubsetSpec(kind=self.subset, size=self.size, seed=self.subset_seed,
                          scores=str(scores) if scores else None, offset=self.offset,
                          class_balanced=self.class_balanced,
                          file=str(self.subset_file) if self.subset_file else None,
                          shared=self.shared_subset,
                          rank_by=(self.rank_by if self.scores is None else "file")
                          if scores else None)

    def needs_scores(self) -> bool:
        return self.subset_file is None and self.subset in ("easy", "hard") and self.scores is None

    def score_request(self) -> ScoreRequest:
        """The scores that rank easy / hard subsets. ``el2n_models`` and ``el2n_steps`` are
        the score's two knobs: for ``--rank-by lmc`` the parent's replicates and spawn step
        (and the parent's pre-training lr, which only lmc scores use)."""
        return ScoreRequest(dataset=self.dataset, seed=self.seed, label_noise=self.label_noise,
                            noise_seed=self.noise_seed, model=self.model,
                            batch_size=self.batch_size, lr=self.lr, kind=self.rank_by,
                            models=self.el2n_models, steps=self.el2n_steps,
                            train_steps=self.train_steps,
                            pretrain_lr=self.pretrain_lr if self.rank_by == "lmc" else None)

    def config(self, subset_identity: dict):
        from .experiments.imp import ImpConfig, PretrainConfig

        preset = self.preset()
        t_r = preset.t_star if self.steps is None else self.steps
        pre = PretrainConfig(dataset=self.dataset, recipe=pretrain_recipe(preset, t_r),
                             subset=subset_identity, seed=self.seed,
                             label_noise=self.label_noise, noise_seed=self.noise_seed)
        return ImpConfig(pretrain=pre, recipe=train_recipe(preset),
                         prune_fraction=preset.prune_fraction)

    def check_schedule(self) -> None:
        from .experiments.imp import check_config

        check_config(self.config({}))

    def check(self) -> None:
        """Everything checkable without data, so a typo never trains or writes anything."""
        from .data.subsets import load_array
        from .experiments.scores import SCORES
        from .models import resolve

        self.check_common()
        if self.levels < 0:
            raise UserError("--levels must be >= 0")
        # the score's flags are checked even when this subset needs no scores: a bad value is
        # a mistake wherever it appears
        if self.el2n_models is not None and self.el2n_models < 1:
            raise UserError(f"--el2n-models must be >= 1, got {self.el2n_models}")
        if self.el2n_steps is not None and self.el2n_steps < 1:
            raise UserError(f"--el2n-steps must be >= 1, got {self.el2n_steps}")
        if self.replicates < 1:
            raise UserError("--replicates must be >= 1")
        resolve(self.preset().model)
        SCORES.lookup(self.rank_by)
        self.subset_spec().check()
        if self.subset_file is None and self.subset not in ("easy", "hard") and self.scores:
            raise UserError(f"--scores ranks easy/hard subsets; --subset {self.subset} has none")
        # the files' format now; their length and range once the dataset is open
        if self.scores is not None and load_array(self.scores, "scores").ndim != 1:
            raise UserError(f"scores file {self.scores} must be a 1-D array")
        if self.subset_file is not None and load_array(self.subset_file, "subset").ndim != 1:
            raise UserError(f"subset file {self.subset_file} must be a 1-D array")
        self.check_schedule()
        if self.needs_scores():
            score = self.score_request()
            score.check_spawn("--el2n-steps")  # named as this command's flag
            score.check()


@dataclass(frozen=True)
class LmcRequest(ImpRequest):
    """``lthfast lmc``: children spawned from the parent that ``imp`` with the same flags would
    pre-train (or, with ``level``, from that IMP level's rewound sparse network)."""

    children: int = 2
    alphas: str = "0.5"  # comma-separated interpolation points in [0, 1]
    level: Optional[int] = None
    levels: int = 0  # not used: the parent's level is ``level``
    bn: str = "average"  # BatchNorm at interpolated weights: average (the authors') | recompute

    COMMAND: ClassVar[str] = "lmc"

    def unused(self) -> tuple[str, ...]:
        return ("levels",)

    def alpha_values(self) -> tuple[float, ...]:
        try:
            values = tuple(float(a) for a in self.alphas.split(","))
        except ValueError:
            raise UserError(f"--alphas takes numbers separated by commas, got {self.alphas!r}") \
                from None
        if not values or not all(0.0 <= a <= 1.0 for a in values):
            raise UserError(f"--alphas must lie in [0, 1], got {self.alphas!r}")
        return values

    def check(self) -> None:
        super().check()
        if self.children < 2:
            raise UserError(f"--children must be >= 2 (barriers are between pairs), got "
                            f"{self.children}")
        if self.level is not None and self.level < 0:
            raise UserError(f"--level must be >= 0, got {self.level}")
        self.alpha_values()
        check_bn(self.bn)


def lmc(req: LmcRequest, rt: Runtime) -> Path:
    """Barriers between children of the requested parent; returns the summary JSON's path."""
    from .experiments.analyses import lmc as analysis

    req.check()
    ctx, spec, cfg = _prepared(req, rt)
    parent = _parent(ctx, spec, cfg, req.level, req.replicates)
    lcfg = analysis.LmcConfig(recipe=cfg.recipe, start=cfg.pretrain.recipe.steps,
                              children=req.children, alphas=req.alpha_values(), level=req.level,
                              seed=req.seed, bn=req.bn)
    return analysis.write_summary(parent, lcfg, analysis.run(ctx, parent, lcfg))


@dataclass(frozen=True)
class ErrorsRequest(ImpRequest):
    """``lthfast errors``: per-example errors of w_{t_r} (dense) or of its sparse projection by
    IMP level ``level``'s mask."""

    level: Optional[int] = None
    levels: int = 0  # not used: the mask's level is ``level``

    COMMAND: ClassVar[str] = "errors"

    def unused(self) -> tuple[str, ...]:
        return ("levels",)

    def check(self) -> None:
        super().check()
        if self.level is not None and self.level < 0:
            raise UserError(f"--level must be >= 0, got {self.level}")


def errors(req: ErrorsRequest, rt: Runtime) -> Path:
    """Per-example ‖p − y‖ at the pre-training point; returns the summary JSON's path."""
    from .experiments.analyses import errors as analysis

    req.check()
    ctx, spec, cfg = _prepared(req, rt)
    parent = _parent(ctx, spec, cfg, req.level, req.replicates)
    pre = ctx.store.run("pretrain", cfg.pretrain)
    diverged = {r: pre.stage(r).record().diverged for r in parent.states}
    return analysis.run(ctx, parent.run, parent.states, req.level, cfg.pretrain.recipe.steps,
                        diverged)


@dataclass(frozen=True)
class GradsRequest(ImpRequest):
    """``lthfast grads``: gradient norms, coherence and learning speed during the pre-training
    that ``imp`` with the same flags runs."""

    coherence_every: int = 10
    coherence_batches: int = 16
    eval_every: int = 100
    eval_subset: Optional[str] = None  # accuracy also on this subset (Fig. 7a: easy)
    eval_size: Optional[int] = None
    levels: int = 0  # not used

    COMMAND: ClassVar[str] = "grads"

    def unused(self) -> tuple[str, ...]:
        return ("levels",)

    def check(self) -> None:
        super().check()
        if self.coherence_every < 1 or self.coherence_batches < 2:
            raise UserError("--coherence-every must be >= 1 and --coherence-batches >= 2")
        if self.eval_every < 0:
            raise UserError(f"--eval-every must be >= 0 (0: never), got {self.eval_every}")
        if self.steps == 0:
            raise UserError("--steps 0 has no pre-training to look at")
        if (self.eval_subset is None) != (self.eval_size is None) and self.eval_subset != "all":
            raise UserError("--eval-subset and --eval-size go together")
        if self.eval_subset is not None:
            self.eval_request().check()

    def eval_request(self) -> ImpRequest:
        """The subset the accuracies are also measured on, ranked as this request would rank
        its own (same scores)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(ImpRequest)}
        return ImpRequest(**(fields | {"subset": self.eval_subset, "size": self.eval_size,
                                       "offset": 0, "subset_file": None,
                                       "shared_subset": False, "levels": 0}))


def grads(req: GradsRequest, rt: Runtime) -> Path:
    """Replays the pre-training with gradient statistics; returns the summary JSON's path."""
    from .data.loader import StreamSeeds
    from .experiments.analyses import grads as analysis
    from .experiments.common import replicate_seeds
    from .experiments.imp import subset_of

    req.check()
    ctx, spec, cfg = _prepared(req, rt)
    pre = ctx.store.run("pretrain", cfg.pretrain).create()

    def seeds_of(r: int):
        seeds = replicate_seeds(cfg.pretrain.seed, r)
        return seeds["init"], StreamSeeds(seeds["pretrain_order"], seeds["pretrain_augment"])

    subsets = {r: subset_of(ctx, spec, r) for r in range(req.replicates)}
    eval_spec = eval_subsets = None
    if req.eval_subset is not None:
        _, eval_spec, _ = _prepared(req.eval_request(), rt, ctx)
        eval_subsets = {r: subset_of(ctx, eval_spec, r) for r in range(req.replicates)}
    return analysis.run(ctx, pre, cfg.pretrain.recipe,
                        ctx.train_split(cfg.pretrain.label_noise, cfg.pretrain.noise_seed),
                        seeds_of, subsets, analysis.GradsConfig(
                            req.coherence_every, req.coherence_batches, req.eval_every,
                            eval_spec.identity() if eval_spec is not None else None),
                        seed=cfg.pretrain.seed, eval_subsets=eval_subsets)


@dataclass(frozen=True)
class WarmupRequest(ImpRequest):
    """``lthfast warmup``: appendix A's warmup design, the subset used during the warmup only
    (``--subset`` / ``--size`` as for imp; ``all``: all data throughout)."""

    warmup: int = 0  # t: warmup iterations
    replicates: int = 8
    levels: int = 0  # not used

    COMMAND: ClassVar[str] = "warmup"

    def unused(self) -> tuple[str, ...]:
        # the design trains the preset's network on true labels, at one lr; no pre-training
        # or levels (``steps`` gets a message of its own first, in ``check``)
        return ("label_noise", "noise_seed", "model", "pretrain_lr", "steps", "levels")

    def check_schedule(self) -> None:
        """No pre-training or levels; the warmup's own bounds are checked in ``check``."""

    def score_request(self) -> ScoreRequest:
        """Scores as appendix A computes them (the dataset's preset), not with the warmup
        design's batch and lr."""
        return dataclasses.replace(super().score_request(), lr=None, batch_size=None,
                                   train_steps=None)

    def check(self) -> None:
        from .config import WARMUP_DESIGNS

        if self.dataset not in WARMUP_DESIGNS:
            raise UserError(f"the warmup design (appendix A) is for "
                            f"{', '.join(WARMUP_DESIGNS)}; not {self.dataset}")
        if self.steps is not None:
            raise UserError("warmup has no pre-training: use --warmup for t, not --steps")
        if self.warmup < 0:
            raise UserError(f"--warmup must be >= 0, got {self.warmup}")
        if self.train_steps is not None and self.warmup >= self.train_steps:
            raise UserError(f"--warmup {self.warmup} must be shorter than --train-steps "
                            f"{self.train_steps}")
        super().check()

    def recipe(self, train_size: int):
        from .config import warmup_recipe

        return warmup_recipe(self.dataset, train_size, self.warmup, self.batch_size, self.lr,
                             self.train_steps)

    def check_length(self, train_size: int) -> None:
        """Without --train-steps the schedule's length (160 epochs) depends on the train set's
        size: checked once the dataset is open, before any score is computed."""
        steps = self.recipe(train_size).steps
        if self.warmup >= steps:
            raise UserError(f"--warmup {self.warmup} must be shorter than the {steps} "
                            "iterations of training")

    def warmup_config(self, train_size: int, subset_identity: dict):
        from .experiments.warmup import WarmupConfig

        return WarmupConfig(dataset=self.dataset, recipe=self.recipe(train_size),
                            subset=subset_identity, seed=self.seed)


def warmup(req: WarmupRequest, rt: Runtime) -> Path:
    """Train with warmup on the subset, then all data; returns the run directory."""
    from .experiments.warmup import run_warmup

    req.check()
    ctx = context(rt, req.dataset)
    req.check_length(ctx.ds.train_size)  # before the scores that rank its subset are trained
    ctx, spec, _ = _prepared(req, rt, ctx)
    cfg = req.warmup_config(ctx.ds.train_size, spec.identity())
    return run_warmup(ctx, cfg, spec, req.replicates).path


def _parent(ctx: Context, spec, cfg, level: Optional[int], replicates: int):
    """The networks an analysis starts from: w_{t_r} of each replicate (pre-training), or with
    ``level`` the rewound sparse network of that IMP level (w_{t_r} under the level's mask).

    Level k's mask prunes the weights trained at level k − 1, so only levels 0 … k − 1 train
    here (none for level 0, whose mask keeps everything); level k itself never needs training.
    Replicates whose pre-training or an earlier level diverged are left out."""
    from .experiments.analyses.lmc import Parent
    from .experiments.imp import level_masks, pretrain, run_imp
    from .train import checkpoint as ckpt

    reps = list(range(replicates))
    if level is None:
        states = dict(zip(reps, pretrain(ctx, cfg.pretrain, spec, reps)))
        run = ctx.store.run("pretrain", cfg.pretrain)
        return Parent(run, [run.stage(r) for r in reps], states, dict.fromkeys(reps))
    if level == 0:
        rewinds = dict(zip(reps, pretrain(ctx, cfg.pretrain, spec, reps)))
        run = ctx.store.run("imp", cfg).create()
    else:
        run = run_imp(ctx, cfg, spec, level - 1, replicates)
    pre = ctx.store.run("pretrain", cfg.pretrain)
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


def _prepared(req: ImpRequest, rt: Runtime, ctx: Optional[Context] = None):
    """Context, subset and IMP config of a checked request (scores computed when missing)."""
    from .data.streams import check_loader
    from .data.subsets import check_fits, make_subset
    from .experiments.scores import compute_scores

    ctx = context(rt, req.dataset) if ctx is None else ctx
    check_loader(rt.loader, ctx.ds, req.label_noise, rt.deterministic)
    check_fits(ctx.ds, req.subset_spec())  # size and offset: before scores train to rank it
    score_path = compute_scores(ctx, req.score_request().config()) if req.needs_scores() else None
    spec = req.subset_spec(score_path)
    subset = make_subset(ctx.ds, spec)  # a subset that cannot be made fails here, first
    cfg = req.config(spec.identity())
    batch = cfg.pretrain.recipe.batch_size
    if cfg.pretrain.recipe.steps and batch > len(subset):
        print(f"warning: batch size {batch} exceeds the {len(subset)} pre-training examples: "
              "every batch repeats examples", file=sys.stderr)
    return ctx, spec, cfg


def scores(req: ScoreRequest, rt: Runtime) -> Path:
    """Per-example scores (float32 .npy in dataset order), computed once; returns the path."""
    from .data.streams import check_loader
    from .experiments.scores import compute_scores

    req.check()
    ctx = context(rt, req.dataset)
    check_loader(rt.loader, ctx.ds, req.label_noise, rt.deterministic)
    return compute_scores(ctx, req.config())


def imp(req: ImpRequest, rt: Runtime) -> Run:
    """IMP after pre-training on the requested subset; computes missing scores first."""
    from .experiments.imp import run_imp

    req.check()
    ctx, spec, cfg = _prepared(req, rt)
    return run_imp(ctx, cfg, spec, req.levels, req.replicates)


def imp_many(reqs: Sequence[ImpRequest], rt: Runtime) -> list[Run]:
    """Several IMP requests at once, packed across runs (``run_imps``): on one dataset, every
    pre-training and every level whose recipes have the same shape trains as one model.
    Returns the runs in request order; the results equal those of ``imp`` one by one."""
    return run_prepared_imps([prepare_imp(req, rt) for req in reqs])


@dataclass(frozen=True)
class PreparedImp:
    """An IMP request checked and made ready to train (its scores computed)."""

    request: ImpRequest
    ctx: Context
    subset: Any  # data.subsets.SubsetSpec
    cfg: Any  # experiments.imp.ImpConfig


def prepare_imp(req: ImpRequest, rt: Runtime) -> PreparedImp:
    """A request checked and made ready (its scores computed): what ``run_prepared_imps``
    takes. A request that cannot run fails here, alone (a sweep's other points go on)."""
    req.check()
    return PreparedImp(req, *_prepared(req, rt))


def run_prepared_imps(prepared: Sequence[PreparedImp]) -> list[Run]:
    from .experiments.imp import ImpJob, run_imps

    runs: dict[int, Run] = {}
    for dataset in dict.fromkeys(p.request.dataset for p in prepared):
        mine = [i for i, p in enumerate(prepared) if p.request.dataset == dataset]
        ctx = prepared[mine[0]].ctx  # one context (data on the device) per dataset
        setup_torch(ctx.rt)  # preparing later requests may have set torch up for theirs
        jobs = [ImpJob(prepared[i].cfg, prepared[i].subset, prepared[i].request.levels,
                       prepared[i].request.replicates) for i in mine]
        runs.update(zip(mine, run_imps(ctx, jobs)))
    return [runs[i] for i in range(len(prepared))]


# ------------------------------------------------------------------------------------------------
# requests from plain values (sweep files, JSON): every value checked against its field's type
# ------------------------------------------------------------------------------------------------

REQUESTS: dict[str, type] = {"imp": ImpRequest, "scores": ScoreRequest, "lmc": LmcRequest,
                              "errors": ErrorsRequest, "grads": GradsRequest,
                              "warmup": WarmupRequest}
# Runtime flags a sweep may set per run (how to run, not what): checked like request fields.
RUNTIME_FLAGS = {"deterministic": bool, "compile": Optional[bool], "loader": str,
                 "checkpoint_every": int, "cuda_graph": bool}


def coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (int, float, str, bool, Path, Optional of one), or UserError."""
    flag = "--" + name.replace("_", "-")
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else coerce(name, value, inner[0])
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str), Path: lambda v: isinstance(v, (str, Path))}[hint]
    if not ok(value):
        raise UserError(f"{flag} takes {hint.__name__ if hint is not Path else 'a path'}, "
                        f"got {value!r}")
    return hint(value) if hint in (float, Path) else value


def request_from(command: str, values: dict[str, Any], rt: Optional[Runtime] = None):
    """A checked request and runtime flags from plain values, e.g. one grid point of a sweep.
    The runtime flags are checked as ``runtime`` checks them; with ``rt`` (the sweep's device
    known) also in combination with it (``with_flags``)."""
    cls = REQUESTS[command]
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    fields, flags = {}, {}
    for name, value in values.items():
        if name in names:
            fields[name] = coerce(name, value, hints[name])
        elif name in RUNTIME_FLAGS:
            flags[name] = coerce(name, value, RUNTIME_FLAGS[name])
        else:
            raise UserError(f"'{command}' has no flag --{name.replace('_', '-')}")
    # Without the sweep's runtime (a file being loaded: its device not known yet) the flags are
    # checked on "cuda", which allows every flag: only what does not depend on the device
    # fails here; the sweep checks every point again with its runtime before the first run.
    with_flags(Runtime(device="cuda") if rt is None else rt, flags)
    request = cls(**fields)
    request.check()
    return request, flags


RUNNERS = {"imp": lambda req, rt: imp(req, rt).path, "scores": scores, "lmc": lmc,
           "errors": errors, "grads": grads, "warmup": warmup}
