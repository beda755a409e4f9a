"""SGD for K packed models, each with its own learning rate and weight decay.

For a packed parameter p (model k owns rows k·r .. (k+1)·r − 1 of its leading dimension), with
model k's lr η_k and weight decay λ_k, ``PackedSGD.step`` applies torch.optim.SGD's update
(momentum μ, no dampening, no Nesterov) to model k's rows:

    d = ∇p + λ_k p;   b = μ b + d   (b = d at the first step);   p ← p − η_k b

so packed models with different hyperparameters (warmup sweeps, lr grids) train exactly as K
separate ``torch.optim.SGD`` runs would. ``make_optimizer`` returns plain ``torch.optim.SGD``
when all K share lr and weight decay (its fused multi-tensor paths are faster), and
``PackedSGD`` otherwise; both keep the same state_dict layout (``momentum_buffer`` per
parameter), so masks and checkpoints treat them alike.

    python -c "import lthfast.train.optim as o; help(o.PackedSGD)"
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch


class PackedSGD(torch.optim.Optimizer):
    """SGD whose lr and weight decay are per packed model, given to ``step`` as K-vectors."""

    def __init__(self, params: Iterable[torch.nn.Parameter], k: int, momentum: float = 0.9):
        super().__init__(params, {"lr": 0.0, "momentum": momentum, "weight_decay": 0.0})
        self.k = k

    def _as_tensors(self, lrs, weight_decays, like: torch.Tensor):
        """The K-vectors on the device, copied only when they change (a copy to a GPU from
        pageable memory waits for the GPU): schedules change lr at milestones and in warmup."""
        key = (tuple(lrs), tuple(weight_decays), like.device, like.dtype)
        if getattr(self, "_cached_key", None) != key:
            self._cached_key = key
            self._cached = (torch.tensor(key[0], dtype=like.dtype, device=like.device),
                            torch.tensor(key[1], dtype=like.dtype, device=like.device))
        return self._cached

    def _per_row(self, values: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """K values -> one per leading row of p, shaped to broadcast over p."""
        rows = p.shape[0] // self.k
        return values.repeat_interleave(rows).view(-1, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def step(self, lrs: Sequence[float], weight_decays: Sequence[float]) -> None:  # type: ignore[override]
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, wd = self._as_tensors(lrs, weight_decays, params[0])
            for p in params:
                d = p.grad.addcmul(p, self._per_row(wd, p))
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d)
                p.addcmul_(buf, self._per_row(lr, p), value=-1.0)


def make_optimizer(params: Iterable[torch.nn.Parameter], k: int, lrs: Sequence[float],
                   momentum: float, weight_decays: Sequence[float]) -> torch.optim.Optimizer:
    """torch.optim.SGD when the K models share lr and weight decay, else PackedSGD."""
    if len(set(lrs)) == 1 and len(set(weight_decays)) == 1:
        return torch.optim.SGD(params, lr=lrs[0], momentum=momentum,
                               weight_decay=weight_decays[0])
    return PackedSGD(params, k, momentum)


def optimizer_step(opt: torch.optim.Optimizer, lrs: Sequence[float],
                   weight_decays: Sequence[float]) -> None:
    """One update at this step's lrs (one per model; equal for torch.optim.SGD)."""
    if isinstance(opt, PackedSGD):
        opt.step(lrs, weight_decays)
        return
    for group in opt.param_groups:
        group["lr"] = lrs[0]
    opt.step()
