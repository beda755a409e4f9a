"""The training step's GPU cost, counted on the CPU: launches outside the model and host syncs.

A launch is an aten op that does work (``lthfast.train.counting.OpCounter``); a sync is a host
read of a device value. Per-step figures are differences between runs of 4 and 12 steps that
log only at their last step, so what a run does once (setup, the final log) cancels out.
Before ``FusedSGD`` and the device-side loss window, a ResNet step made ~340 launches outside
the model (~470 with per-model learning rates) and 3 syncs per log.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lthfast.data.loader import BatchStream, DeviceData, StreamSeeds
from lthfast.models import build
from lthfast.prune.magnitude import full_masks, prune
from lthfast.train.counting import OpCounter, count_syncs
from lthfast.train.loop import LoopConfig, train
from lthfast.train.schedule import Schedule
from lthfast.train.step import per_model_loss

OUTSIDE_MODEL_BUDGET = 20  # loader + loss bookkeeping + optimizer + masks, per step, any K


@pytest.fixture(scope="module")
def train_data(digits):
    return DeviceData.from_dataset(digits, "train", "cpu")


def stream_for(data, k, batch=8):
    return BatchStream(data, [np.arange(data.n)] * k, [StreamSeeds(i, 10 + i) for i in range(k)],
                       batch)


def model_for(k, execution):
    model = build("resnet8", 10, k=k)
    model.execution = execution
    return model.to(memory_format=torch.channels_last)


def counted_run(data, k, execution, steps, per_model_lr):
    model = model_for(k, execution)
    state = model.state_dict()
    masks = prune(state, full_masks(state), 0.5)
    schedule = (tuple(Schedule(0.05 * (m + 1), warmup=50) for m in range(k)) if per_model_lr
                else Schedule(0.1))  # per-model: the lrs change at every step (warmup)
    decay = tuple(1e-4 * (m + 1) for m in range(k)) if per_model_lr else 1e-4
    cfg = LoopConfig(schedule, 0, steps, weight_decay=decay, log_every=1000)
    with OpCounter() as ops, count_syncs() as syncs:
        result = train(model, stream_for(data, k), cfg, masks=masks)
    assert all(np.isfinite(result.mean_losses))
    return ops, syncs


# grouped only: what runs outside the model does not depend on its execution, and the looped
# execution's functional_call is ~30x slower under a dispatch mode
@pytest.mark.parametrize("k,execution,per_model_lr", [
    (1, "grouped", False), (3, "grouped", False), (3, "grouped", True)])
def test_launches_outside_the_model_and_syncs_per_step(train_data, k, execution, per_model_lr):
    short, short_syncs = counted_run(train_data, k, execution, 4, per_model_lr)
    long, long_syncs = counted_run(train_data, k, execution, 12, per_model_lr)
    per_step = (long.total - short.total) / 8

    model = model_for(k, execution)
    x, y, _ = stream_for(train_data, k).batch(0)
    with OpCounter() as in_model:  # forward, loss and backward: the model's own launches
        per_model_loss(model(x), y).sum().backward()
    outside = per_step - in_model.total
    assert 0 < outside <= OUTSIDE_MODEL_BUDGET, (outside, long.ops - short.ops)
    assert long_syncs == short_syncs  # no host sync in a step that does not log
    assert sum(short_syncs.values()) <= 2  # the one read of the loss window (+ hooks: none)


def test_loader_launches_per_step_amortised(train_data):
    """Indices, labels and crop offsets come in one copy per 32 steps; a step slices them."""
    for k in (1, 4):
        stream = stream_for(train_data, k)
        with OpCounter() as ops, count_syncs() as syncs:
            for step in range(64):
                stream.batch(step)
        assert ops.total / 64 <= 6, ops.ops
        assert sum(syncs.values()) == 0
