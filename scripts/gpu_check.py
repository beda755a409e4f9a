"""The first GPU check: one budgeted run that proves the CUDA path and measures it (issue #23).

A GPU is lent in 15-minute windows (one H200, a minute or more of it spent starting), so this
is one prepared script that fits with room to rerun: phases in order of value, each writing
its results into one JSON at once (rewritten atomically after every phase), and a phase that
would overrun ``--budget-s`` is skipped with an extrapolation of what it would have measured,
estimated from a short timed probe (or from what earlier phases measured):

  A  replay == eager, without compile: K=1, and K=3 with per-model lrs and weight decays; lrs
     that change every step (warmup, a milestone), 50% masks, bf16; per-step losses and final
     weights, bit for bit, under ``--deterministic``'s settings (which must not raise either)
  B  host syncs per step (``torch.cuda.set_sync_debug_mode``), eager and replayed: must be 0
  C  launches per step (``torch.profiler``): host launch calls, device kernels, device busy time
  D  inductor compile, K=1: compile time, graph breaks (must be 0), compiled == compiled + graph
  E  steady ms/step of a ResNet-20 step at batch 128: eager, graph, compile, compile + graph
  F  EL2N's K=10 packed step against ten K=1 runs, steady windows for both (goal ≥ 1.5×)
  G  the full ResNet-20 CIFAR-10 schedule (62,400 iterations, synthetic data) through the
     loop: wall time and MFU (goal ≤ 30 s)
  H  the full EL2N ensemble: K=10 packed for 7,800 iterations, then EL2N of 50,000 images
     (goal ≤ 60 s)
  I  the packed stem (grouped conv, 3 input channels per group, NHWC bf16) against 4 per group

F, G and H run in ``--mode`` (default: the fastest of E; in the smoke run compile + graph).
Exit 1 on any failed capture, replay mismatch, hidden sync, graph break, non-finite loss or
tensor off the GPU; the JSON's ``failures`` says which. ``--smoke`` runs the same phases on the
CPU at tiny sizes, CUDA graphs by their stand-in (``EmulatedGraph``) and inductor by
``aot_eager`` (CI: tests/test_gpu_check.py).
It imports nothing that needs ffcv, and runs from the source tree.

With the device tool (one call; the timeout leaves a rerun's room in a 15-minute lease):

    run  timeout_s=480  command=
      "PYTHONUNBUFFERED=1 PYTHONPATH=. python3 scripts/gpu_check.py --out $OUT/gpu_check.json"

Rerun only what is missing, in the mode E found fastest: ``--phases G,H --mode compile+graph
--budget-s 300`` (a skipped phase's estimate is then timed in that mode). On the CPU:

    PYTHONPATH=. python scripts/gpu_check.py --smoke --out /tmp/gpu_check.json
"""

from __future__ import annotations

import os

# before CUDA is initialised: cuBLAS reads it when it makes its workspace (phase A is bit-exact)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Optional  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the source tree, not a venv's copy

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lthfast.data.loader import BatchStream, DeviceData, StreamSeeds  # noqa: E402
from lthfast.data.sources import AugmentSpec  # noqa: E402
from lthfast.models import build  # noqa: E402
from lthfast.prune.magnitude import full_masks, prune  # noqa: E402
from lthfast.train import backends  # noqa: E402
from lthfast.train.capture import CapturedStep, graph_for  # noqa: E402
from lthfast.train.compiled import compiled_forward  # noqa: E402
from lthfast.train.counting import OpCounter, count_syncs  # noqa: E402
from lthfast.train.optim import FusedSGD, masks_for  # noqa: E402
from lthfast.train.schedule import Schedule, lr_table  # noqa: E402
from lthfast.train.step import TrainStep  # noqa: E402

MODES = ("eager", "graph", "compile", "compile+graph")
GOALS = {"full_schedule_s": 30.0, "el2n_s": 60.0, "packed_speedup": 1.5}


@dataclass(frozen=True)
class Sizes:
    model: str = "resnet20"
    image: int = 32
    train: int = 50_000
    classes: int = 10
    batch: int = 128
    check_steps: int = 16  # A, D: steps compared (3 eager warm-up, the capture, replays)
    count_steps: int = 40  # B, C: steps counted (> 32: one of the loader's host-to-device refills)
    warmup_steps: int = 20  # E, F: steps before timing (compile, autotuning, capture)
    time_steps: int = 200  # E, F: timed steps per variant
    probe_steps: int = 5
    full_iterations: int = 62_400
    milestones: tuple = (31_200, 46_800)
    el2n_k: int = 10
    el2n_iterations: int = 7_800
    eval_batch: int = 1024
    log_every: int = 500  # G, H: the loop's host reads
    compile_backend: str = "inductor"
    compile_prior_s: float = 90.0  # one inductor compile of a training step, before any is measured
    budget_s: float = 360.0


SMOKE = Sizes(model="resnet8", image=8, train=256, batch=16, check_steps=7, count_steps=4,
              warmup_steps=4, time_steps=4, probe_steps=2, full_iterations=12, milestones=(6, 9),
              el2n_k=3, el2n_iterations=8, eval_batch=96, log_every=4,
              compile_backend="aot_eager", compile_prior_s=15.0, budget_s=300.0)


# -- the check: budget, phases, one JSON --------------------------------------------------------

@dataclass
class Phase:
    name: str
    title: str
    probe: Callable[["Context"], dict]  # -> {"estimate_s": ..., "extrapolation": {...}}
    run: Callable[["Context"], dict]  # -> results; failures through ctx.check


class Check:
    """Runs phases within a budget of seconds, writing ``out`` after each. ``clock`` is
    injectable (tests): the budget logic reads time only through it."""

    def __init__(self, out: Path, budget_s: float, meta: dict,
                 clock: Callable[[], float] = time.monotonic, log=None):
        self.out, self.budget_s, self.clock = Path(out), budget_s, clock
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.start = clock()
        self.doc = {"meta": meta, "budget_s": budget_s, "phases": {}, "failures": [],
                    "goals": {}, "passed": None}

    def elapsed(self) -> float:
        return self.clock() - self.start

    def write(self) -> None:
        self.doc["elapsed_s"] = round(self.elapsed(), 3)
        self.doc["passed"] = not self.doc["failures"]
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=_plain) + "\n")
        os.replace(tmp, self.out)  # a reader (or a killed run) sees the last whole file

    def fail(self, phase: str, why: str) -> None:
        self.doc["failures"].append(f"{phase}: {why}")
        self.log(f"[{phase}] FAILED: {why}")

    def run_phase(self, phase: Phase, ctx: "Context") -> None:
        entry = {"title": phase.title}
        self.doc["phases"][phase.name] = entry
        t0 = self.clock()
        ctx.phase = phase.name
        try:
            estimate = phase.probe(ctx)
            entry["probe_s"] = round(self.clock() - t0, 3)
            entry["estimate_s"] = round(float(estimate["estimate_s"]), 3)
            left = self.budget_s - self.elapsed()
            if estimate["estimate_s"] > left:
                entry["status"] = "skipped"
                entry["reason"] = (f"estimated {estimate['estimate_s']:.0f} s, "
                                   f"{max(left, 0):.0f} s of the budget left")
                entry["extrapolation"] = estimate.get("extrapolation", {})
                self.log(f"[{phase.name}] skipped: {entry['reason']}")
            else:
                self.log(f"[{phase.name}] {phase.title} (estimated {estimate['estimate_s']:.0f} s)")
                failures = len(self.doc["failures"])
                entry["results"] = phase.run(ctx)
                entry["status"] = "ok" if len(self.doc["failures"]) == failures else "failed"
        except Exception as error:  # one phase's crash is a finding; the next phases still run
            entry["status"] = "error"
            entry["error"] = f"{type(error).__name__}: {error}".splitlines()[0]
            entry["traceback"] = traceback.format_exc(limit=8)
            self.fail(phase.name, entry["error"])
        entry["seconds"] = round(self.clock() - t0, 3)
        self.doc["goals"] = goals(self.doc["phases"])
        self.write()

    def run(self, phases: list[Phase], ctx: "Context") -> int:
        self.write()
        for phase in phases:
            self.run_phase(phase, ctx)
        self.log(f"{'passed' if not self.doc['failures'] else 'FAILED'} in "
                 f"{self.elapsed():.0f} s; wrote {self.out}")
        return 0 if not self.doc["failures"] else 1


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def goals(phases: dict) -> dict:
    """The issue's goals against what was measured (or, for a skipped phase, extrapolated)."""
    def value(name, key):
        p = phases.get(name, {})
        if p.get("status") in ("ok", "failed") and key in p.get("results", {}):
            return p["results"][key], "measured"
        if p.get("status") == "skipped" and key in p.get("extrapolation", {}):
            return p["extrapolation"][key], "extrapolated"
        return None, "not measured"

    out = {}
    for goal, (phase, key, target, better) in {
            "full ResNet-20 schedule ≤ 30 s": ("G", "total_s", GOALS["full_schedule_s"], "low"),
            "EL2N K=10 ≤ 60 s": ("H", "total_s", GOALS["el2n_s"], "low"),
            "packed K=10 ≥ 1.5× ten K=1 runs": ("F", "speedup", GOALS["packed_speedup"], "high"),
            "0 syncs per step": ("B", "max_syncs_per_step", 0, "low"),
    }.items():
        v, how = value(phase, key)
        met = None if v is None else (v <= target if better == "low" else v >= target)
        out[goal] = {"value": v, "how": how, "met": met}
    a = phases.get("A", {})
    out["replay == eager"] = {"value": a.get("results", {}).get("all_equal"),
                              "how": "measured" if "results" in a else "not measured",
                              "met": a.get("results", {}).get("all_equal")}
    return out


# -- what the phases share ----------------------------------------------------------------------

class Context:
    """Device, sizes, the synthetic data set and what earlier phases measured."""

    def __init__(self, device: torch.device, sizes: Sizes, check: Check, mode: str):
        self.device, self.sizes, self.check, self.mode_arg = device, sizes, check, mode
        self.phase = ""
        self.cuda = device.type == "cuda"
        rng = np.random.default_rng(0)  # timing and equality do not depend on the pixels
        images = rng.integers(0, 256, (sizes.train, sizes.image, sizes.image, 3), dtype=np.uint8)
        labels = rng.integers(0, sizes.classes, sizes.train)
        self.data = DeviceData(images, labels, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26),
                               AugmentSpec(), device)
        self.ms: dict[tuple[str, int], float] = {}  # (mode, K) -> steady ms/step
        self.runners: dict[tuple[str, int], "Runner"] = {}
        self.compile_s: Optional[float] = None

    def expect(self, ok: bool, why: str) -> bool:
        if not ok:
            self.check.fail(self.phase, why)
        return ok

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def mode(self) -> str:
        """The mode of F, G and H: ``--mode``, or the fastest K=1 mode E measured."""
        if self.mode_arg != "fastest":
            return self.mode_arg
        measured = {m: ms for (m, k), ms in self.ms.items() if k == 1}
        return min(measured, key=measured.get) if measured else "graph"

    def compile_estimate(self) -> float:
        return self.compile_s if self.compile_s is not None else self.sizes.compile_prior_s

    def off_device(self, tensors) -> list[str]:
        return [name for name, t in tensors if t.device.type != self.device.type]


class Runner:
    """The loop's per-step device work (batch, lr row, step, loss record), without its
    logging reads: what B, C, E and F count and time."""

    def __init__(self, ctx: Context, k: int, mode: str, per_model: bool = False,
                 masks: bool = True, seed: int = 0, steps: int = 100_000):
        s, device = ctx.sizes, ctx.device
        self.ctx, self.k, self.mode = ctx, k, mode
        model = build(s.model, s.classes, k=k)
        model.reset_parameters([seed + m for m in range(k)])
        self.model = model.to(device=device, memory_format=torch.channels_last)
        mask = None
        if masks:
            state = self.model.state_dict()
            mask = prune(state, full_masks(state), 0.5)
        schedules = ([Schedule(0.05 * (m + 1), (7,), warmup=5) for m in range(k)] if per_model
                     else [Schedule(0.1, (7,), warmup=5)] * k)
        decays = [1e-4 * (m + 1) for m in range(k)] if per_model else [5e-4] * k
        self.opt = FusedSGD(list(self.model.parameters()), k, 0.9,
                            masks_for(self.model, mask), decays)
        self.stream = BatchStream(ctx.data, [np.arange(ctx.data.n)] * k,
                                  [StreamSeeds(seed + m, 50 + seed + m) for m in range(k)],
                                  s.batch)
        forward = compiled_forward(self.model, "train") if "compile" in mode else self.model
        step = TrainStep(forward, self.opt, amp=True)
        self.captured_step = None
        if "graph" in mode:
            kind = graph_for(device)
            if kind is None:
                raise RuntimeError(f"no graph capture on {device} (smoke: set "
                                   f"LTHFAST_CAPTURE_BACKEND=emulate)")
            step = self.captured_step = CapturedStep(step, kind(), self.opt.params)
        self.run_step = step
        self.lrs = lr_table(schedules, 0, steps, torch.float32, device)
        self.losses = torch.zeros(steps, k, dtype=torch.float32, device=device)
        self.t = 0
        self.logits = None

    def steps(self, n: int) -> None:
        for _ in range(n):
            x, y, _ = self.stream.batch(self.t)
            logits, losses = self.run_step(x, y, self.lrs[self.t])
            self.losses[self.t].copy_(losses)
            self.t += 1
        self.logits = logits

    def timed(self, n: int) -> float:
        """ms per step over ``n`` steps, the device synchronised before and after."""
        self.ctx.sync()
        t0 = time.perf_counter()
        self.steps(n)
        self.ctx.sync()
        return 1000 * (time.perf_counter() - t0) / n

    def verify(self, ctx: Context, what: str) -> None:
        """Finite losses, captured if asked, every tensor of the step on the device."""
        losses = self.losses[: self.t]
        ctx.expect(bool(torch.isfinite(losses).all()), f"{what}: non-finite loss")
        if self.captured_step is not None:
            ctx.expect(self.captured_step.captured, f"{what}: not captured "
                       f"({self.captured_step.failed})")
        tensors = [(n, p) for n, p in self.model.named_parameters()]
        tensors += [(n, b) for n, b in self.model.named_buffers()]
        tensors += [("optimizer.flat", self.opt.flat), ("optimizer.momentum", self.opt.buf),
                    ("lrs", self.lrs), ("losses", self.losses), ("logits", self.logits)]
        off = ctx.off_device(tensors)
        ctx.expect(not off, f"{what}: tensors off the {ctx.device.type}: {off[:5]}")


def runner(ctx: Context, mode: str, k: int) -> "Runner":
    """One warm runner per (mode, K), shared by the phases (compiled graphs and captures once)."""
    key = (mode, k)
    if key not in ctx.runners:
        r = Runner(ctx, k, mode)
        ctx.sync()
        t0 = time.perf_counter()
        r.steps(ctx.sizes.warmup_steps)
        ctx.sync()
        r.warmup_s = time.perf_counter() - t0
        ctx.runners[key] = r
    return ctx.runners[key]


def probe_ms(ctx: Context, k: int = 1) -> float:
    """ms per eager step of K models, from a few steps (what estimates scale from)."""
    if ("eager", k) in ctx.ms:
        return ctx.ms["eager", k]
    r = Runner(ctx, k, "eager")
    r.steps(1)
    return r.timed(ctx.sizes.probe_steps)


def mode_ms(ctx: Context, mode: str, k: int) -> float:
    """The steady ms/step of ``mode`` at K: measured (by E or F), else timed now when that
    needs no new compile (a warm-up and a few steps; the runner is kept for the phase), else
    a bound from above (K × the K=1 figure, or K × an eager K=1 probe)."""
    if (mode, k) in ctx.ms:
        return ctx.ms[mode, k]
    compiled = any("compile" in m and kk == k for m, kk in ctx.runners)
    if "compile" not in mode or compiled:
        ctx.ms[mode, k] = runner(ctx, mode, k).timed(4 * ctx.sizes.probe_steps)
        return ctx.ms[mode, k]
    if (mode, 1) in ctx.ms:
        return ctx.ms[mode, 1] * k
    return probe_ms(ctx, 1) * k


# -- A: replay == eager -------------------------------------------------------------------------

def _loop_run(ctx: Context, k: int, per_model: bool, capture: bool):
    from lthfast.train.loop import LoopConfig, train

    s = ctx.sizes
    torch.manual_seed(0)
    model = build(s.model, s.classes, k=k)
    model.reset_parameters(list(range(k)))
    model = model.to(device=ctx.device, memory_format=torch.channels_last)
    state = model.state_dict()
    masks = prune(state, full_masks(state), 0.5)
    schedule = (tuple(Schedule(0.05 * (m + 1), (7,), warmup=5) for m in range(k)) if per_model
                else Schedule(0.1, (7,), warmup=5))  # lrs change at every warmup step and at 7
    decay = tuple(1e-4 * (m + 1) for m in range(k)) if per_model else 5e-4
    stream = BatchStream(ctx.data, [np.arange(ctx.data.n)] * k,
                         [StreamSeeds(m, 10 + m) for m in range(k)], s.batch)
    cfg = LoopConfig(schedule, 2, 2 + s.check_steps, weight_decay=decay, log_every=1,
                     capture=capture, amp=True)
    result = train(model, stream, cfg, masks=masks)
    return model, result


def probe_a(ctx: Context) -> dict:
    return {"estimate_s": 4 * ctx.sizes.check_steps * probe_ms(ctx, 3) / 1000 + 4}


def run_a(ctx: Context) -> dict:
    backends.configure(ctx.device.type, deterministic=True)
    out = {"deterministic": True, "cases": {}}
    try:
        for k, per_model in ((1, False), (3, True)):
            name = f"K={k}" + (", per-model lrs and decays" if per_model else "") + \
                ", warmup lrs, 50% masks, bf16"
            eager_model, eager = _loop_run(ctx, k, per_model, capture=False)
            graph_model, graph = _loop_run(ctx, k, per_model, capture=True)
            ctx.expect(graph.captured, f"{name}: not captured")
            losses_e = np.array([e["loss"] for e in eager.log])
            losses_g = np.array([e["loss"] for e in graph.log])
            ctx.expect(bool(np.isfinite(losses_e).all()), f"{name}: non-finite loss")
            weights_equal, max_diff = True, 0.0
            for (n, a), b in zip(eager_model.state_dict().items(),
                                 graph_model.state_dict().values()):
                weights_equal &= torch.equal(a, b)
                if a.is_floating_point():
                    max_diff = max(max_diff, (a.double() - b.double()).abs().max().item())
            momentum_equal = torch.equal(eager.optimizer_state["momentum"],
                                         graph.optimizer_state["momentum"])
            equal = bool(np.array_equal(losses_e, losses_g) and weights_equal and momentum_equal)
            ctx.expect(equal, f"{name}: replay != eager (max weight diff {max_diff:.3g})")
            off = ctx.off_device(list(graph_model.state_dict().items()))
            ctx.expect(not off, f"{name}: tensors off the {ctx.device.type}: {off[:5]}")
            out["cases"][name] = {
                "steps": len(losses_e), "losses_equal": bool(np.array_equal(losses_e, losses_g)),
                "weights_equal": bool(weights_equal), "momentum_equal": bool(momentum_equal),
                "max_weight_diff": max_diff, "captured": graph.captured,
                "eager_losses": losses_e.tolist(), "replayed_losses": losses_g.tolist()}
    finally:
        backends.configure(ctx.device.type, deterministic=False)
    out["all_equal"] = all(c["losses_equal"] and c["weights_equal"] and c["momentum_equal"]
                           for c in out["cases"].values()) and len(out["cases"]) == 2
    return out


# -- B: host syncs per step ---------------------------------------------------------------------

def count_host_syncs(ctx: Context, fn: Callable[[], None]) -> dict:
    """Syncs while ``fn`` runs: on CUDA every synchronizing call the sync debug mode reports,
    and on any device the host reads of device values (``lthfast.train.counting``)."""
    with count_syncs() as reads, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if ctx.cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            if ctx.cuda:
                torch.cuda.set_sync_debug_mode("default")
    device = [str(w.message).splitlines()[0] for w in caught
              if "synchroniz" in str(w.message).lower()]
    return {"host_reads": sum(reads.values()), "device_syncs": len(device),
            "examples": sorted(set(device))[:5] + sorted(reads)[:5]}


def probe_b(ctx: Context) -> dict:
    s = ctx.sizes
    return {"estimate_s": 2 * (s.warmup_steps + s.count_steps) * probe_ms(ctx) / 1000 + 2}


def run_b(ctx: Context) -> dict:
    out, n = {}, ctx.sizes.count_steps
    for mode in ("eager", "graph"):
        r = runner(ctx, mode, 1)
        counted = count_host_syncs(ctx, lambda: r.steps(n))
        per_step = (counted["host_reads"] + counted["device_syncs"]) / n
        out[mode] = dict(counted, steps=n, per_step=per_step)
        ctx.expect(per_step == 0, f"{mode}: {per_step:g} syncs per step ({counted['examples']})")
        r.verify(ctx, mode)
    out["max_syncs_per_step"] = max(out[m]["per_step"] for m in ("eager", "graph"))
    return out


# -- C: launches per step -----------------------------------------------------------------------

_LAUNCHES = ("LaunchKernel", "GraphLaunch", "cudaMemcpyAsync", "cudaMemsetAsync")


def launches(ctx: Context, r: Runner, n: int) -> dict:
    """Per step: host launch calls, device kernels and their busy time (CUDA, by the profiler);
    on the CPU the aten ops that would launch a kernel (``OpCounter``; replays not counted)."""
    if not ctx.cuda:
        with OpCounter() as ops:
            r.steps(n)
        return {"host_launches": ops.total / n, "device_kernels": None, "device_busy_ms": None,
                "source": "OpCounter (CPU proxy)"}
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    ctx.sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        r.steps(n)
        ctx.sync()
    events = prof.events()
    host = [e for e in events if e.device_type == DeviceType.CPU
            and any(key in e.name for key in _LAUNCHES)]
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    busy_us = sum(e.time_range.elapsed_us() for e in kernels)
    names = {}
    for e in kernels:
        names[e.name[:60]] = names.get(e.name[:60], 0) + 1
    top = sorted(names.items(), key=lambda kv: -kv[1])[:8]
    return {"host_launches": len(host) / n, "device_kernels": len(kernels) / n,
            "device_busy_ms": busy_us / 1000 / n, "source": "torch.profiler",
            "top_kernels": [f"{c / n:g}× {name}" for name, c in top]}


def probe_c(ctx: Context) -> dict:
    return {"estimate_s": 3 * ctx.sizes.count_steps * probe_ms(ctx) / 1000 + 5}


def run_c(ctx: Context) -> dict:
    n = ctx.sizes.count_steps
    out = {mode: launches(ctx, runner(ctx, mode, 1), n) for mode in ("eager", "graph")}
    ms = {mode: runner(ctx, mode, 1).timed(n) for mode in ("eager", "graph")}
    for mode in out:
        out[mode]["ms_per_step"] = ms[mode]
        if out[mode]["device_busy_ms"]:
            out[mode]["device_busy_fraction"] = out[mode]["device_busy_ms"] / ms[mode]
    return out


# -- D: compile ---------------------------------------------------------------------------------

def probe_d(ctx: Context) -> dict:
    s = ctx.sizes
    return {"estimate_s": ctx.compile_estimate() + 2 * (s.warmup_steps + s.check_steps)
            * probe_ms(ctx) / 1000 + 5,
            "extrapolation": {"compile_s": ctx.compile_estimate()}}


def run_d(ctx: Context) -> dict:
    from torch._dynamo.utils import counters

    counters.clear()
    eager_ms = probe_ms(ctx)
    r = Runner(ctx, 1, "compile")
    ctx.sync()
    t0 = time.perf_counter()
    r.steps(1)
    ctx.sync()
    first = time.perf_counter() - t0
    ctx.compile_s = max(first - eager_ms / 1000, 0.0)
    breaks = sum(counters["graph_break"].values())
    graphs = counters["stats"]["unique_graphs"]
    ctx.expect(breaks == 0, f"{breaks} graph breaks: {dict(counters['graph_break'])}")
    # compiled vs compiled + graph, the same seeds, steps and batches
    g = Runner(ctx, 1, "compile+graph")
    r.steps(ctx.sizes.check_steps - 1)
    g.steps(ctx.sizes.check_steps)
    recompiles = counters["stats"]["unique_graphs"] - graphs
    la, lb = r.losses[: r.t].double(), g.losses[: g.t].double()
    loss_rel = ((la - lb).abs() / la.abs().clamp_min(1e-12)).max().item()
    weight_diff = max((p - q).abs().max().item()
                      for p, q in zip(r.model.parameters(), g.model.parameters()))
    equal = torch.equal(la, lb) and all(torch.equal(p, q) for p, q in
                                        zip(r.model.parameters(), g.model.parameters()))
    # cuDNN may pick other algorithms run to run (benchmark on): close, not necessarily equal
    ctx.expect(loss_rel <= 1e-3 and weight_diff <= 1e-3,
               f"compiled + graph != compiled (loss rel diff {loss_rel:.3g}, "
               f"weight diff {weight_diff:.3g})")
    r.verify(ctx, "compile")
    g.verify(ctx, "compile+graph")
    for runner_, mode in ((r, "compile"), (g, "compile+graph")):  # warm: E times them
        ctx.runners[mode, 1] = runner_
        runner_.warmup_s = first if mode == "compile" else None
    return {"backend": ctx.sizes.compile_backend, "compile_s": ctx.compile_s,
            "first_step_s": first, "graph_breaks": breaks, "graphs": graphs,
            "graphs_added_by_capture": recompiles, "bit_equal": bool(equal),
            "max_loss_rel_diff": loss_rel, "max_weight_diff": weight_diff,
            "losses": la.tolist(), "losses_with_graph": lb.tolist()}


# -- E: ms/step ---------------------------------------------------------------------------------

def probe_e(ctx: Context) -> dict:
    s = ctx.sizes
    compile = 0.0 if ("compile", 1) in ctx.runners else ctx.compile_estimate()
    ms = probe_ms(ctx)
    return {"estimate_s": compile + 4 * (s.warmup_steps + s.time_steps) * ms / 1000 + 3,
            "extrapolation": {"eager_ms_per_step": ms}}


def run_e(ctx: Context) -> dict:
    out = {}
    for mode in MODES:
        r = runner(ctx, mode, 1)
        ms = r.timed(ctx.sizes.time_steps)
        r.verify(ctx, mode)
        ctx.ms[mode, 1] = ms
        out[mode] = {"ms_per_step": ms, "images_per_s": ctx.sizes.batch * 1000 / ms}
    out["fastest"] = min(MODES, key=lambda m: out[m]["ms_per_step"])
    return out


# -- F: packed K=10 vs ten K=1 ------------------------------------------------------------------

def probe_f(ctx: Context) -> dict:
    s, mode = ctx.sizes, ctx.mode()
    compile = ctx.compile_estimate() if "compile" in mode and (mode, s.el2n_k) not in \
        ctx.runners else 0.0
    ms10 = mode_ms(ctx, mode, s.el2n_k)
    return {"estimate_s": compile + (s.warmup_steps + s.time_steps) * ms10 / 1000 + 3,
            "extrapolation": {"mode": mode, "k10_ms_per_step_at_most": ms10}}


def run_f(ctx: Context) -> dict:
    s, mode = ctx.sizes, ctx.mode()
    one = runner(ctx, mode, 1)
    if (mode, 1) not in ctx.ms:
        ctx.ms[mode, 1] = one.timed(s.time_steps)
    packed = runner(ctx, mode, s.el2n_k)
    ms_k = packed.timed(s.time_steps)
    packed.verify(ctx, f"{mode}, K={s.el2n_k}")
    ctx.ms[mode, s.el2n_k] = ms_k
    separate = s.el2n_k * ctx.ms[mode, 1]
    return {"mode": mode, "k": s.el2n_k, "packed_ms_per_step": ms_k,
            "one_model_ms_per_step": ctx.ms[mode, 1], "separate_ms_per_step": separate,
            "speedup": separate / ms_k,
            "how": f"steady windows for both: K separate runs = {s.el2n_k} × the K=1 step of the "
                   f"same mode (compile and warm-up excluded from both)"}


# -- G: the full schedule -----------------------------------------------------------------------

def _flops_and_peak(ctx: Context) -> tuple[float, Optional[float]]:
    from benchmarks.common import forward_flops_per_image
    from benchmarks.gpu import peak_flops

    fwd = forward_flops_per_image(ctx.sizes.model, ctx.sizes.classes, ctx.sizes.image)
    return 3 * fwd, peak_flops(ctx.device)


def loop_run(ctx: Context, k: int, iterations: int, milestones: tuple) -> dict:
    """The real loop (``lthfast.train.loop.train``) in ``ctx.mode()``: wall time, steady
    windows, final losses."""
    from lthfast.train.loop import LoopConfig, train

    s, mode = ctx.sizes, ctx.mode()
    model = build(s.model, s.classes, k=k)
    model.reset_parameters(list(range(100, 100 + k)))
    model = model.to(device=ctx.device, memory_format=torch.channels_last)
    stream = BatchStream(ctx.data, [np.arange(ctx.data.n)] * k,
                         [StreamSeeds(300 + m, 400 + m) for m in range(k)], s.batch)
    marks = []
    cfg = LoopConfig(Schedule(0.1, tuple(milestones)), 0, iterations,
                     log_every=min(s.log_every, iterations), compile="compile" in mode,
                     amp=True, capture="graph" in mode)
    ctx.sync()
    t0 = time.perf_counter()
    result = train(model, stream, cfg, progress=lambda step, *_: marks.append(
        (step, time.perf_counter())))
    ctx.sync()
    total = time.perf_counter() - t0
    windows = [(b - a) / (tb - ta) for (a, ta), (b, tb) in zip(marks[1:], marks[2:]) if tb > ta]
    steps_per_s = float(np.median(windows)) if windows else iterations / total
    ctx.expect(all(math.isfinite(v) for v in result.mean_losses), "non-finite final loss")
    if "graph" in mode:
        ctx.expect(result.captured, "not captured")
    return {"model": model, "mode": mode, "total_s": total, "iterations": iterations,
            "steady_steps_per_s": steps_per_s, "final_losses": result.mean_losses,
            "captured": result.captured}


def probe_g(ctx: Context) -> dict:
    s, mode = ctx.sizes, ctx.mode()
    ms = mode_ms(ctx, mode, 1)
    compile = ctx.compile_estimate() if "compile" in mode and (mode, 1) not in ctx.runners \
        else 0.0
    train_flops, peak = _flops_and_peak(ctx)
    total = s.full_iterations * ms / 1000
    mfu = s.batch * 1000 / ms * train_flops / peak if peak else None
    return {"estimate_s": compile + total + 5,
            "extrapolation": {"mode": mode, "total_s": total, "ms_per_step": ms, "mfu": mfu,
                              "how": f"{s.full_iterations:,} × the steady ms/step of {mode}"}}


def run_g(ctx: Context) -> dict:
    s = ctx.sizes
    r = loop_run(ctx, 1, s.full_iterations, s.milestones)
    r.pop("model")
    train_flops, peak = _flops_and_peak(ctx)
    achieved = r["steady_steps_per_s"] * s.batch * train_flops
    r.update({"achieved_tflops": achieved / 1e12, "peak_tflops": peak / 1e12 if peak else None,
              "mfu": achieved / peak if peak else None,
              "train_mflop_per_image": train_flops / 1e6})
    return r


# -- H: the EL2N ensemble -----------------------------------------------------------------------

def probe_h(ctx: Context) -> dict:
    s, mode = ctx.sizes, ctx.mode()
    ms = mode_ms(ctx, mode, s.el2n_k)
    compile = ctx.compile_estimate() if "compile" in mode else 0.0  # K=10 eval, maybe training
    total = s.el2n_iterations * ms / 1000
    return {"estimate_s": compile + total + 10,
            "extrapolation": {"mode": mode, "total_s": total, "ms_per_step": ms,
                              "how": f"{s.el2n_iterations:,} × the K={s.el2n_k} ms/step of "
                                     f"{mode} (F, or {s.el2n_k} × K=1), evaluation not counted"}}


def run_h(ctx: Context) -> dict:
    from lthfast.train.evaluate import el2n, predict

    s = ctx.sizes
    t0 = time.perf_counter()
    r = loop_run(ctx, s.el2n_k, s.el2n_iterations, ())
    model = r.pop("model")
    t1 = time.perf_counter()
    logits = predict(model, ctx.data, batch_size=s.eval_batch, amp=True,
                     compile="compile" in r["mode"])
    scores = el2n(logits, ctx.data.labels).mean(0)
    ctx.sync()
    t2 = time.perf_counter()
    ctx.expect(bool(torch.isfinite(scores).all()), "non-finite EL2N scores")
    ctx.expect(scores.device.type == ctx.device.type, "EL2N scores off the device")
    r.update({"train_s": t1 - t0, "score_s": t2 - t1, "total_s": t2 - t0,
              "examples": int(scores.numel())})
    return r


# -- I: the packed stem -------------------------------------------------------------------------

def probe_i(ctx: Context) -> dict:
    return {"estimate_s": 3.0}


def run_i(ctx: Context) -> dict:
    """fwd+bwd of the K=10 stem (groups=10) at 3 and at 4 input channels per group (the 4th
    zero): if 4 is much faster, pad the stem's input."""
    s, k = ctx.sizes, ctx.sizes.el2n_k
    out = {}
    for c in (3, 4):
        conv = torch.nn.Conv2d(c * k, 16 * k, 3, padding=1, groups=k, bias=False)
        conv = conv.to(ctx.device, memory_format=torch.channels_last)
        x = torch.randn(s.batch, c * k, s.image, s.image, device=ctx.device)
        x = x.contiguous(memory_format=torch.channels_last)

        def step():
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
                conv(x).float().sum().backward()
        for _ in range(3):
            step()
        ctx.sync()
        t0 = time.perf_counter()
        n = 5 if not ctx.cuda else 50
        for _ in range(n):
            step()
        ctx.sync()
        out[f"{c}_channels_per_group_ms"] = 1000 * (time.perf_counter() - t0) / n
    out["ratio_3_over_4"] = out["3_channels_per_group_ms"] / out["4_channels_per_group_ms"]
    return out


PHASES = [
    Phase("A", "replay == eager (no compile): K=1, K=3 per-model lrs, masks, bf16", probe_a, run_a),
    Phase("B", "host syncs per step, eager and replayed", probe_b, run_b),
    Phase("C", "launches per step: host launch calls, device kernels, busy time", probe_c, run_c),
    Phase("D", "compile K=1: compile time, graph breaks, compiled == compiled + graph",
          probe_d, run_d),
    Phase("E", "steady ms/step: eager, graph, compile, compile + graph", probe_e, run_e),
    Phase("F", "EL2N K=10 packed vs ten K=1 runs (steady windows)", probe_f, run_f),
    Phase("G", "the full ResNet-20 CIFAR-10 schedule: wall time and MFU", probe_g, run_g),
    Phase("H", "the full EL2N K=10 ensemble: training and scores", probe_h, run_h),
    Phase("I", "packed stem: 3 vs 4 input channels per group", probe_i, run_i),
]


def _figures(name: str, r: dict) -> str:
    """A phase's headline figures, for the markdown table."""
    def f(v, fmt=".3g"):
        return "—" if v is None else format(v, fmt)
    if name == "A":
        cases = len(r.get("cases", {}))
        return f"replay == eager bit for bit: {r.get('all_equal')} ({cases} cases)"
    if name == "B":
        return (f"syncs per step: eager {f(r['eager']['per_step'])}, replayed "
                f"{f(r['graph']['per_step'])}")
    if name == "C":
        return "; ".join(f"{m}: {f(r[m]['host_launches'])} host launches, "
                         f"{f(r[m]['device_kernels'])} kernels, {f(r[m]['device_busy_ms'])} ms "
                         f"busy of {f(r[m]['ms_per_step'])} ms" for m in ("eager", "graph"))
    if name == "D":
        return (f"{r['backend']}: compile {f(r['compile_s'])} s, {r['graph_breaks']} graph "
                f"breaks, compiled + graph bit-equal: {r['bit_equal']}")
    if name == "E":
        return ", ".join(f"{m} {f(r[m]['ms_per_step'])} ms" for m in MODES) + \
            f" per step (fastest: {r['fastest']})"
    if name == "F":
        return (f"{r['mode']}: K={r['k']} packed {f(r['packed_ms_per_step'])} ms vs "
                f"{r['k']} × {f(r['one_model_ms_per_step'])} ms: {f(r['speedup'])}×")
    if name in "GH":
        extra = f", MFU {f(r['mfu'])}" if r.get("mfu") is not None else ""
        return (f"{r['mode']}: {r['iterations']:,} it in {f(r['total_s'])} s "
                f"(captured: {r['captured']}){extra}")
    if name == "I":
        return (f"3 ch/group {f(r['3_channels_per_group_ms'])} ms, 4 ch/group "
                f"{f(r['4_channels_per_group_ms'])} ms")
    return ""


def markdown(doc: dict) -> str:
    """The JSON of a run as BENCHMARKS.md's table of phases and goals."""
    meta = doc["meta"]
    lines = [f"Device: {meta['device']}; torch {meta['torch']}, CUDA {meta['cuda']}, "
             f"Python {meta['python']}; {'smoke run (tiny sizes)' if meta['smoke'] else 'full'}"
             f"; budget {doc['budget_s']:.0f} s, used {doc.get('elapsed_s', 0):.0f} s; "
             f"{'passed' if doc['passed'] else 'FAILED: ' + '; '.join(doc['failures'])}.", "",
             "| Phase | What | Status | s | Figures |", "| --- | --- | --- | ---: | --- |"]
    for name, p in doc["phases"].items():
        if p.get("status") in ("ok", "failed"):
            figures = _figures(name, p["results"])
        elif p.get("status") == "skipped":
            figures = "extrapolated: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float)
                                                   else f"{k} {v}"
                                                   for k, v in p["extrapolation"].items())
        else:
            figures = p.get("error", "")
        lines.append(f"| {name} | {p['title']} | {p.get('status')} | "
                     f"{p.get('seconds', 0):.1f} | {figures} |")
    lines += ["", "| Goal | Value | How | Met |", "| --- | ---: | --- | --- |"]
    for goal, g in doc["goals"].items():
        v = g["value"]
        lines.append(f"| {goal} | {v:.3g} | {g['how']} | {g['met']} |" if isinstance(v, float)
                     else f"| {goal} | {v} | {g['how']} | {g['met']} |")
    return "\n".join(lines) + "\n"


def environment(device: torch.device, sizes: Sizes, smoke: bool) -> dict:
    env = {"device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                      else f"CPU ({platform.processor() or platform.machine()})"),
           "smoke": smoke, "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "numpy": np.__version__,
           "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
           "tf32": backends.tf32_enabled(), "sizes": asdict(sizes),
           "capture_backend": os.environ.get("LTHFAST_CAPTURE_BACKEND", "cuda"),
           "compile_backend": os.environ.get("LTHFAST_COMPILE_BACKEND", "inductor"),
           "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
           "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    return env


def main(argv: Optional[list[str]] = None, clock: Callable[[], float] = time.monotonic) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    p.add_argument("--budget-s", type=float, default=None,
                   help=f"seconds of work (default {Sizes.budget_s:.0f}; smoke "
                        f"{SMOKE.budget_s:.0f}); a phase that would overrun is extrapolated")
    p.add_argument("--smoke", action="store_true",
                   help="the same phases on the CPU at tiny sizes (emulated graphs, aot_eager)")
    p.add_argument("--phases", default=",".join(ph.name for ph in PHASES),
                   help="comma-separated phases to run, in order of value (default: all)")
    p.add_argument("--mode", choices=("fastest",) + MODES, default=None,
                   help="how F, G and H run (default: the fastest K=1 mode of E; smoke: "
                        "compile+graph, so that the loop runs compile and capture together)")
    p.add_argument("--markdown", type=Path, default=None,
                   help="print the tables of an earlier run's JSON (for BENCHMARKS.md) and exit")
    args = p.parse_args(argv)
    if args.markdown is not None:
        print(markdown(json.loads(args.markdown.read_text())), end="")
        return 0
    sizes = SMOKE if args.smoke else Sizes()
    if args.smoke:
        os.environ["LTHFAST_CAPTURE_BACKEND"] = "emulate"
        os.environ["LTHFAST_COMPILE_BACKEND"] = "aot_eager"
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA device (use --smoke on a CPU)", file=sys.stderr)
            return 2
        os.environ.setdefault("LTHFAST_COMPILE_BACKEND", sizes.compile_backend)
        device = torch.device("cuda")
    wanted = [name.strip().upper() for name in args.phases.split(",") if name.strip()]
    unknown = sorted(set(wanted) - {ph.name for ph in PHASES})
    if unknown:
        print(f"error: unknown phase(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    backends.configure(device.type, deterministic=False)  # TF32 off, cuDNN autotuning on
    budget = args.budget_s if args.budget_s is not None else sizes.budget_s
    check = Check(args.out, budget, environment(device, sizes, args.smoke), clock=clock)
    mode = args.mode or ("compile+graph" if args.smoke else "fastest")
    ctx = Context(device, sizes, check, mode)
    code = check.run([ph for ph in PHASES if ph.name in wanted], ctx)
    check.doc["meta"]["ffcv_imported"] = "ffcv" in sys.modules
    check.write()
    return code


if __name__ == "__main__":
    sys.exit(main())
