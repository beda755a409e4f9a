"""What the benchmark sections share: result rows, timing, the environment and the cached data set.

    python -c "from benchmarks.common import environment; print(environment('cpu'))"
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

DEFAULT_CACHE = Path(os.environ.get("LTHFAST_BENCH_CACHE", "/tmp/lthfast_bench"))


@dataclass
class Row:
    """One measured variant of one case: a value per repeat (``values`` empty: not run)."""

    section: str
    case: str
    variant: str
    values: list[float]
    unit: str = "images/s"
    reference: bool = False  # the lthfast row of its case: ratios are computed against it
    note: str = ""
    command: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def higher_is_better(self) -> bool:
        return self.unit not in ("s", "ms/step", "launches", "syncs")


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Wall seconds of ``fn()``, with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torchvision_available() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # the CPU torch wheel ships without it; a mismatched one fails to import
        return False
    return True


def ffcv_available() -> bool:
    from lthfast.data.build import ffcv_available as available

    return available()


def environment(device: torch.device | str) -> dict[str, str]:
    device = torch.device(device)
    if device.type == "cuda":
        dev = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        dev = f"CPU only: {cpu_name()}"
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "device": dev,
        "CPUs": f"{usable_cpus()} usable ({os.cpu_count()} online); torch threads "
                f"{torch.get_num_threads()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "ffcv": package_version("ffcv"),
        "numba": package_version("numba"),
        "torchvision": package_version("torchvision") + ("" if torchvision_available()
                                                         else " (not importable)"),
        "platform": platform.platform(),
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
    }


def synthetic_dataset(cache: Path, train: int, test: Optional[int] = None, size: int = 32,
                      classes: int = 10, betons: bool = True) -> Path:
    """A synthetic CIFAR-shaped set (arrays, + betons when ffcv is installed), built once per cache.

    The test split (unused by the benchmarks) is 1,000 images, fewer for tiny sets.
    """
    from lthfast.data.build import build_dataset

    test = test if test is not None else min(1000, max(10, train // 10))
    root = Path(cache) / f"synthetic_{train}x{size}_{classes}{'' if betons else '_nobeton'}"
    return build_dataset("synthetic", root, betons=betons,
                         source=f"train={train},test={test},size={size},classes={classes}")


def open_synthetic(cache: Path, train: int, **kwargs):
    from lthfast.data.arrays import open_dataset

    path = synthetic_dataset(cache, train, **kwargs)
    return open_dataset(path.parent, path.name, verify=False)


def auto_device(name: Optional[str] = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def rerun(section: str, quick: bool, extra: str = "") -> str:
    parts = ["python -m benchmarks --only", section]
    if quick:
        parts.append("--quick")
    if extra:
        parts.append(extra)
    return " ".join(parts)


def forward_flops_per_image(model_name: str, num_classes: int, size: int,
                            batch: int = 16) -> float:
    """Forward FLOPs of one image through one model (K=1), by FlopCounterMode on the CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    from lthfast.models import build

    model = build(model_name, num_classes, k=1).eval()
    x = torch.zeros(batch, 3, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / batch
