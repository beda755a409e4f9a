"""Full-scale GPU figures: a whole ResNet-20 CIFAR-10 schedule and an EL2N ensemble, compile on/off,
memory layout, and packed (grouped / looped) vs K separate runs.

On a CUDA machine this trains, with lthfast's loop exactly as the CLI does (``BatchStream`` on the
GPU, channels_last, bf16 autocast, ``torch.compile`` on or off), on a synthetic CIFAR-shaped set
(50,000 32×32×3 images, 10 classes — timing does not depend on the pixels):

- ResNet-20, batch 128, the full CIFAR-10 schedule of Table 1: 62,400 iterations (lr 0.1, ×0.1 at
  31,200 and 46,800);
- the EL2N ensemble of appendix A: K=10 ResNet-20s trained packed for 7,800 iterations.

Reported per run: total wall time (compile and warm-up included), steady-state images/s (median
over windows of ``log_every`` iterations after the first 5% of the run; for K models, images of
all K), and model FLOP utilisation: FLOPs per training image ≈ 3 × forward FLOPs (forward, plus
backward ≈ 2 × forward), forward FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``
(convolutions and matmuls), divided by the device's dense bf16 peak (a small table of known
GPUs, or ``LTHFAST_PEAK_TFLOPS``).

- a whole IMP run of ``imp_levels`` (12) levels through ``lthfast.api.imp``, as ``lthfast imp``
  runs it: pre-training on all data to t_r = 400, then train → prune 20% → rewind per level.

Variants (``layouts``): compile on and off; the step replayed as a CUDA graph (``--cuda-graph``;
a capture that fails is an error, not an eager row); for K=1 also NCHW instead of channels_last;
for the K=10 ensemble also the looped execution and K separate K=1 runs one after another (what
packing saves). K separate runs are scored, like the packed rows, on steady-state windows: one
K=1 run's steady windows, K of them back to back (their compiles and warm-ups are in the total
wall time only; the runs after the first reuse the first's compiled graphs, as one process
would). Each row's final loss is compared with its case's reference row: one that is not finite
or differs by more than 10% says so in its note. Without CUDA the section is not run.

At defaults this section needs 40-70 minutes of a GPU; for a 15-minute lease use
``scripts/gpu_check.py`` instead. ``--gpu-variants`` picks variants (``compile``, ``eager``,
``graph``, ``nchw``, ``looped``, ``separate``, ``imp``), ``--gpu-deadline-s`` stops starting new
ones after that many seconds (their rows say so), ``--gpu-iterations``/``--gpu-el2n-iterations``
shorten the runs.

    python -m benchmarks --only gpu [--quick] [--gpu-variants compile,graph] [--gpu-deadline-s 600]
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .common import DEFAULT_CACHE, Row, forward_flops_per_image, open_synthetic, rerun, sync

SECTION = "gpu"
NOT_RUN = "not run: no GPU on this machine"

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, by a substring of the device name.
PEAK_BF16 = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM / HBM3
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
)  # no V100: it has no bf16 tensor cores (its 125 TFLOP/s are fp16), and the runs are bf16


@dataclass(frozen=True)
class GpuConfig:
    model: str = "resnet20"
    iterations: int = 62_400
    milestones: Sequence[int] = (31_200, 46_800)
    el2n_iterations: int = 7_800
    el2n_k: int = 10
    batch: int = 128
    train: int = 50_000
    lr: float = 0.1
    compile_modes: Sequence[bool] = (True, False)
    layouts: bool = True  # also: K=1 without channels_last; K models looped and as K separate runs
    amp: bool = True
    log_every: int = 100
    capture: bool = True  # also: the step replayed as a CUDA graph
    imp_levels: int = 12  # a whole IMP run (0: not run)
    imp_t_r: int = 400
    quick: bool = False
    variants: Optional[frozenset] = None  # keys of Variant.key (and "imp") to run; None: all
    deadline_s: float = 0.0  # no new variant starts after this many seconds of the section; 0: none


def peak_flops(device: torch.device) -> Optional[float]:
    if os.environ.get("LTHFAST_PEAK_TFLOPS"):
        return float(os.environ["LTHFAST_PEAK_TFLOPS"]) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16:
        if key in name:
            return value
    return None


@dataclass(frozen=True)
class Variant:
    """How one run executes: compiled or not, the packed model's execution, memory layout, and
    whether the K models run as K separate K=1 runs one after another."""

    compile: bool
    execution: str = "grouped"
    channels_last: bool = True
    separate: bool = False
    capture: bool = False

    @property
    def key(self) -> str:
        """The name ``--gpu-variants`` selects it by."""
        if self.separate:
            return "separate"
        if self.execution != "grouped":
            return self.execution
        if not self.channels_last:
            return "nchw"
        if self.capture:
            return "graph"
        return "compile" if self.compile else "eager"

    def label(self) -> str:
        parts = [f"compile {'on' if self.compile else 'off'}"]
        if self.capture:
            parts.append("CUDA graph")
        if self.separate:
            parts.append("K separate runs")
        elif self.execution != "grouped":
            parts.append(self.execution)
        if not self.channels_last:
            parts.append("NCHW")
        return ", ".join(parts)


def variants(cfg: GpuConfig, k: int) -> list[Variant]:
    out = [Variant(compile) for compile in cfg.compile_modes]
    if cfg.capture:
        out.append(Variant(cfg.compile_modes[0], capture=True))
    if cfg.layouts:
        compile = cfg.compile_modes[0]
        out += ([Variant(compile, channels_last=False)] if k == 1 else
                [Variant(compile, execution="looped"), Variant(compile, separate=True)])
    return out


class Contiguous:
    """A stream whose images are NCHW-contiguous (the layout comparison's baseline)."""

    def __init__(self, stream):
        self.stream, self.k = stream, stream.k

    def batch(self, step: int):
        x, y, idx = self.stream.batch(step)
        return x.contiguous(), y, idx


def variant_run(ds, cfg: GpuConfig, device: torch.device, k: int, iterations: int,
                variant: Variant) -> dict:
    """A variant's run; K separate runs are timed back to back and their windows summed."""
    if not variant.separate:
        return train_run(ds, cfg, device, k, iterations, variant)
    runs = [train_run(ds, cfg, device, 1, iterations, variant, seed=m, reset=m == 0)
            for m in range(k)]
    # steady state, as the packed rows: K runs back to back at run m's steady rate each take
    # sum(1/rate_m) seconds per image per model; K models' images over that
    steady = k / sum(1 / r["steady"] for r in runs)
    return {"total": sum(r["total"] for r in runs), "steady": steady,
            "windows": [k / sum(1 / w for w in ws) for ws in zip(*(r["windows"] for r in runs))],
            "losses": [loss for r in runs for loss in r["losses"]],
            "captured": all(r["captured"] for r in runs)}


def train_run(ds, cfg: GpuConfig, device: torch.device, k: int, iterations: int,
              variant: Variant, seed: int = 0, reset: bool = True) -> dict:
    """One lthfast training run; returns wall time and per-window images/s (all K models)."""
    from lthfast.data.loader import BatchStream, StreamSeeds
    from lthfast.data.loader import DeviceData
    from lthfast.experiments.common import new_model
    from lthfast.train.loop import LoopConfig, train
    from lthfast.train.schedule import Schedule

    compile = variant.compile
    if compile and reset:
        torch._dynamo.reset()  # each variant pays its own compile, as a fresh process would
    data = DeviceData.from_dataset(ds, "train", device)
    stream = BatchStream(data, [np.arange(ds.train_size)] * k,
                         [StreamSeeds(100 + seed + m, 200 + seed + m) for m in range(k)],
                         cfg.batch)
    model = new_model(cfg.model, ds.num_classes, list(range(seed, seed + k)), device)
    model.execution = variant.execution
    if not variant.channels_last:
        model = model.to(memory_format=torch.contiguous_format)
        stream = Contiguous(stream)
    marks: list[tuple[int, float]] = []
    log_every = max(1, min(cfg.log_every, iterations // 4 or 1))
    loop = LoopConfig(schedule=Schedule(cfg.lr, tuple(m for m in cfg.milestones if m < iterations)),
                      start_step=0, end_step=iterations, log_every=log_every, compile=compile,
                      amp=cfg.amp, capture=variant.capture)
    sync(device)
    start = time.perf_counter()
    # progress runs after the loop's host sync of the step, so its timestamps are exact
    result = train(model, stream, loop,
                   progress=lambda step, _end, _losses: marks.append((step, time.perf_counter())))
    sync(device)
    total = time.perf_counter() - start
    skip = max(log_every, iterations // 20)
    windows = [(s1 - s0) * cfg.batch * k / (t1 - t0)
               for (s0, t0), (s1, t1) in zip(marks, marks[1:]) if s0 >= skip and t1 > t0]
    if not windows:  # too short a run for windows: the whole run
        windows = [iterations * cfg.batch * k / total]
    return {"total": total, "windows": windows, "losses": result.mean_losses,
            "steady": float(np.median(windows)), "captured": result.captured}


def imp_run(cfg: GpuConfig, device: torch.device, cache) -> dict:
    """A whole IMP run through the API (what ``lthfast imp`` does), on the synthetic set:
    pre-training on all data to t_r, then ``imp_levels`` levels; wall time and final accuracy."""
    import tempfile

    from lthfast import api
    from lthfast.experiments.common import Runtime

    from .common import synthetic_dataset

    root = synthetic_dataset(cache, cfg.train).parent
    request = api.ImpRequest(dataset="synthetic", model=cfg.model, batch_size=cfg.batch,
                             lr=cfg.lr, pretrain_lr=cfg.lr, train_steps=cfg.iterations,
                             steps=min(cfg.imp_t_r, cfg.iterations // 2), levels=cfg.imp_levels)
    with tempfile.TemporaryDirectory(prefix="lthfast_gpu_imp_") as out:
        rt = Runtime(root=root, out=Path(out), device=str(device), compile=cfg.compile_modes[0],
                     cuda_graph=cfg.capture and device.type == "cuda")
        torch._dynamo.reset()
        sync(device)
        start = time.perf_counter()
        run = api.imp(request, rt)
        sync(device)
        total = time.perf_counter() - start
        records = sorted(run.records(), key=lambda r: r.level)
    return {"total": total, "levels": len(records), "first": records[0], "last": records[-1]}


def run(cfg: GpuConfig = GpuConfig(), device: Optional[torch.device] = None,
        cache=DEFAULT_CACHE, log=print, force: bool = False) -> list[Row]:
    """The GPU section; ``force`` runs it on another device too (tests use the CPU, tiny sizes)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    command = rerun(SECTION, cfg.quick)
    full = f"{cfg.model} CIFAR-10 schedule, {cfg.iterations:,} it × b{cfg.batch}"
    el2n = f"EL2N {cfg.el2n_k} × {cfg.model} packed, {cfg.el2n_iterations:,} it × b{cfg.batch}"
    imp = f"IMP {cfg.imp_levels} levels × {cfg.model}, {cfg.iterations:,} it × b{cfg.batch}"
    if device.type != "cuda" and not force:
        return [Row(SECTION, case, "lthfast loop", [], note=NOT_RUN, command=command)
                for case in (full, el2n) + ((imp,) if cfg.imp_levels else ())]
    from lthfast.train.backends import configure

    configure(device.type, deterministic=False)  # as lthfast runs: cuDNN autotuning, no TF32
    ds = open_synthetic(cache, cfg.train)
    size = int(ds.meta["image_shape"][0])
    fwd = forward_flops_per_image(cfg.model, ds.num_classes, size)
    peak = peak_flops(device)
    rows = []
    start = time.perf_counter()

    def late() -> bool:
        return bool(cfg.deadline_s) and time.perf_counter() - start > cfg.deadline_s

    def chosen(key: str) -> bool:
        return cfg.variants is None or key in cfg.variants

    for case, k, iterations in ((full, 1, cfg.iterations), (el2n, cfg.el2n_k, cfg.el2n_iterations)):
        reference_loss = None
        for variant in variants(cfg, k):
            label = variant.label()
            if not chosen(variant.key):
                continue
            if late():
                rows.append(Row(SECTION, case, f"lthfast loop, {label}", [], command=command,
                                note=f"not run: past the {cfg.deadline_s:.0f} s deadline"))
                continue
            log(f"[gpu] {case}: {label}")
            r = variant_run(ds, cfg, device, k, iterations, variant)
            loss = float(np.nanmean(r["losses"])) if len(r["losses"]) else math.nan
            if reference_loss is None:
                reference_loss = loss
            loss_note = compare_loss(loss, reference_loss)
            achieved = r["steady"] * 3 * fwd
            mfu = f"MFU {100 * achieved / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s" if peak else \
                "MFU n/a (peak of this device unknown; set LTHFAST_PEAK_TFLOPS)"
            rows.append(Row(
                SECTION, case, f"lthfast loop, {label}" + (", bf16" if cfg.amp else ""),
                r["windows"], reference=variant == variants(cfg, k)[0], command=command,
                note=(("replayed as a CUDA graph; " if r["captured"] else
                       "not captured (ran eagerly); " if variant.capture else "") +
                      f"total {r['total']:.0f} s incl. compile/warm-up; {achieved / 1e12:.2f} "
                      f"TFLOP/s achieved ({3 * fwd / 1e6:.0f} MFLOP per training image); {mfu}; "
                      f"final loss {loss:.3f}{loss_note}"),
                extra={"total_s": r["total"], "mfu": achieved / peak if peak else None,
                       "fwd_flops": fwd}))
    if cfg.imp_levels and chosen("imp"):
        if late():
            rows.append(Row(SECTION, imp, "lthfast imp", [], unit="s", command=command,
                            note=f"not run: past the {cfg.deadline_s:.0f} s deadline"))
        else:
            rows.append(imp_row(cfg, device, cache, command, log))
    return rows


def compare_loss(loss: float, reference: float) -> str:
    """'' when the final loss is finite and within 10% of the reference row's, else why not."""
    if not math.isfinite(loss):
        return " — NOT FINITE"
    if math.isfinite(reference) and abs(loss - reference) > 0.1 * abs(reference):
        return f" — differs from the reference row's {reference:.3f} by more than 10%"
    return ""


def imp_row(cfg: GpuConfig, device: torch.device, cache, command: str, log) -> Row:
    case = f"IMP {cfg.imp_levels} levels × {cfg.model}, {cfg.iterations:,} it × b{cfg.batch}"
    capture = cfg.capture and device.type == "cuda"  # a failed capture raises: never mislabelled
    label = Variant(cfg.compile_modes[0], capture=capture).label()
    log(f"[gpu] {case}: {label}")
    r = imp_run(cfg, device, cache)
    per_training = r["total"] / (r["levels"] + 1)  # the levels and the pre-training
    return Row(SECTION, case, f"lthfast imp, {label}" + (", bf16" if device.type == "cuda" else ""),
               [r["total"]], unit="s", command=command,
               note=(f"pre-training to t_r {min(cfg.imp_t_r, cfg.iterations // 2)}, then levels "
                     f"0–{r['last'].level}, incl. compile, evaluation and checkpoints: "
                     f"{per_training:.0f} s per training; test accuracy level 0 "
                     f"{r['first'].test_acc:.3f}, level {r['last'].level} "
                     f"({100 * r['last'].weights_remaining:.1f}% of weights) "
                     f"{r['last'].test_acc:.3f} (synthetic data: timing only)"),
               extra={"total_s": r["total"], "levels": r["levels"]})
