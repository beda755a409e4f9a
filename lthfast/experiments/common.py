"""What every experiment shares: the runtime (paths, device, flags), data on the device, seeds.

    python -c "from lthfast.experiments.common import Runtime; print(Runtime())"
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..data.arrays import DatasetArrays
from ..data.loader import DeviceData, StreamSeeds, mix_seed
from ..data.streams import make_stream
from ..errors import UserError
from ..models import build
from ..models.packed import PackedResNet
from ..store import atomic_write_bytes, to_json
from ..train.allocator import keep_freed_memory
from ..train.loop import LoopConfig, LoopResult, train
from ..train.schedule import Schedule

# progress(label, step, total)
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Runtime:
    """How to run, not what: never part of a run's identity."""

    root: Path = Path("datasets")
    out: Path = Path("runs")
    device: str = "cpu"
    deterministic: bool = False
    compile: Optional[bool] = None  # None: on for CUDA, off for CPU
    amp: Optional[bool] = None  # None: bf16 autocast on CUDA
    checkpoint_every: int = 200
    log_every: int = 50
    loader: str = "device"  # a name in lthfast.data.streams.STREAMS
    progress: Optional[ProgressFn] = None

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def use_compile(self) -> bool:
        return self.torch_device.type == "cuda" if self.compile is None else self.compile

    @property
    def use_amp(self) -> bool:
        return self.torch_device.type == "cuda" if self.amp is None else self.amp


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def setup_torch(rt: Runtime) -> None:
    if rt.torch_device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available")
    if rt.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif rt.torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if rt.torch_device.type == "cpu":
        keep_freed_memory()  # ~2x faster CPU steps: no page faults on activations (see module)


def device_split(ds: DatasetArrays, split: str, device: torch.device,
                 labels: Optional[np.ndarray] = None) -> DeviceData:
    images = ds.train_images if split == "train" else ds.test_images
    if labels is None:
        labels = ds.train_labels if split == "train" else ds.test_labels
    return DeviceData(images, labels, ds.meta["mean"], ds.meta["std"], ds.augment, device)


def replicate_seeds(seed: int, replicate: int) -> dict[str, int]:
    """Separate seeds for init, data order and augmentation, per phase, per replicate."""
    names = ("init", "pretrain_order", "pretrain_augment", "order", "augment")
    return {name: mix_seed(seed, replicate, i) for i, name in enumerate(names)}


def new_model(name: str, num_classes: int, init_seeds: Sequence[int],
              device: torch.device) -> PackedResNet:
    model = build(name, num_classes, k=len(init_seeds))
    model.reset_parameters(list(init_seeds))
    return model.to(device=device, memory_format=torch.channels_last)


def run_training(rt: Runtime, model: PackedResNet, ds: DatasetArrays, data: DeviceData,
                 indices: Sequence[np.ndarray], seeds: Sequence[StreamSeeds], batch_size: int,
                 schedule: Schedule, start: int, end: int, stage_dir: Path, label: str,
                 masks=None, on_batch=None, momentum: float = 0.9,
                 weight_decay: float = 1e-4) -> LoopResult:
    """One call of the training loop with the runtime's loader, flags, checkpoint and metrics."""
    stream = make_stream(rt.loader, ds, data, indices, seeds, batch_size)
    cfg = LoopConfig(schedule=schedule, start_step=start, end_step=end, momentum=momentum,
                     weight_decay=weight_decay, log_every=rt.log_every,
                     checkpoint_every=rt.checkpoint_every, compile=rt.use_compile, amp=rt.use_amp)
    progress = None
    if rt.progress is not None:
        progress = lambda step, total, _losses: rt.progress(label, step - start, total - start)
    try:
        result = train(model, stream, cfg, masks=masks,
                       checkpoint_path=stage_dir / "checkpoint.pt", on_batch=on_batch,
                       progress=progress)
    finally:
        if hasattr(stream, "close"):  # ffcv's loaders run background threads
            stream.close()
    # written whole and atomically: a resumed run's log already holds the checkpointed records
    atomic_write_bytes(stage_dir / "metrics.jsonl",
                       "".join(to_json(r) + "\n" for r in result.log).encode())
    return result


def replace(obj, **changes):
    return dataclasses.replace(obj, **changes)
