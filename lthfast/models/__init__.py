"""Model registry: ``build(name, num_classes, k)`` returns K independent networks packed as one.

    python -c "from lthfast.models import build; print(build('resnet20', 10).num_params())"
"""

from __future__ import annotations

import re
from typing import Callable

from ..errors import UserError
from ..registry import Registry
from .packed import PackedResNet

MODELS = Registry("model")  # name -> constructor(num_classes, k=1)
register_model = MODELS.register


for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}")(
        lambda num_classes, k=1, _d=_depth: PackedResNet(_d, num_classes, k))


def resolve(name: str) -> Callable[..., PackedResNet]:
    """The constructor registered as ``name`` (any ``resnet<6n+2>`` works); UserError if none."""
    if name in MODELS:
        return MODELS[name]
    match = re.fullmatch(r"resnet(\d+)", name)
    if match and (int(match.group(1)) - 2) % 6 == 0 and int(match.group(1)) >= 8:
        depth = int(match.group(1))
        return lambda num_classes, k=1: PackedResNet(depth, num_classes, k)
    raise UserError(f"unknown model '{name}' (known: {', '.join(MODELS)}, or any resnet<6n+2>)")


def build(name: str, num_classes: int, k: int = 1) -> PackedResNet:
    return resolve(name)(num_classes, k=k)
