"""What every experiment shares: the runtime (how to run), the context (dataset, device data
and run store of one process), seeds, and one call of the training loop.

    python -c "from lthfast.experiments.common import Runtime; print(Runtime())"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .. import threads as cpu_threads
from ..config import Recipe
from ..data.arrays import DatasetArrays
from ..data.loader import DeviceData, PhasedStream, StreamSeeds, mix_seed
from ..data.streams import make_stream
from ..data.subsets import train_labels
from ..errors import UserError
from ..options import RUNTIME, Opt
from ..models import build
from ..models.packed import PackedResNet, load_packed
from ..progress import ProgressFn
from ..runs import RunStore
from ..train.allocator import keep_freed_memory
from ..train.backends import configure as configure_backends
from ..train.hooks import Hook
from ..train.loop import LoopConfig, LoopResult, train


def opt(help: str, sweep: bool = True, cli_default: object = "same", **meta) -> dict:
    """A runtime field's flag metadata: in the runtime panel; ``sweep``: settable per point of
    a sweep file (root, out and device belong to the sweep command); ``cli_default``: the CLI's
    default where it differs from the field's (the device: None, chosen when the run starts)."""
    return {"opt": Opt(help, panel=RUNTIME, **meta), "sweep": sweep, "cli_default": cli_default}


@dataclass(frozen=True)
class Runtime:
    """How to run, not what: never part of a run's identity."""

    # The fields with an ``Opt`` are flags (lthfast.options); ``sweep``: a sweep file may set it
    root: Path = field(default=Path("datasets"), metadata=opt(
        "data root", env="LTHFAST_DATA", sweep=False))
    out: Path = field(default=Path("runs"), metadata=opt(
        "runs root", env="LTHFAST_RUNS", sweep=False))
    device: str = field(default="cpu", metadata=opt(
        "cuda or cpu (default: cuda if available)", sweep=False, cli_default=None))
    deterministic: bool = field(default=False, metadata=opt(
        "deterministic kernels (CPU: bit-exact reruns)"))
    compile: Optional[bool] = field(default=None, metadata=opt(  # None: on for CUDA, off for CPU
        "torch.compile (default: on for CUDA)", negatable=True))
    # replay training steps as CUDA graphs (off until measured on a GPU)
    cuda_graph: bool = field(default=False, metadata=opt(
        "replay each training step as a CUDA graph (CUDA only; stages whose hooks read the step "
        "on the host run eagerly)", env="LTHFAST_CUDA_GRAPH"))
    amp: Optional[bool] = None  # None: bf16 autocast on CUDA
    checkpoint_every: int = field(default=0, metadata=opt(  # 0: by wall time only
        "iterations between checkpoints of a training stage, besides one every 5 minutes of "
        "training (0: by time only)", env="LTHFAST_CHECKPOINT_EVERY", min=0))
    checkpoint_seconds: float = 300.0  # a checkpoint every 5 minutes of training, any speed
    log_every: int = 50
    loader: str = field(default="device", metadata=opt(  # a name in lthfast.data.streams.STREAMS
        "device (lthfast's device-resident loader) or ffcv (stock ffcv Loaders over the "
        "betons, for comparison; no label noise, not deterministic)", env="LTHFAST_LOADER"))
    threads: Optional[int] = field(default=None, metadata=opt(  # None: see lthfast.threads
        "torch threads per process (default: the CPUs this process may use, shared among a "
        "sweep's workers; deterministic CPU runs use 1)", env="LTHFAST_THREADS", min=1))
    progress: Optional[ProgressFn] = None

    def __post_init__(self):
        cpu_threads.check_threads(self.threads)
        if self.cuda_graph and not self.device.startswith("cuda"):
            raise UserError("--cuda-graph needs a CUDA device (--device cuda)")
        if self.cuda_graph and self.loader != "device":
            # ffcv's loader threads touch CUDA while a step is being captured
            raise UserError("--cuda-graph needs --loader device")

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


def check_device(device: str) -> None:
    """Devices lthfast trains on: cpu and cuda[:n] (when present). One line for anything else."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r} is not a device (use cpu or cuda)") from None
    if kind not in ("cpu", "cuda"):
        raise UserError(f"--device {device}: lthfast trains on cpu or cuda")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available")


def setup_torch(rt: Runtime) -> None:
    """Put torch's global switches in the state this run asks for (and nothing left over from a
    previous run of the same process, e.g. a sweep's deterministic grid point), and its threads
    (``lthfast.threads``: the CPUs allowed, one for deterministic CPU runs)."""
    check_device(rt.device)
    # TF32 off, determinism, cuDNN autotuning; determinism is switched only when it changes or
    # compiling (see backends: the switch imports dynamo and inductor, 2.5 s of start-up)
    configure_backends(rt.torch_device.type, rt.deterministic, compiling=rt.use_compile)
    cpu_threads.apply(rt.threads, rt.torch_device.type, rt.deterministic)
    torch.manual_seed(0)  # nothing should draw from it; if something does, it draws the same
    if rt.torch_device.type == "cpu":
        keep_freed_memory()  # ~2x faster CPU steps: no page faults on activations (see module)


@dataclass
class Context:
    """One dataset, one runtime and one run store: what every experiment function takes.

    Device copies of the splits are made once and shared by every stage of the process (a
    sweep's runs included), keyed by the labels they carry.
    """

    rt: Runtime
    ds: DatasetArrays
    _splits: dict = field(default_factory=dict, repr=False)

    @property
    def store(self) -> RunStore:
        return RunStore(self.rt.out)

    @property
    def device(self) -> torch.device:
        return self.rt.torch_device

    def train_split(self, label_noise: float = 0.0, noise_seed: int = 0) -> DeviceData:
        """The training set on the device, with true labels or the saved noisy copy."""
        key = self.train_split_key(label_noise, noise_seed)
        if key not in self._splits:
            labels = train_labels(self.ds, label_noise, noise_seed)
            self._splits[key] = DeviceData.from_dataset(self.ds, "train", self.device, labels)
        return self._splits[key]

    @staticmethod
    def train_split_key(label_noise: float = 0.0, noise_seed: int = 0) -> tuple:
        """Which device copy of the training set a run uses (the seed matters only with noise)."""
        return "train", label_noise, noise_seed if label_noise else 0

    def test_split(self) -> DeviceData:
        if "test" not in self._splits:
            self._splits["test"] = DeviceData.from_dataset(self.ds, "test", self.device)
        return self._splits["test"]


# Seed domains: the networks of different purposes never share an init or a data order.
IMP_SEEDS = 0
SCORE_SEEDS = 1


def replicate_seeds(seed: int, replicate: int, domain: int = IMP_SEEDS) -> dict[str, int]:
    """Separate seeds for init, data order and augmentation, per phase, per replicate.

    IMP replicates use domain 0 (the seeds lthfast always used); score ensembles their own, so
    ensemble member m is not IMP replicate m's network (appendix A: "different random inits").
    """
    names = ("init", "pretrain_order", "pretrain_augment", "order", "augment")
    prefix = (seed, replicate) if domain == IMP_SEEDS else (seed, domain, replicate)
    return {name: mix_seed(*prefix, i) for i, name in enumerate(names)}


def new_model(name: str, num_classes: int, init_seeds: Sequence[int],
              device: torch.device) -> PackedResNet:
    model = build(name, num_classes, k=len(init_seeds))
    model.reset_parameters(list(init_seeds))
    return model.to(device=device, memory_format=torch.channels_last)


def packed_model(ctx: Context, states: Sequence[dict]) -> PackedResNet:
    """K trained networks (K=1 state dicts of one CIFAR ResNet) as one packed model on the
    device; the depth is read from the state dicts (three stages of n blocks: 6n + 2)."""
    blocks = {int(name.split(".")[1]) for name in states[0] if name.startswith("blocks.")}
    model = new_model(f"resnet{6 * (len(blocks) // 3) + 2}", ctx.ds.num_classes,
                      [0] * len(states), ctx.device)
    load_packed(model, list(states))
    return model


def run_training(ctx: Context, model: PackedResNet, data: DeviceData,
                 indices: Sequence[np.ndarray], seeds: Sequence[StreamSeeds],
                 recipes: Sequence[Recipe], start: int, checkpoint: Path, label: str,
                 masks=None, hooks: Sequence[Hook] = (),
                 early: Optional[tuple[int, Sequence[np.ndarray]]] = None) -> LoopResult:
    """One call of the training loop with the runtime's loader, flags and checkpoint; the K
    recipes share model, batch size, momentum and end step, and may differ in schedule and
    weight decay. ``early = (t, indices)``: the first t iterations draw from these indices
    instead (warmup on a subset, then all data, one optimizer throughout)."""
    rt, first = ctx.rt, recipes[0]
    stream = make_stream(rt.loader, ctx.ds, data, indices, seeds, first.batch_size)
    if early is not None:
        stream = PhasedStream(make_stream(rt.loader, ctx.ds, data, early[1], seeds,
                                          first.batch_size), stream, early[0])
    schedules = tuple(r.schedule for r in recipes)
    decays = tuple(r.weight_decay for r in recipes)
    cfg = LoopConfig(schedule=schedules[0] if len(set(schedules)) == 1 else schedules,
                     weight_decay=decays[0] if len(set(decays)) == 1 else decays,
                     start_step=start, end_step=first.steps, momentum=first.momentum,
                     log_every=rt.log_every, checkpoint_every=rt.checkpoint_every,
                     checkpoint_seconds=rt.checkpoint_seconds,
                     compile=rt.use_compile, amp=rt.use_amp, capture=rt.cuda_graph)
    progress = None
    if rt.progress is not None:
        def progress(step, total, _losses):
            rt.progress(label, step - start, total - start)
    try:
        return train(model, stream, cfg, masks=masks, checkpoint_path=checkpoint, hooks=hooks,
                     progress=progress)
    finally:
        if hasattr(stream, "close"):  # ffcv's loaders run background threads
            stream.close()
