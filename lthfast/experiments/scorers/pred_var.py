"""Prediction variance across checkpoints: the standard deviation over ``CHECKPOINTS`` evenly
spaced points of a training run of the probability a network gives the assigned class
(un-augmented images, BatchNorm in eval mode), averaged over K networks; "variability" in
dataset cartography (Swayamdipta et al. 2020). Default length: the whole schedule (T).
Lower ranks easier: examples the networks settle on early. Beware that examples they never
learn also vary little; cartography tells them apart by their mean confidence.

The checkpoints are w_t at t = round(c T / C), c = 1..C: the hook evaluates the training set
between the backward pass and the update of step t (when the weights are w_t; gradients are
left alone), the last one (w_T) after training. C extra forward passes over the training set.
C is a constant of the score (changing it would need a new score name: it is not in the hash).

    lthfast scores pred_var --dataset digits --models 4 --steps 100
"""

from __future__ import annotations

import torch

from ...train.evaluate import predict
from ...train.hooks import Hook
from ..scores import SCORES, ScoreKind

CHECKPOINTS = 10


def checkpoint_steps(steps: int, checkpoints: int = CHECKPOINTS) -> list[int]:
    """The steps t (1 <= t <= steps) at which w_t is evaluated."""
    return sorted({round(c * steps / checkpoints) for c in range(1, checkpoints + 1)} - {0})


class CheckpointProbabilities(Hook):
    """Running mean and spread (Welford, float64) per model and example of the assigned-class
    probability at each checkpoint."""

    wants_gradients = True  # for the model at the step's weights, not for its gradients

    def __init__(self, k: int, data, steps: int):
        self.data, self.steps = data, steps
        self.at = set(checkpoint_steps(steps))
        n, device = data.n, data.device
        self.seen = torch.zeros((), dtype=torch.int64)
        self.mean = torch.zeros(k, n, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(k, n, dtype=torch.float64, device=device)

    def after_backward(self, step: int, model: torch.nn.Module) -> None:
        if step in self.at:
            self.observe(model)

    def observe(self, model: torch.nn.Module) -> None:
        probs = predict(model, self.data, amp=False).softmax(-1)  # K×N×C, fp32 logits
        labels = self.data.labels.view(1, -1, 1).expand(probs.shape[0], -1, 1)
        p = probs.gather(-1, labels).squeeze(-1).double()
        self.seen += 1
        delta = p - self.mean
        self.mean += delta / self.seen.item()
        self.m2 += delta * (p - self.mean)

    def state_dict(self) -> dict:
        return {"seen": self.seen, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            getattr(self, name).copy_(value)

    def per_model(self, model: torch.nn.Module):
        if self.steps in self.at:  # the last checkpoint: the trained weights, w_T
            self.observe(model)
        return (self.m2 / max(int(self.seen), 1)).sqrt().cpu().numpy()


def pred_var_hooks(ctx, cfg, data, k):
    return [CheckpointProbabilities(k, data, cfg.recipe.steps)]


def pred_var_per_model(ctx, model, hooks, data):
    return hooks[0].per_model(model)


SCORES.register("pred_var")(ScoreKind(default_steps=lambda p: p.train_steps,
                                      per_model=pred_var_per_model, hooks=pred_var_hooks,
                                      reference="Swayamdipta et al. 2020 (variability)"))
