"""Training-step throughput: lthfast's loop vs a plain PyTorch loop, ResNet-20, batch 128.

lthfast: ``BatchStream`` (device-resident data, batched augmentation) + ``lthfast.train.loop.train``
on ``lthfast.models.build('resnet20', 10)`` with lthfast's defaults for the device (channels_last;
on CUDA also torch.compile and bf16 autocast; on the CPU ``keep_freed_memory``, which stops glibc
from handing each step's activations back to the kernel, so steps stop page-faulting: a row
measured without it shows what it is worth). Plain: a ``DataLoader`` with per-sample transforms
(see ``benchmarks.loader``) feeding a ResNet-20 written plainly below with ordinary
Conv2d/BatchNorm2d/Linear in the default memory format, fp32, eager, and the same SGD settings
(lr 0.1, momentum 0.9, weight decay 1e-4, cross-entropy). Same synthetic 50,000-image set, same
architecture (3×3 convs, widths 16/32/64, 1×1 projection shortcuts with BN).

images/s = batch × steps / wall time of a window of steps, median over windows, after warm-up
steps: on the CPU 3 warm-up steps and 15 windows of one step (~0.25 s each on a quiet 2-core
machine); short windows and a median keep bursts of load from other processes out of the figure.
On a GPU, windows of 20 steps after 50 warm-up steps. The plain loop and lthfast without
``keep_freed_memory`` each run in a fresh spawned process (glibc's defaults, nothing of lthfast's
set), and the three variants take turns of 5 windows with a second of rest after each
(``round_robin``: the DataLoader's workers refill their queue after its turn and would slow the
next variant), so slow spells of a shared machine (seen here: everything at 60% speed for
minutes) hit them alike.

    python -m benchmarks --only train_step [--quick]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common import (DEFAULT_CACHE, Row, forward_flops_per_image, open_synthetic, rerun, timed,
                     usable_cpus)
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
    block: int = 5  # windows per turn when variants take turns (see round_robin)
    settle: float = 1.0  # seconds of rest after each turn
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


class LthfastWindows:
    """lthfast's loop on K packed models, timed a window of ``cfg.steps`` steps at a time.

    Each window is one ``train()`` call that continues the schedule where the last one stopped
    (as a resumed run does), so windows of several variants can be interleaved and see the same
    machine. ``keep_memory``: on the CPU, first switch the process to ``keep_freed_memory`` as
    the CLI does (irreversible: create any ``keep_memory=False`` variant before the first True).
    """

    def __init__(self, ds, cfg: TrainStepConfig, device: torch.device, k: int = 1,
                 indices: Optional[list[np.ndarray]] = None, execution: str = "auto",
                 keep_memory: bool = True, data=None):
        from lthfast.data.loader import BatchStream, StreamSeeds
        from lthfast.data.loader import DeviceData
        from lthfast.experiments.common import new_model
        from lthfast.train.allocator import keep_freed_memory

        if keep_memory and device.type == "cpu":
            keep_freed_memory()
        self.cfg, self.device, self.rt = cfg, device, lthfast_runtime(device)
        if data is None:  # shareable between variants
            data = DeviceData.from_dataset(ds, "train", device)
        indices = indices or [np.arange(ds.train_size)] * k
        self.stream = BatchStream(data, indices,
                                  [StreamSeeds(10 + m, 20 + m) for m in range(k)], cfg.batch)
        self.model = new_model(cfg.model, ds.num_classes, list(range(k)), device)
        self.model.execution = execution
        self.step = 0
        self.optimizer_state = None
        if cfg.warmup:
            self._run(cfg.warmup)

    def _run(self, steps: int) -> float:
        from lthfast.train.loop import LoopConfig, train
        from lthfast.train.schedule import Schedule

        cfg = self.cfg
        loop = LoopConfig(schedule=Schedule(cfg.lr), start_step=self.step,
                          end_step=self.step + steps, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, log_every=steps,
                          compile=self.rt.use_compile, amp=self.rt.use_amp)

        def run():
            result = train(self.model, self.stream, loop, optimizer_state=self.optimizer_state)
            self.optimizer_state = result.optimizer_state

        seconds = timed(run, self.device)
        self.step += steps
        return seconds

    def window(self) -> float:
        return self._run(self.cfg.steps)


class PlainWindows:
    """The plain PyTorch loop (DataLoader + nn.Module), timed a window at a time."""

    def __init__(self, ds, cfg: TrainStepConfig, device: torch.device):
        workers = cfg.workers or usable_cpus()
        self.loader, self.label = make_dataloader(ds, np.arange(ds.train_size), cfg.batch,
                                                  workers, device)
        self.batches = endless(self.loader)
        self.cfg, self.device = cfg, device
        torch.manual_seed(0)
        self.model = PlainResNet(cfg.depth, ds.num_classes).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        self.model.train()
        if cfg.warmup:
            timed(lambda: self._steps(cfg.warmup), device)

    def _steps(self, n: int) -> None:
        for _ in range(n):
            x, y = to_device(next(self.batches), self.device)
            loss = F.cross_entropy(self.model(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()

    def window(self) -> float:
        return timed(lambda: self._steps(self.cfg.steps), self.device)

    def close(self) -> None:
        del self.batches, self.loader  # stop the persistent workers


def _serve(conn, make: Callable, args: tuple) -> None:
    """Child side of ``InSubprocess``: build the windows object, then time windows on request."""
    windows = make(*args)
    conn.send(("ready", getattr(windows, "label", None)))
    while conn.recv() == "window":
        conn.send(windows.window())
    if hasattr(windows, "close"):
        windows.close()
    conn.close()


class InSubprocess:
    """A windows object (``make(*args)``) in a fresh spawned process, timed from this one.

    The child starts with glibc's default malloc whatever this process has set, so the plain
    loop and lthfast-without-keep_freed_memory can take turns with lthfast window by window.
    """

    def __init__(self, make: Callable, *args):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, make, args))
        self.process.start()
        child.close()
        status, self.label = self.conn.recv()
        if status != "ready":
            raise RuntimeError("benchmark subprocess did not start")

    def window(self) -> float:
        self.conn.send("window")
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send("close")
        self.process.join(timeout=60)


def make_plain(cache, train: int, cfg: TrainStepConfig, device: str) -> PlainWindows:
    return PlainWindows(open_synthetic(cache, train), cfg, torch.device(device))


def make_lthfast(cache, train: int, cfg: TrainStepConfig, device: str,
                 keep_memory: bool) -> LthfastWindows:
    return LthfastWindows(open_synthetic(cache, train), cfg, torch.device(device),
                          keep_memory=keep_memory)


def round_robin(windows: list[Callable[[], float]], repeats: int, block: int = 1,
                settle: float = 0.0) -> list[list[float]]:
    """Seconds of ``repeats`` windows of each variant, taken in turns (A B C A B C ...), so a
    slow spell of a shared machine hits all variants alike instead of whichever ran then.

    ``block`` windows at a time per turn, then ``settle`` seconds of rest: a DataLoader's
    workers go on prefetching after its turn, and would otherwise steal the cores from the
    next variant's windows."""
    seconds: list[list[float]] = [[] for _ in windows]
    while len(seconds[-1]) < repeats:
        for i, window in enumerate(windows):
            for _ in range(min(block, repeats - len(seconds[i]))):
                seconds[i].append(window())
            time.sleep(settle)
    return seconds


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
    from lthfast.train.backends import configure

    configure(device.type, deterministic=False)  # as lthfast runs: cuDNN autotuning on CUDA
    ds = open_synthetic(cache, cfg.train)
    images = cfg.batch * cfg.steps
    case = f"{cfg.model}, batch {cfg.batch}, {device.type}"
    command = rerun(SECTION, cfg.quick)
    # Each baseline in its own fresh process (glibc's defaults, none of lthfast's settings);
    # the three take turns window by window.
    log(f"[train_step] plain PyTorch loop ({cfg.model}), lthfast without keep_freed_memory "
        f"and lthfast, in turns (baselines in subprocesses)")
    plain_windows = InSubprocess(make_plain, cache, cfg.train, cfg, str(device))
    before = InSubprocess(make_lthfast, cache, cfg.train, cfg, str(device), False)
    ours_windows = LthfastWindows(ds, cfg, device)
    ours, default_malloc, plain = round_robin(
        [ours_windows.window, before.window, plain_windows.window], cfg.repeats,
        block=cfg.block, settle=cfg.settle)
    plain_windows.close()
    before.close()
    label = plain_windows.label
    if device.type != "cpu":  # keep_freed_memory is for CPUs only: the row says nothing there
        default_malloc = None
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
            note=f"fp32 eager, NCHW; own process; {windows}, in turns of {cfg.block} windows "
                 f"with the rows above"),
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
            note=f"what the allocator setting is worth; own process; {windows}, in turns"))
    return rows
