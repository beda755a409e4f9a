"""torch's global numeric switches for a run: TF32, cuDNN autotuning and determinism, set once.

TF32 is off everywhere (``allow_tf32 = False`` for cuBLAS matmuls and cuDNN convolutions).
Training on CUDA runs under bf16 autocast, which TF32 does not touch, so this costs the training
step nothing; what it decides is the arithmetic of everything that runs in fp32 on purpose: runs
with ``--no-amp`` and predictions made without autocast (EL2N, loss barriers) are then fp32 as
their flags say, not fp32 with 10-bit mantissas (PyTorch's default lets cuDNN convolutions use
TF32 on Ampere and later, so "fp32" EL2N would have differed between an A100 and a V100).

``--deterministic`` on CUDA means bit-exact or an error, never a silent difference:
- ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS picks reduction splits by workspace otherwise),
  set in the environment before cuBLAS makes its first handle; if CUDA is already initialised
  without it, a one-line notice says that cuBLAS may not be deterministic in this process;
- ``torch.use_deterministic_algorithms(True)`` with ``warn_only=False``: an op without a
  deterministic CUDA kernel raises instead of warning once and carrying on;
- cuDNN deterministic, benchmark off (autotuning may pick other algorithms run to run).
The one such op ResNet training had, ``adaptive_avg_pool2d``'s backward, is gone: the packed
model pools with ``mean`` over H and W (the same numbers, a deterministic backward).

    python -c "import lthfast.train.backends as b; b.configure('cuda', deterministic=True)"
"""

from __future__ import annotations

import os
import sys

import torch

CUBLAS_WORKSPACE = ":4096:8"


def _fp32_ieee() -> None:
    """TF32 off, by the flags every torch version reads. (Not ``fp32_precision``, torch 2.9's
    API: once it is used, reading ``torch.backends.cudnn.allow_tf32`` raises in torch 2.13, and
    inductor's convolution templates read it.)"""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def tf32_enabled() -> bool:
    """Whether any fp32 matmul or convolution on CUDA may run in TF32."""
    return bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)


def configure(device_type: str, deterministic: bool, notice=None, compiling: bool = False) -> None:
    """Set TF32, cuDNN autotuning and determinism for a run on ``device_type`` (cpu, cuda);
    every switch is set either way, so nothing is left over from an earlier run of the process.

    ``torch.use_deterministic_algorithms`` imports dynamo and inductor (it sets inductor's
    deterministic switch): 2.5 s of every CPU run's start-up. It is called only when the state
    changes, when compiling (inductor is loaded anyway), or once inductor is already loaded."""
    notice = notice or (lambda line: print(line, file=sys.stderr))
    _fp32_ieee()
    if deterministic and device_type == "cuda" and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        if torch.cuda.is_initialized():
            notice("notice: CUDA was initialised before --deterministic could set "
                   f"CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE}: cuBLAS may not be bit-exact in "
                   "this process (set it in the environment to be sure)")
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    # on the CPU as before (a warning): the alerts that matter are CUDA's
    if (deterministic or compiling or torch.are_deterministic_algorithms_enabled()
            or "torch._inductor.config" in sys.modules):
        torch.use_deterministic_algorithms(deterministic, warn_only=device_type != "cuda")
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device_type == "cuda" and not deterministic
