"""`synthetic`: a seeded, learnable image set of any size, shape and class count.

Each class has a smooth random prototype image; an example is its class prototype plus a random
shift and pixel noise, so a small network learns it in a few hundred steps while no two images
are equal. Used by tests and benchmarks (e.g. 50,000 CIFAR-shaped images).
Options are ``key=value`` pairs, e.g. ``train=50000,test=10000,size=32``, given either in the
dataset's name, ``synthetic:size=8,noise=120`` (a variant: its own directory and dataset name,
so its runs never mix with another variant's; built on first use like digits, and its preset's
schedule scaled to its size, see ``lthfast.config``), or as ``build-beton synthetic --source
...`` (one variant under the plain name ``synthetic`` per data root).

    lthfast build-beton synthetic:train=2000,test=500,size=32
    # -> datasets/synthetic:size=32,test=500,train=2000
    lthfast imp --dataset synthetic:size=8,noise=120 --levels 3
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ...errors import UserError
from . import AugmentSpec, RawDataset, RawSplit, register_source


@dataclass(frozen=True)
class SyntheticSpec:
    train: int = 5000
    test: int = 1000
    size: int = 32
    classes: int = 10
    seed: int = 0
    noise: float = 40.0

    @classmethod
    def parse(cls, text: Optional[str]) -> "SyntheticSpec":
        if not text:
            return cls()
        values = {}
        for item in str(text).split(","):
            key, _, value = item.partition("=")
            if key not in cls.__dataclass_fields__ or not value:
                raise UserError(f"bad synthetic option '{item}' (use e.g. train=2000,size=32)")
            try:
                values[key] = type(getattr(cls(), key))(value)
            except ValueError:
                raise UserError(f"bad synthetic option '{item}'") from None
        spec = cls(**values)
        if min(spec.train, spec.test, spec.size, spec.classes) < 1:
            raise UserError("synthetic sizes must be positive")
        if spec.seed < 0:
            raise UserError(f"synthetic seed must be >= 0, got {spec.seed}")
        return spec


def variant_name(options: Optional[str]) -> str:
    """The dataset name of a variant: ``synthetic`` for the default options, else
    ``synthetic:`` and the options that differ from the default, sorted, numbers as parsed
    (``noise=120`` and ``noise=120.0`` are one variant)."""
    spec, default = SyntheticSpec.parse(options), SyntheticSpec()
    changed = sorted(k for k in spec.__dataclass_fields__
                     if getattr(spec, k) != getattr(default, k))
    return "synthetic" + (":" + ",".join(f"{k}={getattr(spec, k):g}" for k in changed)
                          if changed else "")


def make_split(spec: SyntheticSpec, n: int, prototypes: np.ndarray, rng) -> RawSplit:
    labels = np.arange(n, dtype=np.int64) % spec.classes
    rng.shuffle(labels)
    shifts = rng.integers(-2, 3, size=(n, 2))
    images = np.empty((n, spec.size, spec.size, 3), dtype=np.uint8)
    chunk = 4096
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        base = prototypes[labels[s:e]]
        for j in range(e - s):  # per-image roll: cheap at these sizes, clearer than a gather
            base[j] = np.roll(base[j], tuple(shifts[s + j]), axis=(0, 1))
        noisy = base + rng.normal(0, spec.noise, size=base.shape).astype(np.float32)
        images[s:e] = np.clip(noisy, 0, 255).astype(np.uint8)
    return RawSplit(images, labels)


@register_source("synthetic")
def load_synthetic(source: Optional[str], root: Path) -> RawDataset:
    spec = SyntheticSpec.parse(source)
    rng = np.random.default_rng(spec.seed)
    # Smooth prototypes: low-resolution noise upsampled, so classes differ in coarse structure.
    low = rng.uniform(0, 255, size=(spec.classes, 4, 4, 3)).astype(np.float32)
    reps = -(-spec.size // 4)
    prototypes = np.repeat(np.repeat(low, reps, axis=1), reps, axis=2)[:, : spec.size, : spec.size]
    return RawDataset(
        name="synthetic",
        classes=tuple(f"class_{c}" for c in range(spec.classes)),
        train=make_split(spec, spec.train, prototypes, rng),
        test=make_split(spec, spec.test, prototypes, rng),
        augment=AugmentSpec(pad=4 if spec.size >= 16 else 1, flip=True),
    )
