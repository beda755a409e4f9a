"""Per-step losses of K packed models: written on the device every step, read at logging steps.

The step only copies its K losses into the next row of a device buffer (one small copy, no host
sync); every ``log_every`` steps the loop reads the rows once and the host derives what the run
logs: each model's mean finite loss over the window and, for a model whose loss stopped being
finite, the first such step and its last finite loss before it (the divergence record).

    python -c "from lthfast.train.tracker import LossTracker; help(LossTracker)"
"""

from __future__ import annotations

import math
from typing import Optional

import torch


class LossTracker:
    def __init__(self, k: int, window: int, device: torch.device, start_step: int):
        self.k = k
        # float64: exact for fp32 and fp64 losses
        self.rows = torch.empty(window, k, dtype=torch.float64, device=device)
        self.filled = 0  # rows written since the last read
        self.first_step = start_step  # the step of row 0
        self.diverged: list[Optional[dict]] = [None] * k
        self.last_finite: list[Optional[float]] = [None] * k  # before divergence, across windows

    def record(self, losses: torch.Tensor) -> None:
        """This step's K losses (a device tensor); no host sync."""
        self.rows[self.filled].copy_(losses.detach())
        self.filled += 1

    def read(self) -> list[float]:
        """Mean finite loss per model over the rows since the last read (NaN for a model with
        none), updating the divergence records; empties the window. The one host sync."""
        rows = self.rows[: self.filled].tolist()
        sums, counts = [0.0] * self.k, [0] * self.k
        for i, row in enumerate(rows):
            for m, loss in enumerate(row):
                if math.isfinite(loss):
                    sums[m] += loss
                    counts[m] += 1
                    if self.diverged[m] is None:
                        self.last_finite[m] = loss
                elif self.diverged[m] is None:
                    self.diverged[m] = {"step": self.first_step + i,
                                        "last_finite_loss": self.last_finite[m]}
        self.first_step += self.filled
        self.filled = 0
        return [s / c if c else math.nan for s, c in zip(sums, counts)]

    def state_dict(self) -> dict:
        return {"rows": self.rows[: self.filled].cpu(), "first_step": self.first_step,
                "diverged": self.diverged, "last_finite": self.last_finite}

    def load_state_dict(self, state: dict) -> None:
        rows = state["rows"]
        if len(rows):  # room for its rows and a whole window more, whatever log_every was
            # when it was written (how often to log is not part of a run's identity)
            self.rows = self.rows.new_empty(len(rows) + len(self.rows), self.k)
        self.rows[: len(rows)].copy_(rows)
        self.filled, self.first_step = len(rows), state["first_step"]
        self.diverged, self.last_finite = list(state["diverged"]), list(state["last_finite"])
