"""K models at once: K ResNet-20s trained packed (``build(..., k=K)``) vs the same K one by one.

Packed: one ``lthfast.models.build('resnet20', 10, k=K)`` network (grouped convolutions, K
independent models) trained by ``lthfast.train.loop.train`` on a K-model ``BatchStream``.
Sequential: K separate K=1 networks, each trained by the same loop on its own stream, one after
the other. Both do the same work (K models × steps × batch 128 images); reported is images/s per
model (batch × steps / wall time for all K) and packed ÷ sequential. Medians over timed windows
of steps; for sequential a window's time is the sum of the K models' times for that window.
Warm-up steps are excluded for both. The variants take turns window by window, so a slow spell
of a shared machine (seen here: the same step at half speed for a minute) hits all alike.

Packed runs both executions of the packed model (``lthfast.models.packed``): ``grouped`` (one
grouped-conv network over K·C channels, the GPU default) and ``looped`` (model after model on
views of the packed parameters, the CPU default); the default for the device is the reference.
Packing removes per-model kernel-launch and Python overhead, the bottleneck of a small network
on a GPU. On a CPU that overhead is small: a ResNet-20 step takes ~11 ms at batch 1 and ~140 ms
at batch 128 on the 2-core dev machine, so removing all of it would gain ~8%; packing there can at
best about match sequential training. The grouped network is slower on a CPU, its K·C-channel
activations falling out of the caches, hence the looped default.

    python -m benchmarks --only packed [--quick]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from lthfast.models.packed import EXECUTIONS

from .common import DEFAULT_CACHE, Row, open_synthetic, rerun
from .train_step import LthfastWindows, TrainStepConfig, for_device, round_robin

SECTION = "packed"


@dataclass(frozen=True)
class PackedConfig:
    model: str = "resnet20"
    ks: Sequence[int] = (1, 2, 4, 10)
    batch: int = 128
    train: int = 50_000
    warmup: int = 1
    steps: int = 1  # steps per timed window
    repeats: int = 5  # timed windows
    quick: bool = False


def run(cfg: PackedConfig = PackedConfig(), device: Optional[torch.device] = None,
        cache=DEFAULT_CACHE, log=print) -> list[Row]:
    device = device or torch.device("cpu")
    cfg = for_device(cfg, device)
    from lthfast.train.backends import configure

    configure(device.type, deterministic=False)  # as lthfast runs: cuDNN autotuning on CUDA
    ds = open_synthetic(cache, cfg.train)
    step_cfg = TrainStepConfig(model=cfg.model, batch=cfg.batch, train=cfg.train,
                               warmup=cfg.warmup, steps=cfg.steps, repeats=cfg.repeats,
                               quick=cfg.quick)
    images = cfg.batch * cfg.steps  # per model per repeat
    command = rerun(SECTION, cfg.quick)
    rng = np.random.default_rng(0)
    rows: list[Row] = []
    from lthfast.data.loader import DeviceData
    from lthfast.train.allocator import keep_freed_memory

    if device.type == "cpu":
        keep_freed_memory()  # as the CLI does; before the data are copied in
    data = DeviceData.from_dataset(ds, "train", device)  # one device copy, shared by all variants
    default = "looped" if device.type == "cpu" else "grouped"  # what execution="auto" picks
    for k in cfg.ks:
        # each model its own data order (as in an EL2N ensemble): same full set, own seeds
        indices = [rng.permutation(ds.train_size) for _ in range(k)]
        case = f"{cfg.model} ×{k}, batch {cfg.batch}, {device.type}"
        note = (f"per model: {cfg.warmup} warm-up step(s), median of {cfg.repeats} windows of "
                f"{cfg.steps} step(s), all variants in turns")
        executions = [default] + [e for e in EXECUTIONS if e != default] if k > 1 else ["grouped"]
        log(f"[packed] {cfg.model} K={k}: packed ({', '.join(executions)}) and sequential, "
            f"in turns")
        packed = [LthfastWindows(ds, step_cfg, device, k=k, indices=indices, execution=e,
                                 data=data) for e in executions]
        singles = [LthfastWindows(ds, step_cfg, device, k=1, indices=[indices[m]], data=data)
                   for m in range(k)]
        sequential = lambda: sum(single.window() for single in singles)  # noqa: E731
        *packed_seconds, sequential_seconds = round_robin(
            [p.window for p in packed] + [sequential], cfg.repeats)
        for execution, seconds in zip(executions, packed_seconds):
            label = f"packed: build(..., k={k})" + (
                f", {execution}" + (" (default here)" if execution == default else "")
                if k > 1 else "")
            rows.append(Row(SECTION, case, label, [images / s for s in seconds],
                            reference=execution == executions[0], command=command,
                            note=f"{note}; all {k}: {k * images / np.median(seconds):.0f} "
                                 f"images/s"))
        rows.append(Row(SECTION, case, f"sequential: {k} × build(..., k=1)",
                        [images / s for s in sequential_seconds], command=command,
                        note=f"{note}; all {k}: "
                             f"{k * images / np.median(sequential_seconds):.0f} images/s"))
        packed = singles = None  # free the models (the timing closures are done)
    return rows
