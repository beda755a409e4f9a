"""The one training loop: SGD on K packed models, masks honoured, checkpointed, resumable.

Every experiment (IMP pre-training and levels, EL2N ensembles, forgetting, ...) calls ``train``.
It runs iterations [start_step, end_step) of a schedule, so a rewound network resumes the
schedule at t_r exactly as IMP requires. Data come from a ``BatchStream`` whose batches are a pure
function of the step, so a checkpoint needs only weights, optimizer state, step and metrics to
resume bit-exactly; it also holds the pruning masks (a checkpoint resumes only the run it was
written for) and torch's RNG state (for hooks or layers that draw from it).

Each packed model may have its own schedule and weight decay (``LoopConfig`` takes a tuple of
them); the update is then ``lthfast.train.optim.PackedSGD``, otherwise ``torch.optim.SGD``.

Speed choices and why:
- data are already on the device, augmented per batch (see ``lthfast.data.loader``);
- channels_last activations (the loader emits them): faster convs on GPU and on oneDNN;
- bf16 autocast on CUDA only, with fp32 master weights (fp16/bf16 weights would round away the
  1e-4 weight decay); under autocast BatchNorm keeps fp32 running statistics but returns bf16
  activations, and the loss is computed from fp32 logits;
- optional ``torch.compile`` of the model (default on for CUDA);
- no host sync in the step: losses and the divergence flag accumulate on the device and are read
  only every ``log_every`` steps.

    python -c "import lthfast.train.loop as l; help(l.train)"
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..prune.magnitude import Masks
from . import checkpoint as ckpt
from .hooks import Hook
from .optim import make_optimizer, optimizer_step
from .schedule import Schedule

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
    checkpoint_every: int = 0  # 0: no periodic checkpoints
    compile: bool = False
    amp: bool = False  # bf16 autocast; only used on CUDA

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
    diverged: list[Optional[dict]] = field(default_factory=list)  # per model: None or {step, last_finite_loss}
    log: list[dict] = field(default_factory=list)
    optimizer_state: Optional[dict] = None  # momentum buffers at ``step``, to continue from

    @property
    def all_diverged(self) -> bool:
        return bool(self.diverged) and all(d is not None for d in self.diverged)


def apply_masks(model: torch.nn.Module, masks: Optional[Masks],
                optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """Zero pruned weights and their momentum, so they stay exactly zero after every update."""
    if not masks:
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            p = params[name]
            p.mul_(mask)
            if optimizer is not None:
                buf = optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    buf.mul_(mask)


def check_same_masks(saved: Optional[Masks], given: Optional[Masks], path: Path) -> None:
    """A checkpoint resumes only the run it belongs to: same pruning masks, or none."""
    same = (not saved and not given) or (
        bool(saved) and bool(given) and saved.keys() == given.keys()
        and all(torch.equal(saved[n].to(given[n].device), given[n]) for n in given))
    if not same:
        raise UserError(f"checkpoint {path} was written under other pruning masks; delete it "
                        f"to train this stage from its start")


def per_model_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logits B×K×C, y B×K -> mean cross-entropy per model (K,).

    Each model's mean is a reduction over one contiguous row of B losses, the same arithmetic
    whatever K is: a replicate trained alone or packed with others gets bit-identical losses.
    """
    k = logits.shape[1]
    flat = logits.float().transpose(0, 1).reshape(-1, logits.shape[-1])  # (K·B)×C, model-major
    losses = F.cross_entropy(flat, y.T.reshape(-1), reduction="none")
    return losses.view(k, -1).mean(1)


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
    lrs_at = lambda t: [s.lr_at(t) for s in schedules]
    opt = make_optimizer(model.parameters(), k, lrs_at(cfg.start_step), cfg.momentum, decays)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    step = cfg.start_step
    loss_sum = torch.zeros(k, device=device)
    loss_count = torch.zeros(k, device=device)  # finite losses only: a diverged model's mean
    # is over the steps it still had a loss, not diluted by the steps after
    # Divergence bookkeeping stays on the device: the first non-finite step of each model and
    # its loss one step before (NaN: the model never had a finite loss in this run).
    first_bad = torch.full((k,), -1, dtype=torch.long, device=device)
    last_finite = torch.full((k,), math.nan, device=device)
    result = LoopResult(step=step, mean_losses=[math.nan] * k, diverged=[None] * k)

    state = ckpt.load_resumable(checkpoint_path, map_location=device) if checkpoint_path else None
    if state is not None:
        if "masks" in state:  # checkpoints from before masks were saved resume unchecked
            check_same_masks(state["masks"], masks, checkpoint_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, loss_count = state["step"], state["loss_count"].to(device)
        loss_sum, first_bad = state["loss_sum"].to(device), state["first_bad"].to(device)
        last_finite = state["last_finite"].to(device)
        result.log, result.diverged = state["log"], state["diverged"]
        for hook, hook_state in zip(hooks, state["hooks"]):
            hook.load_state_dict(hook_state)
        if state.get("rng") is not None:
            torch.set_rng_state(state["rng"].cpu())
    apply_masks(model, masks, opt)
    param_dtype = next(model.parameters()).dtype  # float32; tests also train in float64

    forward = torch.compile(model) if cfg.compile else model
    use_amp = cfg.amp and device.type == "cuda"
    grad_hooks = [h for h in hooks if h.wants_gradients]
    model.train()
    while step < cfg.end_step:
        lrs = lrs_at(step)
        x, y, idx = stream.batch(step)
        x = x.to(param_dtype)  # a no-op unless the model is not float32
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = forward(x)
        losses = per_model_loss(logits, y)
        losses.sum().backward()  # sum over models: each model's gradient is its own mean loss's
        for hook in grad_hooks:
            hook.after_backward(step, model)
        optimizer_step(opt, lrs, decays)
        opt.zero_grad(set_to_none=True)
        apply_masks(model, masks, opt)
        if hooks:
            detached_logits = logits.detach()
            for hook in hooks:
                hook.on_batch(step, detached_logits, y, idx)

        detached = losses.detach()
        bad = ~torch.isfinite(detached)
        healthy = first_bad < 0
        first_bad = torch.where(bad & healthy, torch.full_like(first_bad, step), first_bad)
        last_finite = torch.where(healthy & ~bad, detached.to(last_finite.dtype), last_finite)
        loss_sum += torch.where(bad, torch.zeros_like(detached), detached)
        loss_count += (~bad).to(loss_count.dtype)
        step += 1

        at_log = step % cfg.log_every == 0 or step == cfg.end_step
        if at_log:  # the only host sync in the loop
            means = (loss_sum / loss_count).tolist()  # NaN for a model with no finite loss
            bad_steps, finite = first_bad.tolist(), last_finite.tolist()
            for m in range(k):
                if bad_steps[m] >= 0 and result.diverged[m] is None:
                    lf = finite[m] if math.isfinite(finite[m]) else None
                    result.diverged[m] = {"step": bad_steps[m], "last_finite_loss": lf}
            lr = lrs[0] if len(set(lrs)) == 1 else lrs  # a list only when the models differ
            result.log.append({"step": step, "lr": lr, "loss": means})
            result.mean_losses = means
            loss_sum.zero_()
            loss_count.zero_()
            if progress is not None:
                progress(step, cfg.end_step, means)
            if result.all_diverged:
                break
        if checkpoint_path is not None and cfg.checkpoint_every and (
                step % cfg.checkpoint_every == 0) and step < cfg.end_step:
            ckpt.save(checkpoint_path, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "loss_sum": loss_sum, "loss_count": loss_count, "first_bad": first_bad,
                "log": result.log, "last_finite": last_finite, "diverged": result.diverged,
                "hooks": [hook.state_dict() for hook in hooks],
                # nothing in the step draws from torch's RNG today (batches are a function of
                # the step); saved so that a hook or layer that does resumes identically too
                "rng": torch.get_rng_state(), "masks": masks})
    result.step = step
    result.optimizer_state = opt.state_dict()
    return result
