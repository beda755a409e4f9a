"""The device-side loss window: per-step losses read at logging steps, divergence recorded."""

from __future__ import annotations

import torch


def test_loss_window_resumes_under_a_shorter_log_interval():
    """How often to log is not part of a run: a checkpoint written mid-window under log_every=50
    resumes under log_every=5 with its rows kept."""
    from lthfast.train.tracker import LossTracker

    before = LossTracker(2, 50, torch.device("cpu"), start_step=0)
    for step in range(9):
        before.record(torch.tensor([float(step), float("nan") if step >= 7 else 1.0]))
    after = LossTracker(2, 5, torch.device("cpu"), start_step=0)
    after.load_state_dict(before.state_dict())
    after.record(torch.tensor([9.0, 2.0]))
    means = after.read()
    assert means == [4.5, (7 * 1.0 + 2.0) / 8]
    assert after.diverged == [None, {"step": 7, "last_finite_loss": 1.0}]
    assert after.first_step == 10


def test_means_count_finite_losses_and_divergence_keeps_its_first_step():
    from lthfast.train.tracker import LossTracker

    tracker = LossTracker(2, 4, torch.device("cpu"), start_step=20)
    for losses in ([1.0, 2.0], [3.0, float("inf")], [5.0, 4.0]):
        tracker.record(torch.tensor(losses))
    assert tracker.read() == [3.0, 3.0]
    tracker.record(torch.tensor([float("nan"), float("nan")]))
    assert [m != m for m in tracker.read()] == [True, True]  # no finite loss in the window: NaN
    assert tracker.diverged == [{"step": 23, "last_finite_loss": 5.0},
                                {"step": 21, "last_finite_loss": 2.0}]
