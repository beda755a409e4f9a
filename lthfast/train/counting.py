"""Counting what a GPU step would cost, on any device: kernel launches and host syncs.

A GPU step of a small network is bounded by how many kernels the host launches and how often
it waits for the GPU, not by arithmetic. Both can be counted on a CPU: every aten op that does
work (not a view, not a bare allocation) is one kernel launch on CUDA (a multi-tensor
``_foreach_`` op: one or a few), and a host sync is a read of a device value (``.item()``,
``.tolist()``, ``.cpu()``, ``bool(t)``, ...). The tests keep these counts under budget
(``tests/test_step_budget.py``); the benchmarks report them (BENCHMARKS.md).

    python -m benchmarks --only counts
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
# Ops that launch nothing: allocations and metadata. Views are recognised by their schema.
_FREE = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
         aten.lift_fresh.default, aten.set_.source_Tensor, aten._local_scalar_dense.default}


class OpCounter(TorchDispatchMode):
    """Counts the aten ops run inside it that would launch a kernel, by name."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func not in _FREE:
            self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


# Tensor methods that read device values on the host (each a sync on a GPU).
_SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def count_syncs() -> Iterator[Counter]:
    """Counts calls of the tensor methods that make the host wait for the device."""
    calls: Counter[str] = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in _SYNCING}

    def spy(name, original):
        def wrapper(self, *args, **kwargs):
            calls[name] += 1
            return original(self, *args, **kwargs)
        return wrapper

    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, spy(name, original))
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
