"""One training step's device work, as a function of its tensor inputs only: capturable.

``TrainStep(x, y, lr)`` runs forward (under bf16 autocast if asked), the K per-model losses,
backward, and the fused update with the masks folded in, and returns (logits, losses). Every
value it depends on is either one of those three tensors or state at a fixed address (weights,
momentum, masks, BatchNorm buffers); nothing is read from the host and nothing is decided by a
number that changes from step to step. That is what lets ``lthfast.train.capture`` record the
step once as a CUDA graph and replay it with new (x, y, lr), and what its CPU stand-in checks.

    python -c "from lthfast.train.step import TrainStep; help(TrainStep)"
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .optim import FusedSGD


def per_model_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logits B×K×C, y B×K -> mean cross-entropy per model (K,).

    Each model's mean is a reduction over one contiguous row of B losses, the same arithmetic
    whatever K is: a replicate trained alone or packed with others gets bit-identical losses.
    """
    k = logits.shape[1]
    # bf16 logits (autocast) in fp32; fp64 models (tests) keep fp64
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    flat = logits.transpose(0, 1).reshape(-1, logits.shape[-1])  # (K·B)×C, model-major
    losses = F.cross_entropy(flat, y.T.reshape(-1), reduction="none")
    return losses.view(k, -1).mean(1)


class TrainStep:
    """forward, loss, backward, update: ``(x, y, lr) -> (logits, losses)``.

    ``forward`` is the model or its compiled forward; ``after_backward`` (optional) runs between
    backward and update, for hooks that read gradients (a step with one is not captured).
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], opt: FusedSGD,
                 amp: bool, after_backward: Optional[Callable[[], None]] = None):
        self.forward, self.opt, self.amp = forward, opt, amp
        self.after_backward = after_backward
        self.device_type = opt.flat.device.type

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor):
        # cache_enabled=False: autocast's cache of bf16 weight copies outlives the step, which
        # a CUDA graph cannot allow (and each weight is cast once per step anyway)
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.amp,
                            cache_enabled=False):
            logits = self.forward(x)
        losses = per_model_loss(logits, y)
        losses.sum().backward()  # sum over models: each model's gradient is its own mean loss's
        if self.after_backward is not None:
            self.after_backward()
        self.opt.step(lr)
        return logits.detach(), losses.detach()
