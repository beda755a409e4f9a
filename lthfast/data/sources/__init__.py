"""Dataset sources: one small module per dataset, each registering a loader of raw arrays.

A source turns whatever is on disk (official archive, folder tree, bundled data) into a
``RawDataset`` of uint8 N×H×W×3 images and int64 labels; ``lthfast.data.build`` does the rest.
Adding a dataset is one module and one ``@register_source`` line.

    python -c "from lthfast.data.sources import SOURCES; print(sorted(SOURCES))"
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ...errors import UserError
from ...registry import Registry


@dataclass(frozen=True)
class AugmentSpec:
    """Train-time augmentation: pad by ``pad`` pixels, random crop back, optional left-right
    flip."""

    pad: int = 4
    flip: bool = True


@dataclass(frozen=True)
class RawSplit:
    images: np.ndarray  # uint8, N×H×W×3
    labels: np.ndarray  # int64, N

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise UserError(f"images must be uint8 N×H×W×3, got {self.images.dtype} "
                            f"{self.images.shape}")
        if len(self.labels) != len(self.images):
            raise UserError("images and labels differ in length")


@dataclass(frozen=True)
class RawDataset:
    name: str
    classes: tuple[str, ...]
    train: RawSplit
    test: RawSplit
    augment: AugmentSpec = field(default_factory=AugmentSpec)


# A loader gets the optional --source text (a path, or options for synthetic) and the data root
# (where downloads go) and returns arrays.
SourceLoader = Callable[[Optional[str], Path], RawDataset]
SOURCES = Registry("dataset")  # name -> SourceLoader
register_source = SOURCES.register


def split_name(name: str) -> tuple[str, Optional[str]]:
    """A dataset name is a source's name, optionally with its options after a colon
    (``synthetic:size=8,noise=120``): (source name, options or None)."""
    kind, sep, options = str(name).partition(":")
    return kind, (options if sep else None)


def get_source(name: str) -> SourceLoader:
    return SOURCES.lookup(split_name(name)[0])


# Every module in this package is a source: importing it runs its @register_source.
for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
