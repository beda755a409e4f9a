"""`digits`: scikit-learn's bundled handwritten digits (1,797 real 8×8 images), the offline default.

Kept at the native 8×8 resolution (upsampling would only cost compute), gray values 0..16 scaled
to 0..255 and replicated to 3 channels so every model and loader path is the same as for CIFAR.
A fixed, seeded, stratified 80/20 split gives 1,438 train and 359 test images. Augmentation is
scaled to the size: pad 1 pixel and crop (the 4 of CIFAR would shift a digit by half its width),
and no flip (a mirrored 3 is not a 3).

    lthfast build-beton digits   # -> datasets/digits
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ...errors import UserError
from . import AugmentSpec, RawDataset, RawSplit, register_source

SPLIT_SEED = 0
TEST_FRACTION = 0.2


@register_source("digits")
def load_digits(source: Optional[str], root: Path) -> RawDataset:
    if source is not None:
        raise UserError("digits ships with scikit-learn; build it without --source")
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    gray = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # N×8×8
    images = np.repeat(gray[..., None], 3, axis=-1)
    labels = bunch.target.astype(np.int64)
    # Stratified split: per class, a seeded permutation; the first 20% go to test.
    rng = np.random.default_rng(SPLIT_SEED)
    test_mask = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test_mask[idx[: int(round(TEST_FRACTION * len(idx)))]] = True
    return RawDataset(
        name="digits",
        classes=tuple(str(c) for c in range(10)),
        train=RawSplit(images[~test_mask], labels[~test_mask]),
        test=RawSplit(images[test_mask], labels[test_mask]),
        augment=AugmentSpec(pad=1, flip=False),
    )
