"""AUM, area under the margin (Pleiss et al. 2020): the assigned-class logit minus the largest
other logit, averaged over the training steps at which the example is drawn, then over K
networks. Higher: easier (a negative AUM marks an example the networks keep calling another
class: mislabelled or ambiguous), so the registry entry says ``easy="high"``.

A training hook (``PresentationMean``) reads the logits each step already computed (augmented,
BatchNorm in train mode): no extra passes. Default length: up to the first drop of the learning
rate (Pleiss et al. compute it before the first drop, while examples are not yet memorised);
``--steps`` sets it. An example a network never drew (fewer steps than an epoch) scores as that
network's smallest margin, with a warning.

    lthfast scores aum --dataset digits --models 4 --steps 100
"""

from __future__ import annotations

import torch

from ..scores import SCORES, PresentationMean, ScoreKind


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logits ...×C, labels ... -> assigned logit minus the largest other logit."""
    assigned = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, y.unsqueeze(-1), float("-inf"))
    return assigned - others.amax(-1)


def aum_hooks(ctx, cfg, data, k):
    return [PresentationMean(k, ctx.ds.train_size, ctx.device, margin)]


def aum_per_model(ctx, model, hooks, data):
    return hooks[0].per_model("min", "aum")


SCORES.register("aum")(ScoreKind(
    default_steps=lambda p: p.milestones[0] if p.milestones else p.train_steps,
    per_model=aum_per_model, hooks=aum_hooks, easy="high", reference="Pleiss et al. 2020"))
