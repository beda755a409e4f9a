"""Iteration-based learning-rate schedule: optional linear warmup, then steps at milestones.

The paper counts iterations, not epochs (Table 1): e.g. CIFAR-10 lr 0.1, ×0.1 at 31,200 and
46,800 of 62,400. ``lr_table`` gives a stage's learning rates for all its steps at once, as one
device tensor the training step indexes (no host value enters the step, so it can be captured).

    python -c "from lthfast.train.schedule import Schedule; \\
               print(Schedule(0.1, (31200, 46800)).lr_at(40000))"
    # -> 0.010000000000000002
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


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

    def lrs(self, start: int, end: int) -> np.ndarray:
        """``lr_at`` for steps [start, end) as float64, computed by the same double arithmetic
        (the same C ``pow``, the same products), so every value is bit-equal to ``lr_at``'s."""
        steps = np.arange(start, end, dtype=np.int64)
        passed = sum((steps >= m).astype(np.int64) for m in self.milestones) if self.milestones \
            else np.zeros(len(steps), dtype=np.int64)
        factor = np.array([self.gamma ** int(n) for n in range(len(self.milestones) + 1)])[passed]
        if self.warmup > 0:
            warming = steps < self.warmup
            factor[warming] *= (steps[warming] + 1) / self.warmup
        return self.lr * factor


def lr_table(schedules: Sequence[Schedule], start: int, end: int, dtype: torch.dtype,
             device: torch.device) -> torch.Tensor:
    """Learning rates of steps [start, end): (end − start) × 1 when every model follows one
    schedule, else × K (one column per model), in the parameters' dtype, on their device."""
    columns = [schedules[0]] if len(set(schedules)) == 1 else list(schedules)
    table = np.stack([s.lrs(start, end) for s in columns], axis=1)
    return torch.from_numpy(table).to(device=device, dtype=dtype)
