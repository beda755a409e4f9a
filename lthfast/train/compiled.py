"""torch.compile, once per process: one compiled training forward and one for evaluation.

Every stage of a process (IMP levels, replicates, score ensembles, a whole in-process sweep)
calls the same two compiled functions, so dynamo compiles a graph per (model shape, K, batch
shape, autocast) the first time it meets it and reuses it after: a new model of the same shape
is a new input, not a new graph. ``dynamic=False``: shapes are few and fixed per run, and static
shapes are what CUDA graphs need. Training and evaluation are separate compiled functions, so
their graphs are cached (and counted against dynamo's recompile limit) apart: evaluating never
evicts or recompiles the training graph.

The backend is inductor unless ``LTHFAST_COMPILE_BACKEND`` names another (``eager`` and
``aot_eager`` need no C compiler; the tests use them).

    LTHFAST_COMPILE_BACKEND=aot_eager lthfast imp --dataset digits --compile --steps 20 --levels 1
"""

from __future__ import annotations

import os
from typing import Callable

import torch

_COMPILED: dict[tuple[str, str], Callable] = {}


def _train_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def _eval_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


_FORWARDS = {"train": _train_forward, "eval": _eval_forward}
RECOMPILE_LIMIT = 64  # graphs per compiled function: dynamo's default (8) is reached by a long
# packed sweep (K changes per group, the batch per dataset), after which it runs eagerly, silently


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across versions
        if hasattr(config, name) and getattr(config, name) < RECOMPILE_LIMIT:
            setattr(config, name, RECOMPILE_LIMIT)


def backend() -> str:
    return os.environ.get("LTHFAST_COMPILE_BACKEND", "inductor")


def compiled_forward(model: torch.nn.Module, purpose: str
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> model(x)`` through this process's compiled ``purpose`` ("train" or "eval")."""
    key = (purpose, backend())
    if key not in _COMPILED:
        _raise_recompile_limit()
        _COMPILED[key] = torch.compile(_FORWARDS[purpose], backend=key[1], dynamic=False)
    fn = _COMPILED[key]
    return lambda x: fn(model, x)
