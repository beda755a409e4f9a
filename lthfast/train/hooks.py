"""Hooks: how an experiment looks inside the training loop without the loop knowing it.

A hook sees every training batch (``on_batch``: logits, labels and dataset indices, for
forgetting counts or per-example statistics) and, when it asks for it, the gradients after the
backward pass (``after_backward``: for gradient norms and coherence). Its ``state_dict`` is
saved in every checkpoint and restored on resume, so a resumed run sees each batch exactly once.
Subclass ``Hook`` and override what you need; the defaults do nothing and cost nothing (the loop
calls ``after_backward`` only for hooks that set ``wants_gradients``).

    python -c "from lthfast.train.hooks import Hook; help(Hook)"
"""

from __future__ import annotations

import torch


class Hook:
    wants_gradients = False  # True: the loop calls after_backward (costs a Python call a step)

    def on_batch(self, step: int, logits: torch.Tensor, labels: torch.Tensor,
                 indices: torch.Tensor) -> None:
        """After the update of ``step``: logits B×K×C (detached), labels and indices B×K."""

    def after_backward(self, step: int, model: torch.nn.Module) -> None:
        """Between backward and the update of ``step``: ``p.grad`` holds this batch's gradients."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""
