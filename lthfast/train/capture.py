"""A training step recorded once and replayed: CUDA graphs, with a CPU stand-in that checks them.

A ResNet-20 step is ~200 small kernels; on a GPU, launching them one by one from Python costs
more than running them. A CUDA graph records the step's kernels once and replays them with one
launch, on the same memory: so a replayed step sees new data only through tensors at fixed
addresses. ``CapturedStep`` wraps a step function of tensors (``lthfast.train.step.TrainStep``):
it runs the first calls eagerly (compilation, cuDNN autotuning and the optimizer's first
momentum happen there), then records one call with its inputs copied into static buffers, and
from then on copies each call's inputs into those buffers and replays.

Capture asked for and impossible is said, never silent: a hook that needs the host in every
step turns it off for that stage with a one-line notice (``capture_graph``); a capture that
fails is a ``CaptureError`` naming the cause and how to run without graphs (``required``, what
the loop uses; with ``required=False`` a one-line notice, then the step runs eagerly). The
capture runs under ``torch.compiler.set_stance("fail_on_recompile")``: a compiled forward must
have compiled during the eager warm-up, and a recompile inside the capture is that error rather
than a failure deep inside CUDA's stream capture. A failed CUDA capture may leave the caching
allocator believing a capture is under way (older PyTorch), so it turns graphs off for the rest
of the process: said once by a notice when it happens, and later captures asked for are errors.

Whether a step is capturable is checked on the CPU by ``EmulatedGraph``: it records the aten
ops of one call (running them once, as that call's step) and replays exactly those ops on exactly
those tensors. A step that reads a Python number that changes (a learning rate, a row index) or a
host tensor made in the step would replay with stale values and diverge from the eager run,
which is what ``tests/test_capture.py`` compares. It is chosen by
``LTHFAST_CAPTURE_BACKEND=emulate`` (tests); on CUDA the default is real graphs. (Where a
capture fails, the stand-in has already run part of that step, which CUDA would not have: it
proves what is capturable, not the arithmetic of the eager fallback.)

Not yet run on a GPU: ``--cuda-graph`` stays opt-in until ``scripts/gpu_check.py`` (phases A,
B and E: replay == eager, no syncs, ms/step) has passed and measured it there.

    lthfast imp --dataset cifar10 --subset random --size 2048 --steps 400 --cuda-graph
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves

from ..errors import UserError
from .counting import count_syncs

Step = Callable[..., tuple]
WARMUP_CALLS = 3  # eager calls before capture: compile, autotune, first momentum


class CaptureError(UserError):
    """A step asked to be captured could not be (one line: the cause and how to run without)."""


RUN_WITHOUT = "run without --cuda-graph to train eagerly"
_broken: Optional[str] = None  # why graphs are off in this process (a failed CUDA capture)


def notice(line: str) -> None:
    """One line on stderr: something asked for that this process does differently."""
    print(f"notice: {line}", file=sys.stderr, flush=True)


def broken() -> Optional[str]:
    """Why graph capture is off for the rest of this process, or None."""
    return _broken


class CudaGraph:
    """``torch.cuda.CUDAGraph`` behind the interface ``CapturedStep`` uses."""

    runs_on_capture = False  # capturing records kernels; replay runs them
    poisons_process = True  # a failed capture turns graphs off for the process (see module)

    def __init__(self):
        self.graph = torch.cuda.CUDAGraph()
        self.side = torch.cuda.Stream()

    @contextlib.contextmanager
    def eager(self) -> Iterator[None]:
        """Warm-up calls run on a side stream, as PyTorch's graph docs require (lazy set-up of
        cuBLAS handles and autograd streams must not happen on the capturing stream)."""
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            yield
        torch.cuda.current_stream().wait_stream(self.side)

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Capture on the warm-up stream (cuBLAS workspaces made while warming up are the
        ones the graph uses). The outer ``torch.cuda.stream`` restores the current stream even
        when capture fails: ``torch.cuda.graph`` does not, if ending the capture raises."""
        try:
            with torch.cuda.stream(self.side), torch.cuda.graph(self.graph, stream=self.side):
                yield
        except Exception as error:
            self.graph = None
            cause = error.__context__ or error  # ending the capture hides what broke it
            raise RuntimeError(f"{type(cause).__name__}: {cause}".splitlines()[0]) from error

    def replay(self) -> None:
        self.graph.replay()


# Ops whose output shape depends on tensor values: on CUDA they read the device, which a
# capture forbids. (``aten.index.Tensor`` only with boolean indices: integer ones are fine.)
_VALUE_SHAPED = torch.Tag.dynamic_output_shape


def _capturable(func, args) -> Optional[str]:
    """Why ``func`` cannot be captured on CUDA, or None."""
    if func is torch.ops.aten._local_scalar_dense.default:
        return "the step reads a device value on the host"
    if func is torch.ops.aten.lift_fresh.default:
        return "the step makes a tensor from host values"
    if _VALUE_SHAPED in func.tags:
        if func is torch.ops.aten.index.Tensor and not any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                for i in (args[1] if len(args) > 1 else ())):
            return None
        return f"{func} has a value-dependent shape"
    return None


class _Recorder(TorchDispatchMode):
    """Runs and records every aten op that does work (views alias memory: nothing to redo);
    refuses what a CUDA capture would refuse."""

    def __init__(self, ops: list):
        super().__init__()
        self.ops = ops

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        """Off while dynamo compiles, on while compiled code runs (its aten ops, with a
        non-inductor backend, are recorded): else dynamo would not compile under the mode."""
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = _capturable(func, args)
        if why:
            raise RuntimeError(f"{why}: not capturable")
        out = func(*args, **kwargs)
        if not func.is_view:
            self.ops.append((func, args, kwargs, out))
        return out


class _PassOn(TorchDispatchMode):
    @classmethod
    def ignore_compile_internals(cls) -> bool:  # see _Recorder
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class EmulatedGraph:
    """A CPU stand-in for a CUDA graph: same contract, checkable anywhere.

    Unlike CUDA, the recorded call also runs (it is that step); replay re-runs the recorded
    ops on the recorded tensors and writes each result where the recorded op wrote its own.
    Like CUDA, it refuses a step that reads the device from the host (``item``, ``tolist``,
    ``cpu``, ...), makes tensors from host values, or has value-dependent shapes.
    """

    runs_on_capture = True
    poisons_process = False

    def __init__(self):
        self.ops: list = []

    @contextlib.contextmanager
    def eager(self) -> Iterator[None]:
        """Warm-up under a dispatch mode that only passes ops on: the recorder is a dispatch
        mode too, and dynamo's guards see whether one is on (a tensor's dispatch keys), so a
        forward compiled in warm-up would otherwise recompile inside the capture, which a CUDA
        graph's capture would not (and which ``fail_on_recompile`` refuses)."""
        with _PassOn():
            yield

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        with count_syncs() as syncs, _Recorder(self.ops):
            yield
        if syncs:
            raise RuntimeError(f"the step reads device values on the host ({dict(syncs)}): "
                               f"not capturable")

    @torch.no_grad()
    def replay(self) -> None:
        # below any dispatch mode: a replay is one launch, not its ops again (``OpCounter``
        # around a captured run counts what the host still launches per step)
        with _disable_current_modes():
            self._rerun()

    def _rerun(self) -> None:
        for func, args, kwargs, out in self.ops:
            result = func(*args, **kwargs)
            recorded, new = tree_leaves(out), tree_leaves(result)
            if len(recorded) != len(new):
                raise RuntimeError(f"replaying {func}: {len(new)} outputs, recorded "
                                   f"{len(recorded)}")
            for old, now in zip(recorded, new):
                if isinstance(old, torch.Tensor) and now is not old:
                    if now.shape != old.shape or now.dtype != old.dtype:
                        raise RuntimeError(f"replaying {func}: output {tuple(now.shape)} "
                                           f"{now.dtype}, recorded {tuple(old.shape)} {old.dtype}")
                    old.copy_(now)


GRAPHS = {"cuda": CudaGraph, "emulate": EmulatedGraph}


def _no_recompile():
    """Compiling while capturing is an error (torch >= 2.6's stance; older: a dynamo flag)."""
    if "torch._dynamo" not in sys.modules:  # nothing compiled in this process: nothing to check
        return contextlib.nullcontext()
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is not None:
        return set_stance("fail_on_recompile")
    from torch import _dynamo

    return _dynamo.config.patch(error_on_recompile=True)


def capture_graph(device: torch.device, hooks: Sequence[object] = ()
                  ) -> Optional[Callable[[], object]]:
    """The graph kind for a stage that asked for capture on ``device``, or None (run eagerly):
    None with a one-line notice when hooks need the host in every step; a ``CaptureError``
    when an earlier capture failure turned graphs off in this process."""
    kind = graph_for(device)
    if kind is None:
        return None
    if hooks:
        names = ", ".join(sorted({type(h).__name__ for h in hooks}))
        notice(f"--cuda-graph off for this stage: its hooks ({names}) run on the host at "
               f"every step; training eagerly")
        return None
    if _broken:
        raise CaptureError(f"CUDA graphs are off in this process since a capture failed "
                           f"({_broken}); {RUN_WITHOUT}, or rerun in a fresh process")
    return kind


def graph_for(device: torch.device) -> Optional[Callable[[], object]]:
    """The graph kind that captures on ``device``, or None (run eagerly).
    ``LTHFAST_CAPTURE_BACKEND=emulate`` (tests) puts the CPU stand-in on any device."""
    name = os.environ.get("LTHFAST_CAPTURE_BACKEND", "cuda")
    if name not in GRAPHS:
        raise ValueError(f"LTHFAST_CAPTURE_BACKEND={name!r}: use one of {sorted(GRAPHS)}")
    if name == "cuda" and device.type != "cuda":
        return None
    return GRAPHS[name]


class CapturedStep:
    """``step(*tensors) -> tuple of tensors``, eager for ``warmup`` calls, then replayed.

    The returned tensors of a replayed call are the graph's static outputs: read (or copy)
    them before the next call. ``params`` are the tensors whose ``.grad`` the step sets: a
    failed capture resets them before the eager fallback. ``required``: a failed capture is a
    ``CaptureError``; otherwise a one-line notice, and the step runs eagerly from then on.
    """

    def __init__(self, step: Step, graph, params: Sequence[torch.Tensor] = (),
                 warmup: int = WARMUP_CALLS, required: bool = True):
        self.step, self.graph, self.params, self.warmup = step, graph, params, warmup
        self.required = required
        self.calls = 0
        self.captured = False
        self.failed: Optional[str] = None  # why capture failed, if it did
        self.static_in: list[torch.Tensor] = []
        self.static_out: tuple = ()

    def __call__(self, *inputs: torch.Tensor) -> tuple:
        self.calls += 1
        if self.captured:
            for static, new in zip(self.static_in, inputs, strict=True):
                if new.shape != static.shape or new.dtype != static.dtype:
                    raise ValueError(f"a captured step takes {tuple(static.shape)} "
                                     f"{static.dtype}, got {tuple(new.shape)} {new.dtype}")
                static.copy_(new)
            self.graph.replay()
            return self.static_out
        if self.failed:
            return self.step(*inputs)
        if self.calls <= self.warmup:
            with self.graph.eager():
                return self.step(*inputs)
        return self._capture(inputs)

    def _capture(self, inputs: Sequence[torch.Tensor]) -> tuple:
        global _broken
        if _broken:
            self.failed = f"an earlier capture in this process failed ({_broken})"
        else:
            static_in = [t.clone() for t in inputs]
            try:
                # a compile inside the capture is an error here, not a broken capture
                with _no_recompile(), self.graph.capture():
                    static_out = self.step(*static_in)
            except Exception as error:  # e.g. an op CUDA cannot capture
                self.failed = f"{type(error).__name__}: {error}".splitlines()[0]
                if getattr(self.graph, "poisons_process", False):
                    _broken = self.failed
                    notice(f"CUDA graphs off for the rest of this process: a capture failed "
                           f"({self.failed})")
        if self.failed:
            if self.required:
                raise CaptureError(f"CUDA graph capture failed ({self.failed}); {RUN_WITHOUT}")
            notice(f"CUDA graph capture failed ({self.failed}); training eagerly")
            for p in self.params:
                p.grad = None
            return self.step(*inputs)
        self.captured, self.static_in, self.static_out = True, static_in, static_out
        if not self.graph.runs_on_capture:
            self.graph.replay()
        return self.static_out
