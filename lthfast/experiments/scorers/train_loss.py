"""Loss dynamics: each example's cross-entropy in the training forward, averaged over the steps
at which it is drawn during a whole training run (default T, the schedule), then over K
networks. Higher: harder. The cheapest score of all: a hook on the logits the steps already
computed (``PresentationMean``), no extra pass. Examples a network never drew (fewer steps than
an epoch) score as its largest loss, with a warning.

    lthfast scores train_loss --dataset digits --models 4 --steps 100
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..scores import SCORES, PresentationMean, ScoreKind


def example_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logits B×K×C, labels B×K -> cross-entropy B×K."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                           reduction="none").view(y.shape)


def loss_hooks(ctx, cfg, data, k):
    return [PresentationMean(k, ctx.ds.train_size, ctx.device, example_loss)]


def loss_per_model(ctx, model, hooks, data):
    return hooks[0].per_model("max", "train_loss")


SCORES.register("train_loss")(ScoreKind(default_steps=lambda p: p.train_steps,
                                        per_model=loss_per_model, hooks=loss_hooks,
                                        reference="mean training loss (loss dynamics)"))
