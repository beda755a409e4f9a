"""Training-step throughput: lthfast's loop vs a plain PyTorch loop, ResNet-20, batch 128.

lthfast: ``BatchStream`` (device-resident data, batched augmentation) + ``lthfast.train.loop.train``
on ``lthfast.models.build('resnet20', 10)`` with lthfast's defaults for the device (channels_last;
on CUDA also torch.compile and bf16 autocast; on the CPU ``keep_freed_memory``, which stops glibc
from handing each step's activations back to the kernel, so steps stop page-faulting: a row
measured before it is switched on shows what it is worth). Plain: a ``DataLoader`` with per-sample transforms
(see ``benchmarks.loader``) feeding a ResNet-20 written plainly below with ordinary
Conv2d/BatchNorm2d/Linear in the default memory format, fp32, eager, and the same SGD settings
(lr 0.1, momentum 0.9, weight decay 1e-4, cross-entropy). Same synthetic 50,000-image set, same
architecture (3×3 convs, widths 16/32/64, 1×1 projection shortcuts with BN).

images/s = batch × steps / wall time of a window of steps, median over windows, after warm-up
steps: on the CPU 3 warm-up steps and 15 windows of one step (~0.25 s each on a quiet 2-core
machine); short windows and a median keep bursts of load from other processes out of the figure.
On a GPU, windows of 20 steps after 50 warm-up steps.

    python -m benchmarks --only train_step [--quick]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common import (DEFAULT_CACHE, Row, forward_flops_per_image, open_synthetic, rerun, sync,
                     timed, usable_cpus)
from .loader import endless, make_dataloader, to_device

SECTION = "train_step"


@dataclass(frozen=True)
class TrainStepConfig:
    model: str = "resnet20"
    batch: int = 128
    train: int = 50_000
    warmup: int = 3
    steps: int = 1  # steps per timed window (the loop's log_every while timing)
    repeats: int = 15  # timed windows
    workers: int = 0  # DataLoader workers; 0: the usable CPUs
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    quick: bool = False

    @property
    def depth(self) -> int:
        return int(self.model.removeprefix("resnet"))


class PlainBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PlainResNet(nn.Module):
    """The CIFAR ResNet-(6n+2) of He et al. as a textbook nn.Module (one model, no packing)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, widths=(16, 32, 64)):
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        layers, c_in = [], widths[0]
        for stage, width in enumerate(widths):
            for i in range(n):
                layers.append(PlainBlock(c_in, width, 2 if stage > 0 and i == 0 else 1))
                c_in = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        out = F.relu(self.bn(self.conv(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def for_device(cfg, device: torch.device):
    """On a GPU a step takes milliseconds: longer windows and warm-up (compile) than on a CPU."""
    if device.type == "cuda" and not cfg.quick:
        return replace(cfg, steps=max(cfg.steps, 20), warmup=max(cfg.warmup, 50))
    return cfg


def lthfast_runtime(device: torch.device):
    from lthfast.experiments.common import Runtime

    return Runtime(device=str(device))


def bench_lthfast(ds, cfg: TrainStepConfig, device: torch.device, k: int = 1,
                  indices: Optional[list[np.ndarray]] = None, execution: str = "auto",
                  keep_memory: bool = True) -> list[float]:
    """Seconds per window of ``cfg.steps`` steps of lthfast's loop on K packed models.

    One ``train()`` call runs all timed windows; its progress callback, which the loop calls
    right after its host sync every ``log_every`` steps, timestamps the window boundaries.
    ``keep_memory``: on the CPU, first switch the process to ``keep_freed_memory`` as the CLI
    does (irreversible: measure any ``keep_memory=False`` case before the first True one).
    """
    from lthfast.data.loader import BatchStream, StreamSeeds
    from lthfast.experiments.common import device_split, new_model
    from lthfast.train.allocator import keep_freed_memory
    from lthfast.train.loop import LoopConfig, train
    from lthfast.train.schedule import Schedule

    if keep_memory and device.type == "cpu":
        keep_freed_memory()
    rt = lthfast_runtime(device)
    data = device_split(ds, "train", device)
    indices = indices or [np.arange(ds.train_size)] * k
    stream = BatchStream(data, indices, [StreamSeeds(10 + m, 20 + m) for m in range(k)],
                         cfg.batch)
    model = new_model(cfg.model, ds.num_classes, list(range(k)), device)
    model.execution = execution

    def run(start: int, end: int, log_every: int, progress=None):
        train(model, stream, LoopConfig(
            schedule=Schedule(cfg.lr), start_step=start, end_step=end, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay, log_every=log_every, compile=rt.use_compile,
            amp=rt.use_amp), progress=progress)

    if cfg.warmup:
        timed(lambda: run(0, cfg.warmup, 10**9), device)
    # windows start at multiples of log_every: start the timed call on one
    start = -(-cfg.warmup // cfg.steps) * cfg.steps
    if start > cfg.warmup:
        timed(lambda: run(cfg.warmup, start, 10**9), device)
    marks: list[float] = []
    sync(device)
    marks.append(time.perf_counter())
    run(start, start + cfg.repeats * cfg.steps, cfg.steps,
        progress=lambda _step, _end, _losses: marks.append(time.perf_counter()))
    return [b - a for a, b in zip(marks, marks[1:])]


def bench_plain(ds, cfg: TrainStepConfig, device: torch.device) -> tuple[list[float], str]:
    workers = cfg.workers or usable_cpus()
    loader, label = make_dataloader(ds, np.arange(ds.train_size), cfg.batch, workers, device)
    batches = endless(loader)
    torch.manual_seed(0)
    model = PlainResNet(cfg.depth, ds.num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    model.train()

    def steps(n: int):
        for _ in range(n):
            x, y = to_device(next(batches), device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    if cfg.warmup:
        timed(lambda: steps(cfg.warmup), device)
    # one window at a time, so that bursts of load from other processes hit few windows
    seconds = [timed(lambda: steps(cfg.steps), device) for _ in range(cfg.repeats)]
    del batches, loader
    return seconds, label


def matmul_gflops(device: torch.device, n: int = 4096, repeats: int = 5) -> list[float]:
    """GFLOP/s of a dense fp32 n×n matmul: the device's practical compute roofline."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):  # warm-up: threads, caches, clocks
        a @ b
    return [2 * n**3 / timed(lambda: a @ b, device) / 1e9 for _ in range(repeats)]


def run(cfg: TrainStepConfig = TrainStepConfig(), device: Optional[torch.device] = None,
        cache=DEFAULT_CACHE, log=print) -> list[Row]:
    device = device or torch.device("cpu")
    cfg = for_device(cfg, device)
    ds = open_synthetic(cache, cfg.train)
    images = cfg.batch * cfg.steps
    case = f"{cfg.model}, batch {cfg.batch}, {device.type}"
    command = rerun(SECTION, cfg.quick)
    log(f"[train_step] plain PyTorch loop ({cfg.model})")
    plain, label = bench_plain(ds, cfg, device)
    default_malloc = None
    if device.type == "cpu":  # before keep_freed_memory, which cannot be undone
        log(f"[train_step] lthfast loop ({cfg.model}), glibc's default malloc")
        default_malloc = bench_lthfast(ds, cfg, device, keep_memory=False)
    log(f"[train_step] lthfast loop ({cfg.model})")
    ours = bench_lthfast(ds, cfg, device)
    rt = lthfast_runtime(device)
    flags = ["channels_last"] + (["torch.compile"] if rt.use_compile else []) + (
        ["bf16 autocast"] if rt.use_amp else []) + (
        ["keep_freed_memory"] if device.type == "cpu" else [])
    workers = cfg.workers or usable_cpus()
    # model FLOPs: 3 × forward (backward ≈ 2 × forward), as in the GPU section
    train_flops = 3 * forward_flops_per_image(cfg.model, ds.num_classes, ds.meta["image_shape"][0])
    model_gflops = float(np.median([images / s for s in ours])) * train_flops / 1e9
    windows = (f"{cfg.warmup} warm-up steps, then median of {cfg.repeats} windows of "
               f"{cfg.steps} step{'s' if cfg.steps > 1 else ''}")
    rows = [
        Row(SECTION, case, "lthfast: BatchStream + train()", [images / s for s in ours],
            reference=True, command=command,
            note=f"{', '.join(flags)}; {model_gflops:.0f} GFLOP/s of model FLOPs "
                 f"(3 × {train_flops / 3e6:.1f} MFLOP forward per image); {windows}"),
        Row(SECTION, case, "plain PyTorch: " + label.replace("DataLoader", f"DataLoader "
                                                            f"({workers} workers)") +
            " + nn.Module ResNet", [images / s for s in plain], command=command,
            note=f"fp32 eager, NCHW; {windows}"),
    ]
    if device.type == "cpu":  # how close the step is to what the cores can do at all
        rows.append(Row(SECTION, f"matmul roofline, {device.type}",
                        "torch.mm, 4096×4096 fp32 (not a training step)", matmul_gflops(device),
                        unit="GFLOP/s", command=command,
                        note="compare with the GFLOP/s of model FLOPs in the lthfast row"))
    if default_malloc is not None:
        rows.insert(1, Row(
            SECTION, case, "lthfast without keep_freed_memory (glibc's default malloc)",
            [images / s for s in default_malloc], command=command,
            note=f"what the allocator setting is worth; measured before it; {windows}"))
    return rows
