"""The one training loop: SGD on K packed models, masks honoured, checkpointed, resumable.

Every experiment (IMP pre-training and levels, EL2N ensembles, forgetting, ...) calls ``train``.
It runs iterations [start_step, end_step) of a schedule, so a rewound network resumes the
schedule at t_r exactly as IMP requires. Data come from a ``BatchStream`` whose batches are a pure
function of the step, so a checkpoint needs only weights, optimizer state, step and metrics to
resume bit-exactly; it also holds the pruning masks (a checkpoint resumes only the run it was
written for) and torch's RNG state (for hooks or layers that draw from it).

Each packed model may have its own schedule and weight decay (``LoopConfig`` takes a tuple of
them). The update is ``lthfast.train.optim.FusedSGD``: torch.optim.SGD's arithmetic as a few
whole-model ops, with the pruning masks folded in.

Speed choices and why:
- data are already on the device, augmented per batch (see ``lthfast.data.loader``);
- channels_last activations (the loader emits them): faster convs on GPU and on oneDNN;
- bf16 autocast when ``amp`` is set (the runtime sets it on CUDA; the CPU runs it only when
  asked, as a test does), with fp32 master weights (fp16/bf16 weights would round away the 1e-4
  weight decay). Under autocast, convolutions and the linear layer run in bf16; BatchNorm
  normalises in fp32 and keeps fp32 running statistics, but returns bf16 activations (the dtype
  of its input); the loss is computed from the logits cast to fp32;
- optional ``torch.compile`` of the forward, once per process (``lthfast.train.compiled``);
- no host sync in the step: the K losses go to a device buffer, read every ``log_every`` steps
  (``lthfast.train.tracker``); the learning rates of the whole stage are one device table
  (``lthfast.train.schedule.lr_table``), a row of which each step reads;
- the step itself (``lthfast.train.step.TrainStep``) depends only on its tensor inputs, so with
  ``capture`` it is recorded once as a CUDA graph and replayed (``lthfast.train.capture``);
- checkpoints by wall time (``checkpoint_seconds``) and/or every ``checkpoint_every`` steps.

    python -c "import lthfast.train.loop as l; help(l.train)"
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from ..errors import UserError
from ..prune.magnitude import Masks
from . import checkpoint as ckpt
from .capture import CapturedStep, capture_graph
from .compiled import compiled_forward
from .hooks import Hook
from .optim import FusedSGD, masks_for
from .schedule import Schedule, lr_table
from .step import TrainStep
from .tracker import LossTracker

# progress(step, end_step, per-model mean losses or None)
Progress = Callable[[int, int, Optional[list[float]]], None]


@dataclass(frozen=True)
class LoopConfig:
    """One schedule and weight decay for all K models, or a tuple with one per model."""

    schedule: Union[Schedule, tuple[Schedule, ...]]
    start_step: int
    end_step: int
    momentum: float = 0.9
    weight_decay: Union[float, tuple[float, ...]] = 1e-4
    log_every: int = 100
    checkpoint_every: int = 0  # steps between checkpoints; 0: not by steps
    checkpoint_seconds: float = 0.0  # wall time between checkpoints; 0: not by time
    compile: bool = False
    amp: bool = False  # bf16 autocast (on any device: the runtime decides when)
    capture: bool = False  # replay the step as a CUDA graph (on CUDA; not with hooks: a notice)
    capture_required: bool = True  # a failed capture is an error (False: a notice, then eager)

    def per_model(self, k: int) -> tuple[list[Schedule], list[float]]:
        """K schedules and K weight decays."""
        schedules = self.schedule if isinstance(self.schedule, tuple) else (self.schedule,) * k
        decays = (self.weight_decay if isinstance(self.weight_decay, tuple)
                  else (self.weight_decay,) * k)
        if len(schedules) != k or len(decays) != k:
            raise ValueError(f"{len(schedules)} schedules and {len(decays)} weight decays "
                             f"for {k} models")
        return list(schedules), [float(d) for d in decays]


@dataclass
class LoopResult:
    step: int
    mean_losses: list[float]  # per model, mean finite loss over the last logging window
    # per model: None or {step, last_finite_loss}
    diverged: list[Optional[dict]] = field(default_factory=list)
    log: list[dict] = field(default_factory=list)
    optimizer_state: Optional[dict] = None  # momentum buffers at ``step``, to continue from
    captured: bool = False  # whether the steps were replayed from a CUDA graph (or its stand-in)

    @property
    def all_diverged(self) -> bool:
        return bool(self.diverged) and all(d is not None for d in self.diverged)


def apply_masks(model: torch.nn.Module, masks: Optional[Masks]) -> None:
    """Zero pruned weights (training keeps them zero: ``FusedSGD`` masks every update)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in (masks or {}).items():
            params[name].mul_(mask)


def check_same_masks(saved: Optional[Masks], given: Optional[Masks], path: Path) -> None:
    """A checkpoint resumes only the run it belongs to: same pruning masks, or none."""
    same = (not saved and not given) or (
        bool(saved) and bool(given) and saved.keys() == given.keys()
        and all(torch.equal(saved[n].to(given[n].device), given[n]) for n in given))
    if not same:
        raise UserError(f"checkpoint {path} was written under other pruning masks; delete it "
                        f"to train this stage from its start")


def train(model: torch.nn.Module, stream, cfg: LoopConfig, masks: Optional[Masks] = None,
          checkpoint_path: Optional[Path] = None, hooks: Sequence[Hook] = (),
          progress: Optional[Progress] = None,
          optimizer_state: Optional[dict] = None) -> LoopResult:
    """Train ``model`` in place over iterations [cfg.start_step, cfg.end_step).

    The optimizer starts from ``optimizer_state`` (a ``LoopResult.optimizer_state``) if given,
    else with no momentum, as a rewound network does; a checkpoint, if there is one, wins.
    Each hook's state is checkpointed with the model, so resumed runs see every batch once.
    """
    device = next(model.parameters()).device
    k = stream.k
    schedules, decays = cfg.per_model(k)

    def lrs_at(t):
        return [s.lr_at(t) for s in schedules]

    step = cfg.start_step
    tracker = LossTracker(k, cfg.log_every, device, step)
    result = LoopResult(step=step, mean_losses=[math.nan] * k, diverged=[None] * k)

    state = ckpt.load_resumable(checkpoint_path, map_location=device) if checkpoint_path else None
    if state is not None and "tracker" not in state:
        warnings.warn(f"{checkpoint_path} was written by an older lthfast; training this stage "
                      f"from its start")
        state = None
    if state is not None:
        check_same_masks(state["masks"], masks, checkpoint_path)
        model.load_state_dict(state["model"])
        step, result.log = state["step"], state["log"]
        tracker.load_state_dict(state["tracker"])
        for hook, hook_state in zip(hooks, state["hooks"]):
            hook.load_state_dict(hook_state)
        if state.get("rng") is not None:
            torch.set_rng_state(state["rng"].cpu())
        optimizer_state = state["optimizer"]
    param_dtype = next(model.parameters()).dtype  # float32; tests also train in float64
    # made after the model's weights are final: it keeps a master copy of them (masked)
    opt = FusedSGD(list(model.parameters()), k, cfg.momentum, masks_for(model, masks), decays)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    lrs = lr_table(schedules, cfg.start_step, cfg.end_step, param_dtype, device)  # row per step

    def after_backward():  # gradient hooks see the step being taken (the closure reads it)
        for hook in grad_hooks:
            hook.after_backward(step, model)

    grad_hooks = [h for h in hooks if h.wants_gradients]
    forward = compiled_forward(model, "train") if cfg.compile else model
    run_step = TrainStep(forward, opt, cfg.amp, after_backward if grad_hooks else None)
    graph = capture_graph(device, hooks) if cfg.capture else None  # hooks run on the host
    if graph is not None:
        run_step = CapturedStep(run_step, graph(), opt.params, required=cfg.capture_required)
    saved_at = time.monotonic()
    model.train()
    while step < cfg.end_step:
        x, y, idx = stream.batch(step)
        # x.to: a no-op unless the model is not float32
        logits, losses = run_step(x.to(param_dtype), y, lrs[step - cfg.start_step])
        for hook in hooks:
            hook.on_batch(step, logits, y, idx)
        tracker.record(losses)
        step += 1

        if step % cfg.log_every == 0 or step == cfg.end_step:  # the only host sync in the loop
            means = tracker.read()
            result.diverged = list(tracker.diverged)
            taken = lrs_at(step - 1)  # the step just taken
            lr = taken[0] if len(set(taken)) == 1 else taken  # a list only when the models differ
            result.log.append({"step": step, "lr": lr, "loss": means})
            result.mean_losses = means
            if progress is not None:
                progress(step, cfg.end_step, means)
            if result.all_diverged:
                break
        if checkpoint_path is not None and step < cfg.end_step and checkpoint_due(
                cfg, step, saved_at):
            ckpt.save(checkpoint_path, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "tracker": tracker.state_dict(), "log": result.log,
                "hooks": [hook.state_dict() for hook in hooks],
                # nothing in the step draws from torch's RNG today (batches are a function of
                # the step); saved so that a hook or layer that does resumes identically too
                "rng": torch.get_rng_state(), "masks": masks})
            saved_at = time.monotonic()
    result.step = step
    result.diverged = list(tracker.diverged)
    result.optimizer_state = opt.state_dict()
    result.captured = isinstance(run_step, CapturedStep) and run_step.captured
    return result


def checkpoint_due(cfg: LoopConfig, step: int, saved_at: float) -> bool:
    """Every ``checkpoint_every`` steps, and every ``checkpoint_seconds`` of wall time."""
    by_step = cfg.checkpoint_every and step % cfg.checkpoint_every == 0
    by_time = cfg.checkpoint_seconds and time.monotonic() - saved_at >= cfg.checkpoint_seconds
    return bool(by_step or by_time)
