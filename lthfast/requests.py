"""The requests: what a user asks of each training command, composed from small groups of flags.

A request is a frozen dataclass of the flags a user sets (the CLI's names and defaults; help,
panel, env var and bounds in each field's ``Opt``, see ``lthfast.options``). It is composed, not
inherited: ``compose`` puts together the groups a command uses (``COMMON``, ``OVERRIDES``,
``SUBSET``, ``RANKING``, ``PRETRAINING`` and the command's own flags) and the behaviours those
groups bring (plain functions below), so an analysis carries no flag it must refuse. A request
checks itself whole before any data is built or file written: types when it is made
(``__post_init__``), each flag's bounds (``options.check_bounds_of``) and the rules between
flags in its ``check``. The command table (``api.COMMANDS``) names each request with the
function that runs it; ``api.request_from`` builds one from plain values (a sweep file's grid
point, JSON).

    python -c "from lthfast.requests import ImpRequest; ImpRequest(dataset='digits').check()"
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any, Callable, Optional

from .config import Overrides, Preset, pretrain_recipe, preset_for, score_recipe, train_recipe
from .errors import UserError
from .options import OVERRIDES as OVERRIDE_PANEL
from .options import Opt, check_bounds_of, check_types, flag

# ------------------------------------------------------------------------------------------------
# the groups: (name, type, default, Opt) — one declaration per flag, for every command using it
# ------------------------------------------------------------------------------------------------

COMMON = [
    ("dataset", str, "cifar10", Opt("dataset (its preset: Table 1)", env="LTHFAST_DATASET")),
    ("seed", int, 0, Opt("base seed (init, order and augmentation seeds derive from it)",
                         min=0)),
]
NOISE = [
    ("label_noise", float, 0.0, Opt("fraction of training labels re-drawn", min=0.0, max=1.0)),
    ("noise_seed", int, 0, Opt("seed of the label noise", min=0)),
]
MODEL = [("model", Optional[str], None, Opt("override the preset's network",
                                               panel=OVERRIDE_PANEL))]
OVERRIDES = [
    ("batch_size", Optional[int], None, Opt("override the preset's batch size",
                                            panel=OVERRIDE_PANEL, min=1)),
    ("lr", Optional[float], None, Opt("override the training lr", panel=OVERRIDE_PANEL,
                                      above=0.0)),
    ("train_steps", Optional[int], None, Opt("override T, the schedule's iterations",
                                             panel=OVERRIDE_PANEL, min=1)),
]
PRETRAIN_LR = [("pretrain_lr", Optional[float], None,
                Opt("override the pre-training lr", panel=OVERRIDE_PANEL, above=0.0))]
SUBSET = [
    ("subset", str, "all", Opt("pre-training subset: all, random, easy, hard, ccs")),
    ("size", Optional[int], None, Opt("subset size M", min=1)),
    ("subset_file", Optional[Path], None, Opt("pre-train on these train indices (.npy)")),
    ("subset_seed", int, 0, Opt("seed of a random subset (replicate r draws its own from it)",
                                min=0)),
    ("shared_subset", bool, False, Opt("random: one subset for all replicates")),
    ("class_balanced", Optional[bool], None,
     Opt("equal share per class (default: yes for random, no for easy/hard)", negatable=True)),
    ("offset", int, 0, Opt("easy/hard: skip this many first; ccs: prune this many hardest first "
                           "(the hard cutoff)", min=0)),
    ("scores", Optional[Path], None, Opt("easy/hard: score file (default: computed or reused)")),
]
RANKING = [
    ("rank_by", str, "el2n", Opt("easy/hard/ccs without --scores: a registered score (el2n, "
                                 "forgetting, lmc, grand, aum, train_loss, pred_var)")),
    # the --rank-by score's two knobs (any score, not only EL2N): scores' --models / --steps;
    # their old names stay accepted (hidden) from the CLI and sweep files
    ("score_models", Optional[int], None,
     Opt("networks of the ranking score (default 10; lmc: 2 replicates of the parent)", min=1,
         aliases=("el2n_models",))),
    ("score_steps", Optional[int], None,
     Opt("iterations of the ranking score (lmc: its spawn step; default per dataset; "
         "0 only for scores taken at initialisation, e.g. grand)", min=0,
         aliases=("el2n_steps",))),
]
PRETRAINING = [("steps", Optional[int], None,
                Opt("pre-training iterations t_r (default: t* of the preset)", min=0))]
REPLICATES = [("replicates", int, 1, Opt("independent replicates (trained packed)", min=1))]


def with_help(group: list, **helps: str) -> list:
    """The group with some flags' help said for one command (``subset`` is warmup's warmup
    subset, ``label_noise`` imp's pre-training noise)."""
    return [(n, t, d, o.but(help=helps[n]) if n in helps else o) for n, t, d, o in group]


def with_default(group: list, **defaults: Any) -> list:
    return [(n, t, defaults.get(n, d), o) for n, t, d, o in group]


def _post_init(req) -> None:
    """Types checked (``options.check_types``); a synthetic variant's name in canonical order
    (``synthetic:noise=120,size=8``), so one variant is one run whichever order it was given."""
    if ":" in str(req.dataset):
        from .data.build import canonical_name

        object.__setattr__(req, "dataset", canonical_name(req.dataset))
    check_types(req)


def compose(name: str, command: str, doc: str, groups: list, methods: dict[str, Callable],
            ignores: str = "") -> type:
    """A frozen request class of these groups' fields, with these behaviours. ``ignores``: the
    flags of related commands it does not take, by design (said in ``--help``)."""
    fields = [(n, t, dataclasses.field(default=d, metadata={"opt": o}))
              for group in groups for n, t, d, o in group]
    names = [f[0] for f in fields]
    assert len(set(names)) == len(names), f"{name}: a flag in two groups"
    namespace = {"COMMAND": command, "IGNORES": ignores, "__doc__": doc,
                 "__post_init__": _post_init, "command": lambda self: command,
                 "unused": lambda self: (), **methods}
    cls = dataclasses.make_dataclass(name, fields, namespace=namespace, frozen=True)
    cls.__module__ = __name__
    return cls


# ------------------------------------------------------------------------------------------------
# behaviours of the groups
# ------------------------------------------------------------------------------------------------

def preset(req) -> Preset:
    """The dataset's preset with this request's overrides (fields it lacks: the preset's)."""
    return Overrides(getattr(req, "model", None), req.batch_size, getattr(req, "lr", None),
                     getattr(req, "pretrain_lr", None), req.train_steps
                     ).apply(preset_for(req.dataset))


def check_common(req) -> None:
    """Bounds of every flag, then the dataset and its preset."""
    from .data.sources import SOURCES, split_name
    from .data.subsets import check_noise_fraction

    check_bounds_of(req)
    SOURCES.lookup(split_name(req.dataset)[0])  # a synthetic variant: synthetic:train=2000
    preset_for(req.dataset)  # no preset: one line naming the known ones
    check_noise_fraction(getattr(req, "label_noise", 0.0), getattr(req, "noise_seed", 0))


def subset_spec(req, scores: Optional[Path] = None):
    from .data.subsets import SubsetSpec
    from .experiments.scores import SCORES

    scores = scores or req.scores
    easy_high = req.rank_by in SCORES and SCORES[req.rank_by].easy == "high"  # e.g. aum
    return SubsetSpec(kind=req.subset, size=req.size, seed=req.subset_seed,
                      easy_high=bool(scores) and easy_high,
                      scores=str(scores) if scores else None, offset=req.offset,
                      class_balanced=req.class_balanced,
                      file=str(req.subset_file) if req.subset_file else None,
                      shared=req.shared_subset,
                      rank_by=(req.rank_by if req.scores is None else "file")
                      if scores else None)


def needs_scores(req) -> bool:
    from .data.subsets import SCORED

    return req.subset_file is None and req.subset in SCORED and req.scores is None


def score_request(req) -> "ScoreRequest":
    """The scores that rank easy / hard subsets. ``score_models`` and ``score_steps`` are the
    score's two knobs: for ``--rank-by lmc`` the parent's replicates and spawn step (and the
    parent's pre-training lr, which only lmc scores use)."""
    return ScoreRequest(dataset=req.dataset, seed=req.seed,
                        label_noise=getattr(req, "label_noise", 0.0),
                        noise_seed=getattr(req, "noise_seed", 0), model=getattr(req, "model", None),
                        batch_size=req.batch_size, lr=getattr(req, "lr", None),
                        kind=req.rank_by,
                        models=req.score_models, steps=req.score_steps,
                        train_steps=req.train_steps,
                        pretrain_lr=getattr(req, "pretrain_lr", None) if req.rank_by == "lmc"
                        else None)


def check_subset(req) -> None:
    """The subset choice and the scores that rank it, checkable without data."""
    from .data.subsets import SCORED, load_array
    from .experiments.scores import SCORES

    SCORES.lookup(req.rank_by)
    least = SCORES[req.rank_by].min_steps
    if req.score_steps is not None and req.score_steps < least:
        raise UserError(f"--score-steps must be >= {least}, got {req.score_steps}")
    req.subset_spec().check()
    if req.subset_file is None and req.subset not in SCORED and req.scores:
        raise UserError(f"--scores ranks {'/'.join(sorted(SCORED))} subsets; --subset "
                        f"{req.subset} has none")
    # the files' format now; their length and range once the dataset is open
    if req.scores is not None and load_array(req.scores, "scores").ndim != 1:
        raise UserError(f"scores file {req.scores} must be a 1-D array")
    if req.subset_file is not None and load_array(req.subset_file, "subset").ndim != 1:
        raise UserError(f"subset file {req.subset_file} must be a 1-D array")


def check_ranking(req) -> None:
    if req.needs_scores():
        score = req.score_request()
        score.check_spawn("--score-steps")  # named as this command's flag
        score.check()


def config(req, subset_identity: dict):
    """The IMP config (its pre-training config inside) that this request's runs are keyed by."""
    from .experiments.imp import ImpConfig, PretrainConfig

    p = req.preset()
    t_r = p.t_star if req.steps is None else req.steps
    pre = PretrainConfig(dataset=req.dataset, recipe=pretrain_recipe(p, t_r),
                         subset=subset_identity, seed=req.seed,
                         label_noise=req.label_noise, noise_seed=req.noise_seed)
    return ImpConfig(pretrain=pre, recipe=train_recipe(p),
                     prune_fraction=getattr(req, "prune_fraction", p.prune_fraction))


def check_pretraining(req) -> None:
    """Everything a pre-training-based request can check without data, so a typo never trains
    or writes anything."""
    from .experiments.imp import check_config
    from .models import resolve

    check_common(req)
    resolve(req.preset().model)
    check_subset(req)
    check_config(req.config({}))
    check_ranking(req)


def check_level(req, level: Optional[int], what: str = "--level") -> None:
    """IMP levels beyond where the weights run out: level k keeps (1 - f)^k of the prunable
    weights; a level that leaves fewer than one weight in the smallest prunable layer of the
    network is refused (no bound was ever meant, and it trains level after level for nothing)."""
    if level is None:
        return
    p = req.preset()
    f = getattr(req, "prune_fraction", p.prune_fraction)
    smallest = smallest_layer(p.model)
    if (1 - f) ** level * smallest < 1:
        last = math.floor(math.log(1 / smallest) / math.log(1 - f))
        raise UserError(f"{what} {level} leaves less than one of the {smallest} weights of "
                        f"{p.model}'s smallest prunable layer (level k keeps "
                        f"{1 - f:g}^k of them): at most {last}")


@functools.lru_cache(maxsize=None)  # a sweep checks every point: build each network once
def smallest_layer(model: str) -> int:
    """Weights of the smallest prunable layer (conv or linear) of a network, built on the CPU
    (milliseconds; not under ``torch.device("meta")``, a torch-function mode whose entry
    imports dynamo: 2.5 s of start-up)."""
    from .models import build
    from .prune.magnitude import is_prunable

    net = build(model, 10, k=1)
    return min(t.numel() for n, t in net.state_dict().items() if is_prunable(n, t))


PRETRAINED = dict(preset=preset, subset_spec=subset_spec, needs_scores=needs_scores,
                  score_request=score_request, config=config)

# ------------------------------------------------------------------------------------------------
# the requests
# ------------------------------------------------------------------------------------------------


def _score_preset(req) -> Preset:
    p = preset(req)
    return dataclasses.replace(p, el2n_model=req.model) if req.model else p


def _score_check(req) -> None:
    from .experiments.scores import SCORES, check_score_request
    from .models import resolve

    check_common(req)
    kind = SCORES.lookup(req.kind)
    for name in req.unused():
        if getattr(req, name) != SCORE_DEFAULTS[name]:
            raise UserError(f"scores {req.kind} does not use {flag(name)} "
                            f"(got {getattr(req, name)!r}): leave it out")
    p = req.preset()
    resolve(p.el2n_model)
    check_score_request(kind.default_models if req.models is None else req.models,
                        kind.default_steps(p) if req.steps is None else req.steps,
                        kind.min_steps)
    req.check_spawn("--steps")
    check_bn(req.bn)


def _check_spawn(req, flag_name: str) -> None:
    """lmc: children train from the spawn step to the end of the schedule, so the spawn step
    must come before it (at or past T they would train nothing: all-zero scores)."""
    if req.kind != "lmc":
        return
    from .experiments.scores import SCORES

    p = req.preset()
    t = SCORES.lookup("lmc").default_steps(p) if req.steps is None else req.steps
    if t >= p.train_steps:
        given = (f"{flag_name} {t} (the lmc spawn step)" if req.steps is not None else
                 f"the lmc spawn step ({flag_name}, default t* = {t})")
        raise UserError(f"{given} must be smaller than the {p.train_steps} "
                        "iterations of training (--train-steps)")


def _score_config(req):
    from .experiments.scores import SCORES, ScoreConfig

    p = req.preset()
    kind = SCORES.lookup(req.kind)
    steps = kind.default_steps(p) if req.steps is None else req.steps
    models = kind.default_models if req.models is None else req.models
    common = dict(score=req.kind, dataset=req.dataset, models=models, seed=req.seed,
                  label_noise=req.label_noise, noise_seed=req.noise_seed)
    if req.kind == "lmc":  # a dense parent pre-trained to t; children to the end
        return ScoreConfig(recipe=train_recipe(p), parent=pretrain_recipe(p, steps),
                           children=req.children, bn=req.bn, **common)
    return ScoreConfig(recipe=score_recipe(p, steps), **common)


SCORE_OWN = [
    ("kind", str, "el2n", Opt("a registered score (el2n, forgetting, lmc, grand, aum, "
                              "train_loss, pred_var) or compare", argument=True)),
    ("models", Optional[int], None,
     Opt("K networks, trained packed, scores average over them (default 10; lmc: replicates "
         "of the parent, default 2)", min=1)),
    ("steps", Optional[int], None,
     Opt("iterations (default: appendix A per dataset; lmc: the spawn step, t*; 0 only for "
         "scores taken at initialisation, e.g. grand)", min=0)),
    ("children", int, 3, Opt("lmc: children per replicate (barriers of every pair)", min=2)),
    ("bn", str, "average", Opt("lmc: BatchNorm at interpolated weights: average (the authors': "
                               "statistics interpolated too) or recompute")),
]
SCORE_DEFAULTS = {"children": 3, "pretrain_lr": None, "bn": "average"}


def check_bn(bn: str) -> None:
    from .experiments.analyses.lmc import BN_KINDS

    if bn not in BN_KINDS:
        raise UserError(f"--bn must be one of {', '.join(BN_KINDS)}, got {bn!r}")


def _score_unused(req) -> tuple[str, ...]:
    """Flags of lmc scores only: el2n / forgetting train ensembles on the training schedule,
    with no parent, so two such requests differing there would be one run (refused)."""
    return () if req.kind == "lmc" else tuple(SCORE_DEFAULTS)
ScoreRequest = compose(
    "ScoreRequest", "scores", "Per-example scores of the train set (float32 .npy, dataset "
    "order); prints its path.",
    [COMMON, with_help(NOISE, label_noise="fraction of labels re-drawn: the score networks "
                                          "train on these labels"),
     MODEL, OVERRIDES, SCORE_OWN,
     with_help(PRETRAIN_LR, pretrain_lr="lmc: override the parent's pre-training lr")],
    dict(preset=_score_preset, check=_score_check, unused=_score_unused, check_spawn=_check_spawn,
         config=_score_config, command=lambda self: f"scores {self.kind}"))

IMP_OWN = [
    ("levels", int, 12, Opt("pruning levels (level k keeps (1 - f)^k of the prunable weights, "
                            "f: --prune-fraction)", min=0)),
    ("prune_fraction", float, 0.2, Opt("f: the fraction of the remaining weights each level "
                                       "prunes (the paper's 0.2)", above=0.0, below=1.0)),
]
PRE_NOISE = with_help(NOISE, label_noise="fraction of labels re-drawn (in pre-training only)")
PRETRAINED_GROUPS = [COMMON, SUBSET, PRETRAINING, PRE_NOISE, RANKING, MODEL, OVERRIDES,
                     PRETRAIN_LR]


def pretrained(name: str, command: str, doc: str, own: list, methods: dict,
               ignores: str = "") -> type:
    """A request of a command that starts from the pre-training imp would run: the shared
    groups around its own flags (a new analysis: this call, and its runner registered with
    ``@api.command``). ``ignores``: flags of the shared groups it leaves out (said in its
    help)."""
    groups = PRETRAINED_GROUPS[:3] + [own, REPLICATES] + PRETRAINED_GROUPS[3:]
    left_out = set(ignores.split())
    groups = [[g for g in group if g[0] not in left_out] for group in groups]
    return compose(name, command, doc, groups, PRETRAINED | methods, ignores)


def level(help: str) -> tuple:
    return ("level", Optional[int], None, Opt(help, min=0))


def _imp_check(req) -> None:
    check_pretraining(req)
    check_level(req, req.levels, "--levels")


ImpRequest = pretrained(
    "ImpRequest", "imp", "IMP with rewinding to t_r after pre-training on a subset; prints "
    "the run directory.", IMP_OWN, dict(check=_imp_check))


def _alpha_values(req) -> tuple[float, ...]:
    try:
        values = tuple(float(a) for a in req.alphas.split(","))
    except ValueError:
        raise UserError(f"--alphas takes numbers separated by commas, got {req.alphas!r}") \
            from None
    if not values or not all(0.0 <= a <= 1.0 for a in values):
        raise UserError(f"--alphas must lie in [0, 1], got {req.alphas!r}")
    return values


def _analysis_check(req) -> None:
    check_pretraining(req)
    check_level(req, req.level)


def _lmc_check(req) -> None:
    _analysis_check(req)
    req.alpha_values()
    check_bn(req.bn)


LmcRequest = pretrained(
    "LmcRequest", "lmc", "Linear mode connectivity of children spawned from the pre-training "
    "point imp would use (or an IMP level); prints the path of the summary JSON (loss_barrier, "
    "error_barrier).",
    [level("spawn from this IMP level's rewound sparse network (default: w_{t_r})"),
     ("children", int, 2, Opt("children per replicate; barriers of every pair", min=2)),
     ("alphas", str, "0.5", Opt("interpolation points, e.g. 0.25,0.5,0.75")),
     ("bn", str, "average", Opt("BatchNorm at interpolated weights: average (the authors': every "
                                "weight and BN buffer interpolated, eval mode) or recompute "
                                "(statistics recomputed on the train set)"))],
    dict(check=_lmc_check, alpha_values=_alpha_values))


def _errors_check(req) -> None:
    _analysis_check(req)
    if req.level is None and req.lr is not None:
        raise UserError("errors does not use --lr without --level: dense errors are measured at "
                        "w_{t_r}, before any training at that lr (leave it out)")


ErrorsRequest = pretrained(
    "ErrorsRequest", "errors", "Per-example errors ‖p − y‖ at the pre-training point imp would "
    "use, dense or projected by an IMP level's mask (Fig. 9); prints the path of the summary "
    "JSON. Without --level, --lr (the training lr) is refused: nothing trains at it.",
    [level("sparse projection: this IMP level's mask on w_{t_r} (default: dense)")],
    dict(check=_errors_check))


def _grads_check(req) -> None:
    check_pretraining(req)
    if req.steps == 0:
        raise UserError("--steps 0 has no pre-training to look at")
    if (req.eval_subset is None) != (req.eval_size is None) and req.eval_subset != "all":
        raise UserError("--eval-subset and --eval-size go together")
    if req.eval_subset is not None:
        req.eval_request().check()


def _eval_request(req):
    """The subset grads also measures accuracy on (Fig. 7a: easy), ranked as this request
    would rank its own (the same scores)."""
    return recast(req, ImpRequest, subset=req.eval_subset, size=req.eval_size, offset=0,
                  subset_file=None, shared_subset=False)


GRADS_OWN = [
    ("coherence_every", int, 10, Opt("steps between coherence measurements", min=1)),
    ("coherence_batches", int, 16, Opt("extra batches per coherence point", min=2, max=4096)),
    ("eval_every", int, 100, Opt("steps between accuracy points (0: none)", min=0)),
    ("eval_subset", Optional[str], None,
     Opt("accuracy also on this subset (Fig. 7a: easy), with --eval-size")),
    ("eval_size", Optional[int], None, Opt("size of --eval-subset", min=1)),
]
GradsRequest = pretrained(
    "GradsRequest", "grads", "Gradient norms, gradient coherence and learning speed during the "
    "pre-training imp would run (Figs. 7-8); prints the path of the summary JSON. It takes no "
    "--lr (the training lr): only pre-training is looked at (--pretrain-lr sets its lr).",
    GRADS_OWN, dict(check=_grads_check, eval_request=_eval_request), ignores="lr")


def _warmup_check(req) -> None:
    from .config import WARMUP_DESIGNS
    from .data.sources import split_name

    check_bounds_of(req)
    if split_name(req.dataset)[0] not in WARMUP_DESIGNS:
        raise UserError(f"the warmup design (appendix A) is for "
                        f"{', '.join(WARMUP_DESIGNS)}; not {req.dataset}")
    if req.warmup == 1:  # the first step is at the peak lr either way
        raise UserError("--warmup 1 is no warmup (a one-iteration ramp starts at the peak lr): "
                        "the run of --warmup 0; use 0 or at least 2")
    if req.train_steps is not None and req.warmup >= req.train_steps:
        raise UserError(f"--warmup {req.warmup} must be shorter than --train-steps "
                        f"{req.train_steps}")
    check_common(req)
    check_subset(req)
    check_ranking(req)


def _warmup_score_request(req) -> "ScoreRequest":
    """Scores as appendix A computes them (the dataset's preset), not with the warmup design's
    batch and lr."""
    return dataclasses.replace(score_request(req), lr=None, batch_size=None, train_steps=None)


def _warmup_recipe(req, train_size: int):
    from .config import warmup_recipe

    return warmup_recipe(req.dataset, train_size, req.warmup, req.batch_size, req.lr,
                         req.train_steps)


def _check_length(req, train_size: int) -> None:
    """Without --train-steps the schedule's length (160 epochs) depends on the train set's size:
    checked once the dataset is open, before any score is computed."""
    steps = req.recipe(train_size).steps
    if req.warmup >= steps:
        raise UserError(f"--warmup {req.warmup} must be shorter than the {steps} iterations of "
                        "training")


def _warmup_config(req, train_size: int, subset_identity: dict):
    from .experiments.warmup import WarmupConfig

    return WarmupConfig(dataset=req.dataset, recipe=req.recipe(train_size),
                        subset=subset_identity, seed=req.seed)


WarmupRequest = compose(
    "WarmupRequest", "warmup", "Learning-rate warmup (appendix A, Fig. 6): the subset during "
    "the warmup only, then all data; prints the run directory (diverged replicates are "
    "results, not errors). The design trains the preset's network on true labels at one lr: "
    "no pre-training, levels, label noise or network override.",
    [COMMON, with_help(SUBSET, subset="the warmup's subset: all, random, easy, hard",
                       subset_file="warm up on these train indices (.npy)"),
     [("warmup", int, 0, Opt("t: linear lr warmup iterations, on the subset", min=0))],
     with_default(REPLICATES, replicates=8), RANKING,
     with_help(OVERRIDES, lr="override the peak lr (3.2)")],
    dict(preset=preset, subset_spec=subset_spec, needs_scores=needs_scores,
         score_request=_warmup_score_request, check=_warmup_check, recipe=_warmup_recipe,
         check_length=_check_length, warmup_config=_warmup_config),
    ignores="label_noise noise_seed model pretrain_lr steps levels")


def recast(req, cls: type, **changes: Any):
    """A request of another command with the flags the two share (and ``changes``): e.g. the
    LMC analysis of an imp request's pre-training point, or the imp run a grads request
    replays."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{f.name: getattr(req, f.name) for f in dataclasses.fields(req)
                  if f.name in names} | changes)
