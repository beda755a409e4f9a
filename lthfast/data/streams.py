"""Training streams by name: which loader feeds the training loop (``--loader``).

- ``device`` (default): ``BatchStream``, the device-resident loader; batches are a pure function
  of the step, so runs are bit-reproducible and resume exactly.
- ``ffcv``: ``FFCVStream``, stock ffcv ``Loader``s over ``<dataset>/train.beton``, for comparing
  loaders and for users who prefer ffcv. Labels come from the beton, so it refuses label noise;
  its augmentations come from numba's global RNG, so it refuses ``--deterministic``.

Both take the same arguments and give ``batch(step) -> (x, y, idx)``; evaluation always reads the
arrays (no augmentation, so the loader does not matter there).

    lthfast imp --dataset digits --loader ffcv --subset random --size 256 --steps 20 --levels 1
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import UserError
from ..registry import Registry
from .arrays import DatasetArrays
from .loader import BatchStream, DeviceData, StreamSeeds

# (dataset, train split on the device, index array per model, seeds per model, batch size)
StreamFactory = Callable[
    [DatasetArrays, DeviceData, Sequence[np.ndarray], Sequence[StreamSeeds], int], object]
STREAMS = Registry("loader")  # name -> StreamFactory
register_stream = STREAMS.register


@register_stream("device")
def device_stream(ds, data, indices, seeds, batch_size):
    return BatchStream(data, indices, seeds, batch_size)


@register_stream("ffcv")
def ffcv_stream(ds, data, indices, seeds, batch_size):
    from .build import ensure_betons
    from .ffcv_loader import FFCVStream

    ensure_betons(ds.path)
    return FFCVStream(ds.path, indices, seeds, batch_size, device=data.device)


def make_stream(name: str, ds: DatasetArrays, data: DeviceData, indices: Sequence[np.ndarray],
                seeds: Sequence[StreamSeeds], batch_size: int):
    return STREAMS.lookup(name)(ds, data, indices, seeds, batch_size)


def check_loader(name: str, ds: DatasetArrays, label_noise: float = 0.0,
                 deterministic: bool = False) -> None:
    """Everything that would make ``name`` fail mid-run, checked before a run writes anything."""
    STREAMS.lookup(name)
    if name != "ffcv":
        return
    if label_noise:
        raise UserError("--loader ffcv reads labels from the beton, so it cannot train on noisy "
                        "labels; use --loader device for --label-noise")
    if deterministic:
        raise UserError("--loader ffcv draws augmentations from numba's global RNG, so runs are "
                        "not reproducible; use --loader device with --deterministic")
    from .build import ffcv_available

    if not ffcv_available():  # missing betons are written from the arrays when first read
        raise UserError("--loader ffcv needs ffcv: pip install 'lthfast[ffcv]'")
