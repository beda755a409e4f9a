"""torch's numeric switches for a run (lthfast.train.backends): TF32 off, --deterministic on
CUDA bit-exact or an error."""

from __future__ import annotations

import os

import torch

from lthfast.models import build
from lthfast.train import backends
from lthfast.train.counting import OpCounter


def test_tf32_is_off_and_deterministic_cuda_is_strict(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.allow_tf32 = True  # torch's default: cuDNN convolutions in TF32
    assert backends.tf32_enabled()
    try:
        backends.configure("cuda", deterministic=True, notice=lambda line: None)
        assert not backends.tf32_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == backends.CUBLAS_WORKSPACE
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()  # raise, not warn
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        backends.configure("cuda", deterministic=False)  # the next run of the process
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        assert not backends.tf32_enabled()
    finally:
        backends.configure("cpu", deterministic=False)
    assert not torch.backends.cudnn.benchmark


def test_the_model_pools_without_adaptive_avg_pool2d():
    """adaptive_avg_pool2d's CUDA backward has no deterministic kernel (--deterministic would
    raise); the model pools by mean, with the same numbers."""
    model = build("resnet8", 10, k=2)
    x = torch.randn(4, 6, 8, 8)
    with OpCounter() as ops:
        model(x).sum().backward()
    assert not any("adaptive" in name for name in ops.ops)
    features = model.blocks(torch.relu(model.stem_bn(model.stem(x))))
    assert torch.equal(features.mean((2, 3)),
                       torch.nn.functional.adaptive_avg_pool2d(features, 1).flatten(1))
