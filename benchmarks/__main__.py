"""Run the benchmark sections side by side and write the results as a markdown report.

    python -m benchmarks                          # all sections, writes BENCHMARKS.md
    python -m benchmarks --quick                  # small sizes: a smoke run of every section
    python -m benchmarks --only loader,packed     # some sections; printed, no file unless --out
    python -m benchmarks --only gpu               # the full-scale GPU figures alone
    python -m benchmarks --out /tmp/bench.md --device cpu --workers 2

Sections: loader (a), train_step (b), packed (c), end_to_end (d), gpu (e), counts (f: launches,
syncs and framework overhead per step, the GPU proxies a CPU can measure). Benchmarks never fail
for being slow; a section that cannot run (no ffcv, no GPU) says so in its rows.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from . import counts, end_to_end, gpu, loader, packed, train_step
from .common import DEFAULT_CACHE, Row, auto_device, environment, usable_cpus

ORDER = ("loader", "train_step", "packed", "end_to_end", "gpu", "counts")  # as presented
# As run: the DataLoader sections before ffcv has started numba's thread pool (see loader.py).
RUN_ORDER = ("train_step", "packed", "loader", "end_to_end", "gpu", "counts")

TITLES = {
    "loader": "a. Loader: normalised, augmented batches of 512",
    "train_step": "b. Training step: ResNet-20, batch 128",
    "packed": "c. K models at once: packed vs one after another",
    "end_to_end": "d. End to end: CLI wall time on digits",
    "gpu": "e. GPU: full-scale runs",
    "counts": "f. GPU proxies on the CPU: launches, syncs and framework overhead per step",
}

TARGETS = (  # (section, case substring, variant substring, minimum lthfast ratio, label)
    ("loader", "full set", "ffcv", 2.0, "loader vs ffcv, full set"),
    ("loader", "subset", "ffcv", 2.0, "loader vs ffcv, 2,048-index subset"),
    ("loader", "full set", "DataLoader", 4.0, "loader vs DataLoader, full set"),
    ("loader", "subset", "DataLoader", 4.0, "loader vs DataLoader, 2,048-index subset"),
    ("train_step", "", "plain", 1.3, "training step vs plain PyTorch loop"),
    ("packed", "×10", "sequential", 1.5, "packed K=10 vs sequential"),
    ("end_to_end", "(wall time)", "plain PyTorch IMP", 4.0, "lthfast imp vs plain PyTorch IMP "
     "loop, digits, end to end"),
    ("end_to_end", "two concurrent", "not divided", 1.0, "two concurrent runs: threads divided "
     "vs not"),
)


GPU_VARIANTS = ("compile", "eager", "graph", "nchw", "looped", "separate", "imp")


def configs(quick: bool, workers: int, args) -> dict:
    if quick:
        cfg = {
            "loader": loader.LoaderConfig(train=5_000, batches=3, warmup=1, repeats=2,
                                          workers=workers, quick=True),
            "train_step": train_step.TrainStepConfig(model="resnet8", train=5_000, warmup=1,
                                                     steps=1, repeats=3, workers=workers,
                                                     quick=True),
            "packed": packed.PackedConfig(model="resnet8", ks=(1, 2), train=5_000, warmup=1,
                                          steps=1, repeats=2, quick=True),
            "end_to_end": end_to_end.EndToEndConfig(
                commands=(("imp", "--dataset", "digits", "--levels", "1", "--steps", "5",
                           "--train-steps", "10"),
                          ("scores", "el2n", "--dataset", "digits", "--models", "2",
                           "--steps", "5")),
                repeats=1, quick=True, plain=(1, 5, 40), startup_row=True,
                concurrent=("imp", "--dataset", "digits", "--levels", "0", "--steps", "2",
                            "--train-steps", "60", "--model", "resnet20")),
            "gpu": gpu.GpuConfig(iterations=2_000, el2n_iterations=500, quick=True),
            "counts": counts.CountsConfig(depth=8, batch=16, count_batch=8, train=1_000,
                                          ks=(1, 2), overhead_steps=5, repeats=2, quick=True),
        }
    else:
        cfg = {
            "loader": loader.LoaderConfig(workers=workers),
            "train_step": train_step.TrainStepConfig(workers=workers),
            "packed": packed.PackedConfig(),
            "end_to_end": end_to_end.EndToEndConfig(plain=end_to_end.PLAIN, startup_row=True,
                                                    concurrent=end_to_end.CONCURRENT),
            "gpu": gpu.GpuConfig(),
            "counts": counts.CountsConfig(),
        }
    g = cfg["gpu"]
    if args.gpu_iterations:
        g = replace(g, iterations=args.gpu_iterations)
    if args.gpu_el2n_iterations:
        g = replace(g, el2n_iterations=args.gpu_el2n_iterations)
    if args.gpu_imp_levels >= 0:
        g = replace(g, imp_levels=args.gpu_imp_levels)
    if args.gpu_compile != "both":
        g = replace(g, compile_modes=(args.gpu_compile == "on",))
    if args.gpu_variants:
        chosen = frozenset(v.strip() for v in args.gpu_variants.split(",") if v.strip())
        unknown = chosen - set(GPU_VARIANTS)
        if unknown:
            raise SystemExit(f"error: --gpu-variants: unknown {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(GPU_VARIANTS)})")
        g = replace(g, variants=chosen)
    if args.gpu_deadline_s:
        g = replace(g, deadline_s=args.gpu_deadline_s)
    cfg["gpu"] = g
    return cfg


# Why a target can be out of reach on a device: printed under the targets table when missed.
TARGET_NOTES = {
    ("packed K=10 vs sequential", "cpu"): (
        "On a CPU a ResNet-20 step is compute-bound, not launch-bound: section b shows lthfast's "
        "step at about the GFLOP/s of a large fp32 matmul on the same cores, and a batch-1 step "
        "costs ~8% of a batch-128 one, so no packing can gain much over training the models one "
        "after another. The looped default matches sequential; the GPU, where a step is "
        "launch-bound, is where packing pays (section e)."),
}


def fmt(value: float, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit == "s":
        return f"{value:.1f} s"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def ratios(rows: list[Row]) -> dict[int, Optional[float]]:
    """id(row) -> how many times better the case's reference (lthfast) row is than this row."""
    out: dict[int, Optional[float]] = {}
    refs = {(r.section, r.case): r for r in rows if r.reference and r.values}
    for r in rows:
        ref = refs.get((r.section, r.case))
        if ref is None or not r.values or r.median <= 0 or ref.median <= 0:
            out[id(r)] = None
        elif r.higher_is_better:
            out[id(r)] = ref.median / r.median
        else:
            out[id(r)] = r.median / ref.median
    return out


def section_table(rows: list[Row]) -> list[str]:
    rat = ratios(rows)
    lines = ["| Case | Variant | Median | Unit | Range (min–max) | n | lthfast × | Notes | Rerun |",
             "| --- | --- | ---: | --- | --- | ---: | ---: | --- | --- |"]
    for r in rows:
        if r.values:
            rng = f"{fmt(min(r.values), r.unit)} – {fmt(max(r.values), r.unit)}"
            ratio = "1.00 (ref)" if r.reference else (
                f"{rat[id(r)]:.2f}" if rat[id(r)] is not None else "—")
        else:
            rng, ratio = "—", "—"
        lines.append(f"| {r.case} | {r.variant} | {fmt(r.median, r.unit)} | {r.unit} | {rng} | "
                     f"{len(r.values)} | {ratio} | {r.note} | `{r.command}` |")
    return lines


def summary(rows: list[Row], device_type: str = "cpu") -> list[str]:
    rat = ratios(rows)
    lines = ["| Comparison | lthfast ÷ baseline | Target | Met |", "| --- | ---: | ---: | --- |"]
    notes = []
    for section, case_sub, variant_sub, target, label in TARGETS:
        match = [r for r in rows if r.section == section and case_sub in r.case
                 and variant_sub in r.variant and "first epoch" not in r.case
                 and not r.reference]
        value = next((rat[id(r)] for r in match if rat[id(r)] is not None), None)
        if value is None:
            lines.append(f"| {label} | not measured | ≥ {target:.1f}× | — |")
        else:
            met = value >= target
            shown = f"{value:.2f}"
            if float(shown) >= target and not met:  # 1.297 is not 1.30
                shown = f"{value:.3f}"
            lines.append(f"| {label} | {shown}× | ≥ {target:.1f}× | {'yes' if met else 'no'} |")
            if not met and (label, device_type) in TARGET_NOTES:
                notes.append(f"- *{label}*: {TARGET_NOTES[label, device_type]}")
    return lines + ([""] + notes if notes else [])


def intro(name: str) -> str:
    module = {"loader": loader, "train_step": train_step, "packed": packed,
              "end_to_end": end_to_end, "gpu": gpu, "counts": counts}[name]
    doc = (module.__doc__ or "").strip().split("\n\n")
    # the docstring minus its trailing command line(s)
    return "\n\n".join(p for p in doc if not p.lstrip().startswith(("python -m", "lthfast ")))


def render(env: dict, rows: list[Row], sections: list[str], timings: dict[str, float],
           quick: bool, end_env: Optional[dict] = None, device_type: str = "cpu") -> str:
    out = ["# Benchmarks", "",
           "Generated by `python -m benchmarks`" + (" `--quick` (small sizes: a smoke run, not "
                                                   "representative)" if quick else "") +
           " — every figure below was measured in one run, lthfast and its baselines side by "
           "side on the same data. Medians over n repeats; **lthfast ×** is how many times "
           "faster the case's lthfast row (ref) is than that row (> 1: lthfast faster). "
           "Each row's *Rerun* command reruns its whole section (the ratios need the siblings).",
           "", "## Environment", "", "| | |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in env.items()]
    if end_env:
        out += [f"| {k} | {v} |" for k, v in end_env.items()]
    out += ["| section wall times | " + ", ".join(f"{s} {t:.0f} s" for s, t in timings.items())
            + " |", "", "## Targets", ""] + summary(rows, device_type)
    for name in ORDER:
        if name not in sections:
            continue
        out += ["", f"## {TITLES[name]}", "", intro(name), ""]
        out += section_table([r for r in rows if r.section == name])
    return "\n".join(out) + "\n"


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)"
    except OSError:
        return "n/a"


def wait_for_idle(limit: float, log) -> str:
    """Wait (at most ``limit`` s) for other processes to quiet down; returns the load seen."""
    threshold = max(0.5, usable_cpus() / 4)
    start = time.perf_counter()
    while limit > 0 and os.getloadavg()[0] >= threshold and time.perf_counter() - start < limit:
        time.sleep(5)
    waited = time.perf_counter() - start
    if waited > 1:
        log(f"waited {waited:.0f} s for load {os.getloadavg()[0]:.2f} (< {threshold} wanted)")
    return f"{os.getloadavg()[0]:.2f}"


KEPT = "## GPU check"  # written from scripts/gpu_check.py's JSON, not by this command


def kept_section(path: Optional[Path]) -> str:
    """The ``## GPU check`` section of an existing report (to its end, or the next ``## ``), so
    regenerating the report keeps it."""
    if path is None or not path.exists():
        return ""
    text = path.read_text()
    start = text.find("\n" + KEPT)
    if start < 0:
        return ""
    end = text.find("\n## ", start + 1)
    return text[start: end if end >= 0 else len(text)].rstrip() + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes: a fast smoke run")
    p.add_argument("--out", type=Path, default=None,
                   help="markdown report (default: BENCHMARKS.md for a full run; with --only, "
                        "printed only)")
    p.add_argument("--only", default="", help=f"comma-separated sections of {', '.join(ORDER)}")
    p.add_argument("--device", default=None, help="cuda or cpu for sections a-c (default: auto)")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader and ffcv workers (default: the usable CPUs)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="synthetic data cache")
    p.add_argument("--gpu-iterations", type=int, default=0, help="override 62,400")
    p.add_argument("--gpu-el2n-iterations", type=int, default=0, help="override 7,800")
    p.add_argument("--gpu-compile", choices=("both", "on", "off"), default="both")
    p.add_argument("--gpu-imp-levels", type=int, default=-1,
                   help="levels of the whole IMP run (default 12; 0: skip it)")
    p.add_argument("--gpu-variants", default="",
                   help=f"comma-separated variants of the gpu section (default: all of "
                        f"{', '.join(GPU_VARIANTS)})")
    p.add_argument("--gpu-deadline-s", type=float, default=0.0,
                   help="gpu section: start no variant after this many seconds (0: no deadline; "
                        "for a 15-minute GPU lease use scripts/gpu_check.py)")
    p.add_argument("--idle-wait", type=float, default=0.0,
                   help="on a shared machine: before each section wait up to this many seconds "
                        "for the 1-minute load average to fall below a quarter of the CPUs")
    args = p.parse_args(argv)

    sections = [s.strip() for s in args.only.split(",") if s.strip()] or list(ORDER)
    unknown = [s for s in sections if s not in ORDER]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)} (known: {', '.join(ORDER)})")
    out = args.out if args.out is not None else (None if args.only else Path("BENCHMARKS.md"))
    device = auto_device(args.device)
    cfg = configs(args.quick, args.workers, args)
    env = environment(device)
    env["load average at start"] = load_average()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)


    runners: dict[str, Callable[[], list[Row]]] = {
        "loader": lambda: loader.run(cfg["loader"], device, args.cache, log),
        "train_step": lambda: train_step.run(cfg["train_step"], device, args.cache, log),
        "packed": lambda: packed.run(cfg["packed"], device, args.cache, log),
        "end_to_end": lambda: end_to_end.run(cfg["end_to_end"], device, log),
        "gpu": lambda: gpu.run(cfg["gpu"], None, args.cache, log),
        "counts": lambda: counts.run(cfg["counts"], device, args.cache, log),
    }
    kept = kept_section(out)
    rows: list[Row] = []
    timings: dict[str, float] = {}
    text = ""
    loads: dict[str, str] = {}
    for name in [s for s in RUN_ORDER if s in sections]:
        loads[name] = wait_for_idle(args.idle_wait, log)
        start = time.perf_counter()
        rows += runners[name]()
        timings[name] = time.perf_counter() - start
        log(f"[{name}] done in {timings[name]:.0f} s")
        text = render(env, rows, sections, timings, args.quick,
                      {"load average at end": load_average(),
                       "1-min load before each section": ", ".join(
                           f"{s} {v}" for s, v in loads.items())}, device.type) + kept
        if out is not None:  # after every section, so an interrupted run keeps what it measured
            out.write_text(text)
    print(text)
    if out is not None:
        log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
