"""End to end: wall time of real CLI runs on the embedded ``digits`` dataset, as a user sees it.

Each command runs as a subprocess (``python -m lthfast ...``, same interpreter) with a fresh
``--root`` and ``--out`` in a temporary directory, so every repeat also builds the digits dataset
as a first use does (arrays and meta.json; the betons wait for ``--loader ffcv``; timed
separately in-process on its own row) and starts from nothing: interpreter start, imports,
data build, training, evaluation, artifacts.

    lthfast imp --dataset digits --levels 5 --steps 20
    lthfast scores el2n --dataset digits --models 10

Beside them: the same IMP as a plain PyTorch loop (``plain_imp`` below: an ``nn.Module``
ResNet-8, a ``DataLoader`` with per-example transforms, ``torch.optim.SGD``, masks re-applied
after each step, global magnitude pruning, rewinding), also a fresh process, on the same
hyperparameters and threads (goal: lthfast ≥ 4× faster); the process start-up alone
(interpreter, imports, ``setup_torch``: no dynamo / inductor unless compiling or deterministic);
and two ``lthfast imp`` processes at once, each on every core (torch's default) or on its share
(what ``sweep --workers 2`` and ``lthfast.threads`` give).

    python -m benchmarks --only end_to_end [--quick]
    python -m benchmarks.end_to_end plain-imp --root datasets --levels 5 --steps 20
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .common import Row, rerun

SECTION = "end_to_end"

COMMANDS: tuple[tuple[str, ...], ...] = (
    ("imp", "--dataset", "digits", "--levels", "5", "--steps", "20"),
    ("scores", "el2n", "--dataset", "digits", "--models", "10"),
)


@dataclass(frozen=True)
class EndToEndConfig:
    commands: Sequence[Sequence[str]] = COMMANDS
    repeats: int = 3
    timeout: float = 1800.0
    build_row: bool = True
    quick: bool = False
    program: Optional[Sequence[str]] = None  # default: this interpreter's ``-m lthfast``
    # the rows beside the commands (python -m benchmarks turns them on; None: not run)
    plain: Optional[tuple[int, int, Optional[int]]] = None  # (levels, t_r, T) vs plain PyTorch
    startup_row: bool = False
    concurrent: Optional[Sequence[str]] = None  # lthfast ARGS run twice at once


PLAIN = (5, 20, None)  # lthfast imp --dataset digits --levels 5 --steps 20 (T = the preset's)
CONCURRENT = ("imp", "--dataset", "digits", "--levels", "1", "--steps", "4", "--model",
              "resnet20")


def run_cli(args: Sequence[str], device: torch.device, timeout: float,
            program: Optional[Sequence[str]] = None, threads: Optional[int] = None,
            root: Optional[Path] = None) -> float:
    """Wall seconds of one ``python -m lthfast ARGS`` in a fresh temporary out directory and a
    fresh root (the dataset built inside the run), or ``root`` when given (already built)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LTHFAST_")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    program = list(program) if program else [sys.executable, "-m", "lthfast"]
    with tempfile.TemporaryDirectory(prefix="lthfast_e2e_") as tmp:
        cmd = [*program, *args, "--root", str(root or Path(tmp) / "root"),
               "--out", str(Path(tmp) / "out"), "--device", device.type]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds


def time_build(repeats: int) -> list[float]:
    from lthfast.data.build import build_dataset

    out = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="lthfast_e2e_build_") as tmp:
            start = time.perf_counter()
            build_dataset("digits", Path(tmp), betons=False)  # as a first run builds it
            out.append(time.perf_counter() - start)
    return out


# ------------------------------------------------------------------------------------------------
# the plain PyTorch IMP loop, the process start-up, two runs at once
# ------------------------------------------------------------------------------------------------

def plain_imp(root: Path, levels: int, t_r: int, train_steps: Optional[int] = None,
              fraction: float = 0.2, seed: int = 0) -> list[float]:
    """IMP with rewinding on digits as a textbook PyTorch program, the digits preset's recipe:
    pre-train t_r steps (lr 0.2), then per level rewind to w_{t_r} under the mask, train
    [t_r, T) (lr 0.1, x0.1 at 50% / 75% of T, momentum 0.9, wd 1e-4, batch 64), test, prune
    ``fraction`` of the remaining conv / linear weights by global magnitude. Test accuracies."""
    import numpy as np
    import torch.nn.functional as F

    from lthfast.config import PRESETS, scaled_milestones
    from lthfast.data.arrays import open_dataset

    from .loader import make_dataloader
    from .train_step import PlainResNet

    preset = PRESETS["digits"]
    total = train_steps or preset.train_steps
    milestones = scaled_milestones(preset, total)
    ds = open_dataset(root, "digits")
    torch.manual_seed(seed)
    model = PlainResNet(int(preset.model.removeprefix("resnet")), ds.num_classes)
    loader, _ = make_dataloader(ds, np.arange(ds.train_size), preset.batch_size, 0,
                                torch.device("cpu"), seed=seed)
    mean = torch.tensor(ds.meta["mean"]).view(1, 3, 1, 1) / 255
    std = torch.tensor(ds.meta["std"]).view(1, 3, 1, 1) / 255
    test_x = (torch.from_numpy(np.array(ds.test_images)).permute(0, 3, 1, 2).float() / 255
              - mean) / std
    test_y = torch.from_numpy(np.array(ds.test_labels))

    def batches():
        while True:
            yield from loader

    def train(start: int, end: int, lr: float, masks: dict) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=preset.momentum,
                              weight_decay=preset.weight_decay)
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, [m - start for m in milestones if m > start], preset.gamma)
        model.train()
        stream = batches()
        for _ in range(start, end):
            x, y = next(stream)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in masks:
                        p.mul_(masks[name])

    train(0, t_r, preset.pretrain_lr, {})
    rewind = {k: v.clone() for k, v in model.state_dict().items()}
    masks = {n: torch.ones_like(p) for n, p in model.named_parameters()
             if n.endswith("weight") and p.dim() > 1}
    accs = []
    for _ in range(levels + 1):
        model.load_state_dict(rewind)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in masks:
                    p.mul_(masks[name])
        train(t_r, total, preset.lr, masks)
        model.eval()
        with torch.no_grad():
            accs.append(float((model(test_x).argmax(1) == test_y).float().mean()))
        params = dict(model.named_parameters())
        alive = torch.cat([params[n].detach().abs()[masks[n] > 0] for n in masks])
        k = round(fraction * alive.numel())
        threshold = alive.kthvalue(k).values if k else -1.0
        masks = {n: masks[n] * (params[n].detach().abs() > threshold).float() for n in masks}
    return accs


def run_python(code_or_args: Sequence[str], timeout: float, threads: int) -> float:
    """Wall seconds of ``python ARGS`` (a fresh interpreter), OMP_NUM_THREADS=threads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LTHFAST_")}
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + \
        env.get("PYTHONPATH", "")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *code_or_args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{code_or_args} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


STARTUP = ("import lthfast.api, lthfast.cli; from lthfast.experiments.common import Runtime, "
           "setup_torch; setup_torch(Runtime(device='cpu'))")


def concurrent_pair(args: Sequence[str], threads_each: int, timeout: float) -> float:
    """Wall seconds until both of two ``lthfast ARGS --threads N`` started together finish."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LTHFAST_")}
    env.pop("OMP_NUM_THREADS", None)
    from lthfast.data.build import build_dataset

    with tempfile.TemporaryDirectory(prefix="lthfast_e2e_pair_") as tmp:
        build_dataset("digits", Path(tmp) / "root")  # not timed: both share it
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "lthfast", *args, "--seed", str(i),
                                   "--threads", str(threads_each), "--root",
                                   str(Path(tmp) / "root"), "--out", str(Path(tmp) / f"out{i}"),
                                   "--device", "cpu"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
        for proc in procs:
            _, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"concurrent {' '.join(args)} failed:\n{err[-2000:]}")
        return time.perf_counter() - start


def run(cfg: EndToEndConfig = EndToEndConfig(), device: Optional[torch.device] = None,
        log=print) -> list[Row]:
    device = device or torch.device("cpu")
    command = rerun(SECTION, cfg.quick)
    rows = []
    for args in cfg.commands:
        text = "lthfast " + " ".join(args)
        log(f"[end_to_end] {text}")
        seconds = [run_cli(args, device, cfg.timeout, cfg.program) for _ in range(cfg.repeats)]
        rows.append(Row(SECTION, text, f"wall time ({device.type})", seconds, unit="s",
                        command=f"{text} --root $(mktemp -d) --out $(mktemp -d)  # or: {command}",
                        note=f"{cfg.repeats} runs, each from a fresh root and out directory"))
    from lthfast.threads import allowed_cpus

    cpus = allowed_cpus()
    if cfg.startup_row:
        log("[end_to_end] process start-up")
        rows.append(Row(SECTION, "process start-up (python, imports, setup_torch)",
                        "wall time (cpu)", [run_python(["-c", STARTUP], cfg.timeout, cpus)
                                            for _ in range(cfg.repeats)], unit="s",
                        command=command, note="included in every CLI row; no dynamo/inductor"))
    if cfg.plain is not None and device.type == "cpu":
        levels, t_r, total = cfg.plain
        args = ["imp", "--dataset", "digits", "--levels", str(levels), "--steps", str(t_r)]
        args += ["--train-steps", str(total)] if total else []
        case = f"IMP on digits, {levels} levels, t_r = {t_r}" + (f", T = {total}" if total else "")
        log(f"[end_to_end] {case}: lthfast vs plain PyTorch")
        times = {"ours": [], "plain": [], "ours_cpu": [], "plain_cpu": []}
        with tempfile.TemporaryDirectory(prefix="lthfast_e2e_plain_") as tmp:
            from lthfast.data.build import build_dataset

            build_dataset("digits", Path(tmp), betons=False)  # as a first run builds it
            code = (f"from benchmarks.end_to_end import plain_imp; from pathlib import Path; "
                    f"print(plain_imp(Path({tmp!r}), {levels}, {t_r}, {total}))")
            for _ in range(cfg.repeats):  # taking turns: a shared machine's load hits both
                # both read the same built root: building a dataset is once per machine (its
                # own row), and the plain loop never builds one
                for name, fn in (("ours", lambda: run_cli(args, device, cfg.timeout,
                                                          cfg.program, threads=cpus,
                                                          root=Path(tmp))),
                                 ("plain", lambda: run_python(["-c", code], cfg.timeout, cpus))):
                    before = children_cpu()
                    times[name].append(fn())
                    times[f"{name}_cpu"].append(children_cpu() - before)
        note = (f"fresh processes, {cpus} threads each, one built root; the machine may be "
                "shared: see load")
        for unit, key in (("wall time", ""), ("CPU time", "_cpu")):
            rows.append(Row(SECTION, f"{case} ({unit})", "lthfast imp (CLI, built root)",
                            times["ours" + key], unit="s", reference=True, note=note,
                            command=command))
            rows.append(Row(SECTION, f"{case} ({unit})", "plain PyTorch IMP loop",
                            times["plain" + key], unit="s", note=note,
                            command="python -m benchmarks.end_to_end plain-imp"))
    if cfg.concurrent is not None and device.type == "cpu":
        text = "lthfast " + " ".join(cfg.concurrent)
        log(f"[end_to_end] two at once: {text}")
        shared, divided = [], []
        for _ in range(cfg.repeats):
            divided.append(concurrent_pair(cfg.concurrent, max(1, cpus // 2), cfg.timeout))
            shared.append(concurrent_pair(cfg.concurrent, cpus, cfg.timeout))
        case = f"two concurrent runs on {cpus} CPUs: {text}"
        rows.append(Row(SECTION, case, f"divided: --threads {max(1, cpus // 2)} each", divided,
                        unit="s", reference=True, command=command,
                        note="what sweep --workers 2 gives each worker (lthfast.threads)"))
        rows.append(Row(SECTION, case, f"not divided: --threads {cpus} each", shared,
                        unit="s", command=command, note="torch's default: every core each"))
    if cfg.build_row:
        rows.append(Row(SECTION, "digits built on first use (inside each run above)",
                        "wall time, in-process", time_build(cfg.repeats), unit="s",
                        command=command, note="arrays + meta.json (no betons, no ffcv import)"))
    return rows


# python -m benchmarks.end_to_end plain-imp --root R --levels L --steps T
if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="the plain PyTorch IMP loop on digits")
    p.add_argument("what", choices=["plain-imp"])
    p.add_argument("--root", type=Path, default=Path("datasets"))
    p.add_argument("--levels", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--train-steps", type=int, default=None)
    a = p.parse_args()
    print(plain_imp(a.root, a.levels, a.steps, a.train_steps))
