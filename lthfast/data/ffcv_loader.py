"""An FFCV-backed batch stream with ``BatchStream``'s interface, over ``<dataset>/train.beton``.

``FFCVStream(dataset_dir, indices, seeds, batch_size).batch(step)`` returns, like
``lthfast.data.loader.BatchStream``, ``(x, y, idx)``: x B×3K×H×W float32 (channels_last,
normalised by the train mean/std of meta.json, augmented with the meta.json pad-and-crop + flip),
y B×K int64 labels, idx B×K int64 dataset indices. Model k's images are channels 3k..3k+2.

It is built from stock ffcv 1.0.2 parts only: per model one ``ffcv.loader.Loader(beton,
indices=subset, order=OrderOption.RANDOM, seed=order_seed, drop_last=True)`` with the pipeline

    image: SimpleRGBImageDecoder -> RandomHorizontalFlip (if meta flip) -> RandomTranslate(pad,
           fill 0) -> CPU:  NormalizeImage(mean, std, float32) -> ToTensor -> ToTorchImage
                     CUDA: ToTensor -> ToDevice -> ToTorchImage -> Convert(float32) -> normalise
    label: IntDecoder -> ToTensor (-> ToDevice)

and the K loaders are zipped. On the CPU the normalisation is ffcv's numba-compiled
``NormalizeImage`` (its fastest CPU path; its GPU path needs cupy, so on CUDA a torch op does it).
RandomTranslate(padding=p) with zero fill is torchvision's ``RandomCrop(size, padding=p)``, which
is what ``DeviceData`` does too.

How it differs from ``BatchStream`` (use that one unless you are comparing loaders):

- Sequential, not a pure function of the step. ffcv produces batches epoch by epoch from a
  background thread, so ``batch(step)`` is meant to be called with step, step+1, ...; each epoch
  is a fresh ffcv iterator (``drop_last``: an epoch is ``len(indices) // B`` batches and batches
  never cross epochs, where ``BatchStream`` runs on through epoch boundaries). It *can* be asked
  for any step, e.g. the first step of a resumed run: it then starts the iterator of that step's
  epoch (ffcv's epoch counter set to it, so the order is the one an uninterrupted run sees) and
  skips — decodes and discards — the batches before the step. Asking for an earlier step than the
  last one restarts the epoch the same way. Skipping costs a batch's loading time per batch.
- Orders are seeded (``seed + epoch``, ffcv's ``Random`` traversal), augmentations are not: ffcv
  draws crops and flips from numba's global RNG inside its compiled, multithreaded code, so runs
  are not bit-reproducible and a resumed run does not see the augmentations it would have seen.
- ffcv does not return sample indices. ``idx`` is reconstructed exactly from ffcv's own traversal
  order: ``loader.traversal_order.sample_order(epoch)`` is the order the loader's epoch iterator
  cuts into consecutive batches (single-process, non-distributed ``RANDOM`` order). The test
  checks pixels and labels against the ``.npy`` arrays at these indices, so hooks that need
  indices (forgetting) work. Label noise is not supported: labels
  come from the beton.
- Startup: every ``Loader`` compiles its pipeline with numba on its first epoch (~5-15 s each on
  a CPU), so K models cost K compiles.
- ffcv sets numba's *and torch's* thread count to ``num_workers`` whenever an epoch starts;
  ``num_workers`` defaults to ``torch.get_num_threads()`` so training threads are unchanged.

    python -c "from lthfast.data.ffcv_loader import FFCVStream; help(FFCVStream)"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ..errors import UserError
from ..files import read_json
from .loader import StreamSeeds, host_to_device


class _Normalise(torch.nn.Module):
    """(x - mean) / std per channel on a float B×3×H×W tensor (ffcv wraps it as an operation)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        super().__init__()
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


def image_pipeline(meta: dict, device: torch.device, augment: bool) -> list:
    """The ffcv operations that turn a raw beton image into a normalised, augmented tensor."""
    from ffcv.fields.decoders import SimpleRGBImageDecoder
    from ffcv.transforms import (Convert, NormalizeImage, RandomHorizontalFlip, RandomTranslate,
                                 ToDevice, ToTensor, ToTorchImage)

    spec = meta.get("augment", {})
    ops: list = [SimpleRGBImageDecoder()]
    if augment and spec.get("flip", True):
        ops.append(RandomHorizontalFlip())
    if augment and int(spec.get("pad", 0)) > 0:
        ops.append(RandomTranslate(padding=int(spec["pad"]), fill=(0, 0, 0)))
    mean = np.asarray(meta["mean"], dtype=np.float64)
    std = np.asarray(meta["std"], dtype=np.float64)
    if device.type == "cpu":
        ops += [NormalizeImage(mean, std, np.float32), ToTensor(), ToTorchImage()]
    else:
        ops += [ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage(),
                Convert(torch.float32), _Normalise(meta["mean"], meta["std"], device)]
    return ops


def label_pipeline(device: torch.device) -> list:
    from ffcv.fields.decoders import IntDecoder
    from ffcv.transforms import ToDevice, ToTensor

    ops: list = [IntDecoder(), ToTensor()]
    if device.type != "cpu":
        ops.append(ToDevice(device, non_blocking=True))
    return ops


def make_loader(beton: Union[str, Path], meta: dict, batch_size: int, indices: Optional[np.ndarray],
                seed: int, device: torch.device, augment: bool = True, num_workers: int = -1,
                batches_ahead: int = 3, order=None) -> Any:
    """One stock ``ffcv.loader.Loader`` yielding (x B×3×H×W float32 channels_last, y B×1 int64)."""
    from ffcv.loader import Loader, OrderOption

    return Loader(str(beton), batch_size=batch_size, num_workers=num_workers,
                  order=OrderOption.RANDOM if order is None else order, seed=int(seed),
                  indices=None if indices is None else np.asarray(indices, dtype=np.uint64),
                  drop_last=True, batches_ahead=batches_ahead,
                  pipelines={"image": image_pipeline(meta, device, augment),
                             "label": label_pipeline(device)})


@dataclass
class _Cursor:
    epoch: int
    offset: int  # next batch this iterator will yield
    iterator: Any
    order: np.ndarray  # dataset indices of this epoch, in batch order


class FFCVStream:
    """Batches for K models from K zipped ffcv Loaders over one beton (see the module docstring)."""

    def __init__(self, dataset_dir: Union[str, Path], indices: Sequence[np.ndarray],
                 seeds: Sequence[Union[StreamSeeds, int]], batch_size: int,
                 device: Union[torch.device, str] = "cpu", augment: bool = True,
                 num_workers: Optional[int] = None, batches_ahead: int = 3):
        if len(indices) != len(seeds) or len(indices) < 1:
            raise ValueError("need one index array and one seed per model")
        self.dataset_dir = Path(dataset_dir)
        beton = self.dataset_dir / "train.beton"
        if not beton.exists():
            raise UserError(f"{beton} is missing: the dataset was built without ffcv; install "
                            f"ffcv and rebuild it with `lthfast build-beton ... --force`")
        self.meta = read_json(self.dataset_dir / "meta.json")
        self.device = torch.device(device)
        self.batch_size, self.do_augment = int(batch_size), augment
        self.indices = [np.asarray(ix, dtype=np.int64) for ix in indices]
        self.k = len(self.indices)
        for ix in self.indices:
            if len(ix) < self.batch_size:
                raise UserError(f"an index array of {len(ix)} examples is shorter than one batch "
                                f"of {self.batch_size} (ffcv drops the last partial batch)")
        self.seeds = [s.order if isinstance(s, StreamSeeds) else int(s) for s in seeds]
        self.num_workers = torch.get_num_threads() if num_workers is None else int(num_workers)
        self.h, self.w = (int(v) for v in self.meta["image_shape"][:2])
        self.loaders = [make_loader(beton, self.meta, self.batch_size, ix, seed, self.device,
                                    augment, self.num_workers, batches_ahead)
                        for ix, seed in zip(self.indices, self.seeds)]
        self.batches_per_epoch = [len(loader) for loader in self.loaders]
        self._cursors: list[Optional[_Cursor]] = [None] * self.k

    def _start_epoch(self, m: int, epoch: int) -> _Cursor:
        old = self._cursors[m]
        if old is not None:
            old.iterator.close()
        loader = self.loaders[m]
        loader.next_epoch = epoch  # ffcv's Random order for epoch e is permutation(seed + e)
        order = np.asarray(loader.traversal_order.sample_order(epoch), dtype=np.int64)
        threads = torch.get_num_threads()
        iterator = iter(loader)  # ffcv sets torch's thread count to num_workers here
        torch.set_num_threads(threads)
        cursor = _Cursor(epoch, 0, iterator, order[: self.batches_per_epoch[m] * self.batch_size])
        self._cursors[m] = cursor
        return cursor

    def _model_batch(self, m: int, step: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        epoch, offset = divmod(step, self.batches_per_epoch[m])
        cursor = self._cursors[m]
        if cursor is None or cursor.epoch != epoch or cursor.offset > offset:
            cursor = self._start_epoch(m, epoch)
        while cursor.offset < offset:  # seek forward: decode and discard
            next(cursor.iterator)
            cursor.offset += 1
        x, y = next(cursor.iterator)
        cursor.offset += 1
        b = self.batch_size
        return x, y, cursor.order[offset * b : (offset + 1) * b]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x: B×3K×H×W float32 channels_last, y: B×K int64, idx: B×K int64) for batch ``step``.

        Call with increasing steps; other steps work but cost a restart and skipped batches.
        """
        b, k = self.batch_size, self.k
        # ffcv reuses its output buffers a few batches later, so copy into a tensor we own.
        out = torch.empty((b, self.h, self.w, 3 * k), dtype=torch.float32, device=self.device)
        ys, idxs = [], []
        for m in range(k):
            x, y, idx = self._model_batch(m, step)
            out[..., 3 * m : 3 * m + 3].copy_(x.permute(0, 2, 3, 1))
            ys.append(y.reshape(-1))
            idxs.append(idx)
        y = torch.stack(ys, 1).to(self.device, dtype=torch.int64)
        idx = host_to_device(np.stack(idxs, 1), self.device)  # pinned, queued: no wait per step
        return out.permute(0, 3, 1, 2), y, idx

    def close(self) -> None:
        for cursor in self._cursors:
            if cursor is not None:
                cursor.iterator.close()
        self._cursors = [None] * self.k

    def __iter__(self):
        step = 0
        while True:
            yield self.batch(step)
            step += 1
