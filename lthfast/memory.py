"""Will it fit? A request's largest training stage estimated against the device's memory, so a
request that cannot fit (``--batch-size 10^9``, ``--replicates 100000``, ``--train-steps
10^12``, ``--coherence-batches 10^9``) is refused with one line before any data is opened or
file written, instead of failing (or swapping for hours) after it.

The estimate is of what grows with the flags: the packed networks' weights, gradients and
momentum; the activations autograd saves for one batch (measured once per network by a
two-example forward pass on the CPU: milliseconds); the stage's learning-rate table (one row per
iteration); and grads' per-batch gradients. Images are taken at the dataset's side (32 but for
digits' 8). It is an estimate: refused is what needs more than the device has at all (CPU: the
memory available now; CUDA: the device's total), not what would merely be tight.

    python -c "from lthfast.memory import activation_bytes; print(activation_bytes('resnet20', 32))"
"""

from __future__ import annotations

import functools
import os

from .errors import UserError

SIDE = {"digits": 8}  # image side per dataset; others 32 (CIFAR, CINIC-10, synthetic)
LR_TABLE_BYTES = 48  # per iteration: the float64/int64 arrays that build a stage's lr table


@functools.lru_cache(maxsize=None)
def activation_bytes(model: str, side: int) -> tuple[int, int]:
    """(bytes autograd saves per example in fp32, parameters) of one network."""
    import torch

    from .models import build

    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    # a real two-example pass on the CPU (milliseconds): on the meta device, torch's meta
    # kernels (and ``with torch.device("meta")``) import dynamo: 2.5 s of every run's start-up
    net = build(model, 100, k=1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(torch.zeros(2, 3, side, side))
    return saved[0] // 2, sum(p.numel() for p in net.parameters())


def stage_bytes(model: str, side: int, batch: int, k: int, steps: int,
                gradient_batches: int = 0) -> int:
    """Memory of one training stage of ``k`` packed networks (see the module docstring)."""
    per_example, params = activation_bytes(model, side)
    return (k * (4 * 4 * params + per_example * batch) + steps * LR_TABLE_BYTES
            + gradient_batches * k * 4 * params)


def available(device: str) -> int:
    """Bytes the device can hold: CPU, the memory available now; CUDA, the device's total."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[1]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def largest_stage(req) -> tuple[str, int, int, int, int]:
    """(network, batch, packed networks, iterations, gradient batches) of the request's
    largest training stage."""
    from .config import WARMUP_DESIGNS

    command = req.COMMAND
    p = req.preset()
    if command == "warmup":  # the preset's network, the design's batch
        return (p.model, req.batch_size or WARMUP_DESIGNS[req.dataset].batch_size,
                req.replicates, req.train_steps or 0, 0)
    if command == "scores":
        k = (req.models or 2) * req.children if req.kind == "lmc" else (req.models or 10)
        return p.el2n_model, p.batch_size, k, p.train_steps, 0
    k = req.replicates * (req.children if command == "lmc" else 1)
    extra = req.coherence_batches if command == "grads" else 0
    return p.model, p.batch_size, k, p.train_steps, extra


def check_fits(req, device: str) -> None:
    """UserError if the request's largest stage cannot fit on ``device`` (one line)."""
    model, batch, k, steps, extra = largest_stage(req)
    need = stage_bytes(model, SIDE.get(req.dataset, 32), batch, k, steps, extra)
    have = available(device)
    if need > have:
        raise UserError(f"{req.command()} needs about {gib(need)} for one training stage ({k} "
                        f"network(s) of {model}, batch {batch}, {steps} iterations"
                        + (f", {extra} gradient batches" if extra else "")
                        + f"); {device} has {gib(have)}: use smaller values")


def gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**60 else f"{n:.1e} bytes"
