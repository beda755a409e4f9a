"""The Python API: what the CLI, the sweeps and a notebook call.

Each experiment is a frozen request (the flags a user sets, with the CLI's names and defaults)
and one function that checks it whole, before any data is built or any file written, then
ensures what it depends on and runs it. ``imp`` computes missing EL2N (forgetting, LMC) scores
for easy / hard subsets, then pre-trains and prunes, and returns the run store's ``Run``;
``scores`` returns a score file; the analyses (``lmc``, ``errors``, ``grads``) start from the
pre-training point (or IMP level) that ``imp`` with the same flags uses and return their summary
JSON; ``warmup`` returns its run directory. ``COMMANDS`` is the one table of commands: each
runner is registered by ``@command(ItsRequest)`` (the CLI, sweeps and smoke scale read it).
``request_from`` builds any request from plain values with every value checked against its
field's type (what sweep files go through).

    from lthfast import api
    rt = api.runtime(out="runs", device="cpu")
    run = api.imp(api.ImpRequest(dataset="digits", subset="random", size=256, steps=20,
                                 levels=3, replicates=2), rt)
    print(run.path, [r.test_acc for r in run.records()])
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from .errors import UserError
from .experiments.common import Context, Runtime, setup_torch
from .options import aliases, flag, opts
from .registry import Registry
from .requests import (ErrorsRequest, GradsRequest, ImpRequest, LmcRequest, ScoreRequest,
                       WarmupRequest, recast)
from .runs import Run
from .runtime import runtime, sweep_flags, with_flags

__all__ = ["ErrorsRequest", "GradsRequest", "ImpRequest", "LmcRequest", "ScoreRequest",
           "WarmupRequest", "COMMANDS", "REQUESTS", "RUNNERS", "recast", "runtime", "with_flags",
           "request_from"]

# Datasets that need no download or source: built on first use (and synthetic variants named
# with their options, ``synthetic:train=2000``: see ``built_on_first_use``).
EMBEDDED = ("digits",)


def built_on_first_use(dataset: str) -> bool:
    from .data.sources import split_name

    return dataset in EMBEDDED or split_name(dataset)[1] is not None
# Runtime flags a sweep may set per run (how to run, not what), by name: their types
RUNTIME_FLAGS = {name: option.hint for name, option in sweep_flags().items()}


@dataclass(frozen=True)
class Command:
    """A training command: the request it takes (its flags, ``lthfast.requests``) and the
    function that runs a request; called, it returns the artifact's path (what the CLI prints
    and a sweep records)."""

    request: type
    run: Callable[[Any, Runtime], Any]
    artifact: Callable[[Any], Path] = lambda result: result  # the path in what ``run`` returns

    def __call__(self, req, rt: Runtime) -> Path:
        return self.artifact(self.run(req, rt))


# The one table of commands: command name -> Command, filled by ``@command(Request)`` on each
# runner below, so a new command is its request (``requests.py``) and one decorated function
# here. The CLI, sweep files, smoke scale and the sweep launchers all read it.
COMMANDS = Registry("command")


def command(request: type, artifact: Callable[[Any], Path] = lambda result: result):
    """Registers the decorated function as the runner of ``request``'s command (its name:
    ``request.COMMAND``)."""
    def decorate(run: Callable) -> Callable:
        if request.COMMAND in COMMANDS:
            raise ValueError(f"command {request.COMMAND!r} registered twice")
        COMMANDS.register(request.COMMAND)(Command(request, run, artifact))
        return run
    return decorate


class _Column(Mapping):
    """One column of ``COMMANDS`` as a read-only mapping, by command name (always current)."""

    def __init__(self, column: str):
        self.column = column

    def __getitem__(self, name: str):
        return getattr(COMMANDS[name], self.column)

    def __iter__(self) -> Iterator[str]:
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)

    def __repr__(self) -> str:
        return repr(dict(self))


REQUESTS: Mapping[str, type] = _Column("request")  # command -> request class
RUNNERS: Mapping[str, Command] = COMMANDS  # command -> fn(request, runtime) -> artifact path


def checked(req, rt: Runtime):
    """The request checked whole, and against the device's memory (``memory.check_fits``):
    what every experiment function does before any data is opened or file written."""
    from .memory import check_fits

    req.check()
    check_fits(req, rt.device)
    return req


def open_data(root: str | Path, dataset: str):
    """A built dataset; the embedded ones are built on first use (arrays only: the betons,
    which only ``--loader ffcv`` reads, are written when it first does)."""
    from .data.arrays import open_dataset
    from .data.build import build_dataset
    from .data.sources import get_source

    get_source(dataset)
    if built_on_first_use(dataset) and not (Path(root) / dataset / "meta.json").exists():
        build_dataset(dataset, Path(root), betons=False)
    return open_dataset(root, dataset)


def context(rt: Runtime, dataset: str) -> Context:
    setup_torch(rt)  # also: this run starts from a clean torch global state
    return Context(rt, open_data(rt.root, dataset))


@command(ImpRequest, artifact=lambda run: run.path)
def imp(req: ImpRequest, rt: Runtime) -> Run:
    """IMP after pre-training on the requested subset; computes missing scores first."""
    from .experiments.imp import run_imp

    checked(req, rt)
    ctx, spec, cfg = _prepared(req, rt)
    return run_imp(ctx, cfg, spec, req.levels, req.replicates)


@command(ScoreRequest)
def scores(req: ScoreRequest, rt: Runtime) -> Path:
    """Per-example scores (float32 .npy in dataset order), computed once; returns the path."""
    from .data.streams import check_loader
    from .experiments.scores import compute_scores

    checked(req, rt)
    ctx = context(rt, req.dataset)
    check_loader(rt.loader, ctx.ds, req.label_noise, rt.deterministic)
    return compute_scores(ctx, req.config())


@command(LmcRequest)
def lmc(req: LmcRequest, rt: Runtime) -> Path:
    """Barriers between children of the requested parent; returns the summary JSON's path."""
    from .experiments.analyses import lmc as analysis
    from .experiments.imp import parent

    checked(req, rt)
    ctx, spec, cfg = _prepared(req, rt)
    parent = parent(ctx, cfg, spec, req.level, req.replicates)
    lcfg = analysis.LmcConfig(recipe=cfg.recipe, start=cfg.pretrain.recipe.steps,
                              children=req.children, alphas=req.alpha_values(), level=req.level,
                              seed=req.seed, bn=req.bn)
    return analysis.write_summary(parent, lcfg, analysis.run(ctx, parent, lcfg))


@command(ErrorsRequest)
def errors(req: ErrorsRequest, rt: Runtime) -> Path:
    """Per-example ‖p − y‖ at the pre-training point; returns the summary JSON's path."""
    from .experiments.analyses import errors as analysis
    from .experiments.imp import parent

    checked(req, rt)
    ctx, spec, cfg = _prepared(req, rt)
    parent = parent(ctx, cfg, spec, req.level, req.replicates)
    pre = ctx.store.run("pretrain", cfg.pretrain)
    diverged = {r: pre.stage(r).record().diverged for r in parent.states}
    return analysis.run(ctx, parent.run, parent.states, req.level, cfg.pretrain.recipe.steps,
                        diverged)


@command(GradsRequest)
def grads(req: GradsRequest, rt: Runtime) -> Path:
    """Replays the pre-training with gradient statistics; returns the summary JSON's path."""
    from .experiments.analyses import grads as analysis
    from .experiments.imp import pretrain_seeds, subset_of

    checked(req, rt)
    ctx, spec, cfg = _prepared(req, rt)
    pre = ctx.store.run("pretrain", cfg.pretrain).create()

    def seeds_of(r: int):
        return pretrain_seeds(cfg.pretrain.seed, r)

    subsets = {r: subset_of(ctx, spec, r) for r in range(req.replicates)}
    eval_spec = eval_subsets = None
    if req.eval_subset is not None:  # Fig. 7a: accuracy also on the easy subset
        _, eval_spec, _ = _prepared(req.eval_request(), rt, ctx)
        eval_subsets = {r: subset_of(ctx, eval_spec, r) for r in range(req.replicates)}
    return analysis.run(ctx, pre, cfg.pretrain.recipe,
                        ctx.train_split(cfg.pretrain.label_noise, cfg.pretrain.noise_seed),
                        seeds_of, subsets, analysis.GradsConfig(
                            req.coherence_every, req.coherence_batches, req.eval_every,
                            eval_spec.identity() if eval_spec is not None else None),
                        seed=cfg.pretrain.seed, eval_subsets=eval_subsets)


@command(WarmupRequest)
def warmup(req: WarmupRequest, rt: Runtime) -> Path:
    """Train with warmup on the subset, then all data; returns the run directory."""
    from .experiments.warmup import run_warmup

    checked(req, rt)
    ctx = context(rt, req.dataset)
    req.check_length(ctx.ds.train_size)  # before the scores that rank its subset are trained
    ctx, spec, _ = _subset(req, rt, ctx)
    cfg = req.warmup_config(ctx.ds.train_size, spec.identity())
    return run_warmup(ctx, cfg, spec, req.replicates).path


def _subset(req, rt: Runtime, ctx: Optional[Context] = None):
    """Context, subset spec and subset of a checked request (scores computed when missing)."""
    from .data.streams import check_loader
    from .data.subsets import check_fits, make_subset
    from .experiments.scores import compute_scores

    ctx = context(rt, req.dataset) if ctx is None else ctx
    check_loader(rt.loader, ctx.ds, getattr(req, "label_noise", 0.0), rt.deterministic)
    check_fits(ctx.ds, req.subset_spec())  # size and offset: before scores train to rank it
    score_path = compute_scores(ctx, req.score_request().config()) if req.needs_scores() else None
    spec = req.subset_spec(score_path)
    return ctx, spec, make_subset(ctx.ds, spec)  # a subset that cannot be made fails here


def _prepared(req: ImpRequest, rt: Runtime, ctx: Optional[Context] = None):
    """Context, subset and IMP config of a checked request (scores computed when missing)."""
    ctx, spec, subset = _subset(req, rt, ctx)
    cfg = req.config(spec.identity())
    batch = cfg.pretrain.recipe.batch_size
    if cfg.pretrain.recipe.steps and batch > len(subset):
        print(f"warning: batch size {batch} exceeds the {len(subset)} pre-training examples: "
              "every batch repeats examples", file=sys.stderr)
    return ctx, spec, cfg


def imp_many(reqs: Sequence[ImpRequest], rt: Runtime) -> list[Run]:
    """Several IMP requests at once, packed across runs (``run_imps``): on one dataset, every
    pre-training and every level whose recipes have the same shape trains as one model.
    Returns the runs in request order; the results equal those of ``imp`` one by one."""
    for req in reqs:
        if not isinstance(req, ImpRequest):
            raise UserError(f"imp_many takes imp requests, not a {type(req).__name__}")
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
    checked(req, rt)
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


def request_from(command: str, values: dict[str, Any], rt: Optional[Runtime] = None):
    """A checked request and its runtime flags from plain values, e.g. one grid point of a sweep
    file: each value checked against its field's type and bounds, a flag's old name
    (``Opt.aliases``) read as its name. The runtime flags are checked as ``runtime`` checks
    them; with ``rt`` (the sweep's device known) also in combination with it (``with_flags``)."""
    cls = COMMANDS.lookup(command).request
    names = {o.name for o in opts(cls)}
    renamed = aliases(cls)
    runtime = sweep_flags()
    # flags of other commands, at their default: the value a request without them stands for
    known: dict[str, list] = {}
    for option in (o for c in REQUESTS.values() for o in opts(c)):
        known.setdefault(option.name, []).append(option.default)
    fields, flags = {}, {}
    for name, value in values.items():
        if "-" in name and name.replace("-", "_") in names | set(runtime) | set(renamed):
            raise UserError(f"'{name}': sweep files name flags with underscores: use "
                            f"{name.replace('-', '_')}")
        name = renamed.get(name, name)
        if name in names:
            if name in fields:
                raise UserError(f"{flag(name)} given twice (once by an old name)")
            fields[name] = value
        elif name in runtime:
            flags[name] = value
        elif name in known and any(value == d and type(value) is type(d) for d in known[name]):
            continue
        elif name in known:
            raise UserError(f"{command} does not use {flag(name)} (got {value!r}): leave it out")
        else:
            raise UserError(f"'{command}' has no flag {flag(name)}")
    request = cls(**fields)
    request.check()
    # Without the sweep's runtime (a file being loaded: its device not known yet) the flags are
    # checked on "cuda", which allows every flag: only what does not depend on the device
    # fails here; the sweep checks every point again with its runtime before the first run.
    with_flags(Runtime(device="cuda") if rt is None else rt, flags)
    return request, flags
