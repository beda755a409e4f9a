"""End to end: wall time of real CLI runs on the embedded ``digits`` dataset, as a user sees it.

Each command runs as a subprocess (``python -m lthfast ...``, same interpreter) with a fresh
``--root`` and ``--out`` in a temporary directory, so every repeat also builds the digits dataset
(timed separately in-process on its own row) and starts from nothing: interpreter start, imports,
data build, training, evaluation, artifacts.

    lthfast imp --dataset digits --levels 5 --steps 20
    lthfast scores el2n --dataset digits --models 10

    python -m benchmarks --only end_to_end [--quick]
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


def run_cli(args: Sequence[str], device: torch.device, timeout: float,
            program: Optional[Sequence[str]] = None) -> float:
    """Wall seconds of one ``python -m lthfast ARGS`` in fresh temporary root/out directories."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LTHFAST_")}
    program = list(program) if program else [sys.executable, "-m", "lthfast"]
    with tempfile.TemporaryDirectory(prefix="lthfast_e2e_") as tmp:
        cmd = [*program, *args, "--root", str(Path(tmp) / "root"),
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
            build_dataset("digits", Path(tmp))
            out.append(time.perf_counter() - start)
    return out


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
    if cfg.build_row:
        rows.append(Row(SECTION, "lthfast build-beton digits (inside each run above)",
                        "wall time, in-process", time_build(cfg.repeats), unit="s",
                        command=command, note="arrays + betons + meta.json"))
    return rows
