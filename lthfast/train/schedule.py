"""Iteration-based learning-rate schedule: optional linear warmup, then steps at milestones.

The paper counts iterations, not epochs (Table 1): e.g. CIFAR-10 lr 0.1, ×0.1 at 31,200 and
46,800 of 62,400.

    python -c "from lthfast.train.schedule import Schedule; print(Schedule(0.1, (31200, 46800)).lr_at(40000))"
    # -> 0.010000000000000002
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    lr: float
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup: int = 0  # linear warmup from lr/warmup to lr over the first `warmup` iterations

    def lr_at(self, step: int) -> float:
        factor = self.gamma ** sum(step >= m for m in self.milestones)
        if self.warmup > 0 and step < self.warmup:
            factor *= (step + 1) / self.warmup
        return self.lr * factor
