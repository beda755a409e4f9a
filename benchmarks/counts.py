"""What a GPU step would cost, measured on the CPU: launches, host syncs, framework overhead.

A ResNet-20 step at batch 128 is ~0.1 ms of H100 arithmetic but ~400 kernel launches, so on a
GPU it is bounded by the host. Proxies a CPU can measure:
- **counts per step** (``lthfast.train.counting``): aten ops that would launch a kernel, outside
  the model (loader, loss bookkeeping, optimizer, masks) and inside it (forward + loss +
  backward), and host syncs, for K = 1 and 10, with one shared and with per-model learning rates
  (a warmup sweep: the lrs change every step). Exact, not timed: any machine gives the same.
  With ``--cuda-graph`` a step is one replay: what the host still launches per step (loader,
  copies into the graph's static inputs, the loss record) is counted on the graph's CPU
  stand-in (``lthfast.train.capture.EmulatedGraph``), whose replay is not counted.
- **host time of the loader's draws** per step (batch 128): dataset indices and crop offsets
  come from numpy on the host, 32 steps per copy to the device, so the device never waits on a
  per-step copy; the host must still draw faster than the GPU trains.
- **overhead per step** on a width-1 ResNet-20 at batch 8 (1 channel per layer: arithmetic is
  nil, the time is the framework's: Python, dispatch, kernel calls): the lthfast loop against a
  plain PyTorch loop on the same model and batches (torch.optim.SGD, then one ``mul_`` per
  pruning mask, as open_lth does). At batch 128 a 1-channel network is not overhead-bound on
  a CPU (~33 ms a step, in oneDNN's 1-channel kernels), so the batch is kept small.

Before FusedSGD and the device-side loss window (commit 4bb66ba) the same counter gave 340
launches outside a ResNet-20 K=1 or K=3 step, 470 with per-model learning rates, and 3 syncs
per log.

    python -m benchmarks --only counts [--quick]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from lthfast.data.loader import BatchStream, DeviceData, StreamSeeds
from lthfast.models.packed import PackedResNet
from lthfast.prune.magnitude import full_masks, prune
from lthfast.train.counting import OpCounter, count_syncs
from lthfast.train.loop import LoopConfig, train
from lthfast.train.schedule import Schedule
from lthfast.train.step import per_model_loss
from lthfast.sweep.workers import environment

from .common import DEFAULT_CACHE, Row, open_synthetic, rerun

SECTION = "counts"


@dataclass(frozen=True)
class CountsConfig:
    depth: int = 20
    batch: int = 8  # of the width-1 overhead runs: small, so arithmetic is nil next to dispatch
    count_batch: int = 16  # of the counted runs: counts do not depend on the batch size
    draw_batch: int = 128  # of the timed host-side draws
    train: int = 5_000
    ks: tuple[int, ...] = (1, 10)
    overhead_steps: int = 50  # steps per timed window of the width-1 network
    repeats: int = 5
    quick: bool = False


def _model(depth: int, k: int, widths=(16, 32, 64)) -> PackedResNet:
    return PackedResNet(depth, 10, k, widths, "grouped").to(memory_format=torch.channels_last)


def _stream(data, k: int, batch: int) -> BatchStream:
    return BatchStream(data, [np.arange(data.n)] * k, [StreamSeeds(m, 50 + m) for m in range(k)],
                       batch)


def _pruned(model) -> dict:
    state = model.state_dict()
    return prune(state, full_masks(state), 0.5)


def _train_counts(data, cfg: CountsConfig, k: int, steps: int, per_model_lr: bool,
                  capture: bool = False):
    model = _model(cfg.depth, k)
    schedule = (tuple(Schedule(0.1, warmup=1000 + m) for m in range(k)) if per_model_lr
                else Schedule(0.1))
    loop = LoopConfig(schedule, 0, steps, log_every=10_000, capture=capture)
    with OpCounter() as ops, count_syncs() as syncs:
        result = train(model, _stream(data, k, cfg.count_batch), loop, masks=_pruned(model))
    assert result.captured == capture
    return ops.total, sum(syncs.values())


def captured_launches(data, cfg: CountsConfig, k: int, per_model_lr: bool) -> float:
    """Host launches per replayed step (after 3 eager warm-up steps and the capture)."""
    short, long = 6, 10
    with environment({"LTHFAST_CAPTURE_BACKEND": "emulate"}):
        ops_short, _ = _train_counts(data, cfg, k, short, per_model_lr, capture=True)
        ops_long, _ = _train_counts(data, cfg, k, long, per_model_lr, capture=True)
    return (ops_long - ops_short) / (long - short)


def counts(data, cfg: CountsConfig, k: int, per_model_lr: bool) -> dict:
    """Per-step launches outside and inside the model, and syncs, as differences of two runs."""
    short, long = 2, 6
    ops_short, syncs_short = _train_counts(data, cfg, k, short, per_model_lr)
    ops_long, syncs_long = _train_counts(data, cfg, k, long, per_model_lr)
    model = _model(cfg.depth, k)
    x, y, _ = _stream(data, k, cfg.count_batch).batch(0)
    with OpCounter() as inside:
        per_model_loss(model(x), y).sum().backward()
    per_step = (ops_long - ops_short) / (long - short)
    return {"outside": per_step - inside.total, "inside": inside.total,
            "syncs": (syncs_long - syncs_short) / (long - short)}


def _plain_window(model, stream, masks: dict, start: int, steps: int) -> float:
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    t0 = time.perf_counter()
    for step in range(start, start + steps):
        x, y, _ = stream.batch(step)
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, mask in masks.items():
                params[name].mul_(mask)
        loss_value = loss.detach()  # kept on the device, as lthfast does
    float(loss_value)
    return (time.perf_counter() - t0) / steps


def _lthfast_window(model, stream, masks: dict, start: int, steps: int) -> float:
    t0 = time.perf_counter()
    train(model, stream, LoopConfig(Schedule(0.1), start, start + steps, log_every=steps),
          masks=masks)
    return (time.perf_counter() - t0) / steps


def draw_times(data, cfg: CountsConfig, k: int) -> list[float]:
    """Host ms per step to draw a chunk of steps' indices and augmentation (numpy, per model
    and step from seeded generators, so any step can be redrawn on resume)."""
    stream = _stream(data, k, cfg.draw_batch)
    stream._chunk(0)
    times = []
    for repeat in range(cfg.repeats):
        start = time.perf_counter()
        stream._chunk(repeat + 1)
        times.append(1000 * (time.perf_counter() - start) / stream.chunk_steps)
    return times


def overhead(data, cfg: CountsConfig) -> dict[str, list[float]]:
    """ms per step of a width-1 ResNet-20, lthfast and plain loops taking turns."""
    times: dict[str, list[float]] = {"lthfast": [], "plain": []}
    runs = {name: (_model(cfg.depth, 1, (1, 1, 1)), fn)
            for name, fn in (("lthfast", _lthfast_window), ("plain", _plain_window))}
    masks = {name: _pruned(model) for name, (model, _) in runs.items()}
    stream = _stream(data, 1, cfg.batch)
    for repeat in range(cfg.repeats + 1):  # the first round warms up
        for name, (model, fn) in runs.items():
            ms = 1000 * fn(model, stream, masks[name], repeat * cfg.overhead_steps,
                           cfg.overhead_steps)
            if repeat:
                times[name].append(ms)
    return times


def run(cfg: CountsConfig = CountsConfig(), device: Optional[torch.device] = None,
        cache=DEFAULT_CACHE, log=print) -> list[Row]:
    ds = open_synthetic(cache, cfg.train)
    data = DeviceData.from_dataset(ds, "train", "cpu")
    command = rerun(SECTION, cfg.quick)
    rows = []
    for k in cfg.ks:
        for per_model_lr in (False, True):
            lrs = "per-model lrs (warmup)" if per_model_lr else "one lr"
            c = counts(data, cfg, k, per_model_lr)
            log(f"[counts] K={k} {lrs}: {c}")
            case = f"ResNet-{cfg.depth} K={k}, {lrs}"
            rows.append(Row(SECTION, case, "launches outside the model", [c["outside"]],
                            unit="launches", command=command,
                            note="loader + loss bookkeeping + optimizer + masks"))
            rows.append(Row(SECTION, case, "launches in the model", [c["inside"]],
                            unit="launches", command=command, note="forward + loss + backward"))
            rows.append(Row(SECTION, case, "host syncs", [c["syncs"]], unit="syncs",
                            command=command, note="outside logging steps"))
            replayed = captured_launches(data, cfg, k, per_model_lr)
            log(f"[counts] K={k} {lrs}, replayed: {replayed}")
            rows.append(Row(SECTION, case, "host launches, step replayed (--cuda-graph)",
                            [replayed], unit="launches", command=command,
                            note="loader + static-input copies + loss record; the replay itself "
                                 "is one graph launch"))
    for k in cfg.ks:
        draws = draw_times(data, cfg, k)
        log(f"[counts] K={k} host draws: {draws}")
        rows.append(Row(SECTION, f"Loader draws, K={k} b{cfg.draw_batch}", "host time per step",
                        draws, unit="ms/step", command=command,
                        note=f"indices, labels and crop offsets of {BatchStream.chunk_steps} "
                             f"steps per host-to-device copy, amortised; the GPU step must "
                             f"take longer than this for the host to keep ahead"))
    times = overhead(data, cfg)
    case = f"width-1 ResNet-{cfg.depth} K=1 b{cfg.batch}: framework overhead"
    rows.append(Row(SECTION, case, "lthfast loop", times["lthfast"], unit="ms/step",
                    reference=True, command=command))
    rows.append(Row(SECTION, case, "plain PyTorch loop", times["plain"], unit="ms/step",
                    command=command, note="torch.optim.SGD + a mul_ per mask"))
    return rows
