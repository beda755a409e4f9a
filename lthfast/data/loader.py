"""Device-resident loader: the whole split as one uint8 tensor on the training device.

A run's data order is a pure function of (order seed, step): model k's stream is the
concatenation of seeded permutations of its index array, epoch after epoch, and batch s is
positions [s·B, (s+1)·B) of that stream, so batches cross epoch boundaries and a run can resume
at any step with no loader state to save. Augmentation (pad-and-crop + flip), drawn from a
generator seeded by (augmentation seed, step), is one ``index_select`` for the whole batch of all K
models at once: the images are stored pre-padded, next to a left-right mirrored copy when the spec
flips, so every crop, flipped or not, is a run of contiguous byte rows, copied whole. Conversion to
float and normalisation follow on the device, in place. The output is already in the packed-model
layout ``B × 3K × H × W`` (channels_last), model k's image in channels 3k..3k+2.

    python -c "from lthfast.data.loader import DeviceData; help(DeviceData)"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from .sources import AugmentSpec

# Large odd constants mix (seed, epoch/step) into one 63-bit seed; collisions are irrelevant here.
_MIX = 0x9E3779B97F4A7C15


def mix_seed(*parts: int) -> int:
    h = 0
    for p in parts:
        h = (h * _MIX + int(p) + 1) % (1 << 63)
    return h


class DeviceData:
    """One split on a device: padded uint8 images N×(H+2p)×(W+2p)×3, labels, normalisation.

    With flips in the augmentation spec the images are stored twice (memory ×2; CIFAR-10:
    2 × 50,000 × 40×40×3 bytes = 480 MB): ``table[n + i]`` is image i's padded image mirrored
    left-right, so a flipped crop is a plain crop of the mirror (column dx becomes 2p − dx) and
    every output row is contiguous in the table.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: Sequence[float],
                 std: Sequence[float], augment: AugmentSpec, device: torch.device | str):
        self.device = torch.device(device)
        self.augment = augment
        p = augment.pad
        x = torch.from_numpy(np.array(images, copy=True)).to(self.device)  # memmaps are read-only
        self.n, self.h, self.w = x.shape[0], x.shape[1], x.shape[2]
        # Pad once (zeros, as torchvision's RandomCrop(padding=p) does) so each batch is one gather;
        # the mirrored copy (see the class docstring) only when the spec flips.
        copies = 2 if augment.flip else 1
        self.table = torch.zeros(copies * self.n, self.h + 2 * p, self.w + 2 * p, 3,
                                 dtype=torch.uint8, device=self.device)
        self.table[: self.n, p : p + self.h, p : p + self.w] = x
        if augment.flip:  # in chunks: flip() copies, and a whole-split temporary costs memory
            for a in range(0, self.n, 1024):
                mirror = self.table[self.n + a : self.n + a + 1024, p : p + self.h, p : p + self.w]
                mirror.copy_(x[a : a + 1024].flip(2))
        self.padded = self.table[: self.n]
        self.labels = torch.as_tensor(np.array(labels, dtype=np.int64), device=self.device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.inv_std = 1.0 / torch.tensor(std, dtype=torch.float32, device=self.device)
        self._tiled: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # Table offsets (in pixels) of each output run relative to a crop's first pixel: one per
        # crop row (K = 1), or one per pixel (K > 1); see ``gather``.
        rows = torch.arange(self.h, device=self.device)[:, None] * (self.w + 2 * p)
        self._run_offsets = {self.w: rows, 1: rows + torch.arange(self.w, device=self.device)}

    @classmethod
    def from_dataset(cls, ds, split: str, device: torch.device | str,
                     labels: np.ndarray | None = None) -> "DeviceData":
        """``split`` ("train" or "test") of a built dataset (``DatasetArrays``) on ``device``,
        with its own labels or the given ones (e.g. noisy train labels)."""
        images = ds.train_images if split == "train" else ds.test_images
        if labels is None:
            labels = ds.train_labels if split == "train" else ds.test_labels
        return cls(images, labels, ds.meta["mean"], ds.meta["std"], ds.augment, device)

    def normalise(self, x_uint8: torch.Tensor, k: int) -> torch.Tensor:
        """uint8 B×H×W×3K -> float B×3K×H×W (channels_last) normalised per channel."""
        if k not in self._tiled:
            # mean and 1/std tiled over a whole image (H×W×K×3 values): the in-place ops below
            # then run over long contiguous rows; broadcasting a size-3 last dimension instead
            # is several times slower on the CPU.
            self._tiled[k] = (self.mean.repeat(k * self.h * self.w),
                              self.inv_std.repeat(k * self.h * self.w))
        mean, inv_std = self._tiled[k]
        # One conversion pass into a fresh output, then two in-place passes: the same float
        # arithmetic, (x - mean) * (1/std), without temporaries.
        out = torch.empty(x_uint8.shape, dtype=torch.float32, device=self.device)
        out.copy_(x_uint8)
        out.view(out.shape[0], -1).sub_(mean).mul_(inv_std)
        return out.permute(0, 3, 1, 2)

    def gather(self, idx: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
               flip: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Crop+flip gather. idx/dy/dx/flip: B×K. Returns uint8 B×H×W×3K (written into ``out``,
        any contiguous uint8 tensor of B·H·W·3K elements, if given).

        The output is a sequence of runs of ``run`` pixels, each contiguous in the table: for
        K = 1 a whole crop row (run = W); for K > 1 a single pixel (run = 1), because the packed
        layout B×H×W×K×3 interleaves the K models pixel by pixel. Viewing the table's bytes as
        overlapping rows of 3·run bytes, one starting at every pixel, makes the crop one
        ``index_select`` of rows (a memcpy each on the CPU) instead of a gather of single bytes.
        """
        return self.gather_at(self.first_pixels(idx, dy, dx, flip), out)

    def first_pixels(self, idx, dy, dx, flip):
        """Table offset (in pixels) of each crop's first pixel, from torch tensors or numpy
        arrays alike (integer arithmetic: both give the same numbers). Flipped crops come from
        the mirrored copy (an index out of range, hence an error, if the spec has no flips)."""
        p = self.augment.pad
        where = torch.where if isinstance(idx, torch.Tensor) else np.where
        image, col = idx + self.n * flip, where(flip, 2 * p - dx, dx)
        return (image * (self.h + 2 * p) + dy) * (self.w + 2 * p) + col

    def gather_at(self, first: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The crops whose first pixels are ``first`` (B×K, from ``first_pixels``)."""
        b, k = first.shape
        run = self.w if k == 1 else 1
        starts = first[:, None, None, :] + self._run_offsets[run][None, :, :, None]  # B×H×W/run×K
        flat = self.table.view(-1)
        runs = flat.as_strided((flat.numel() // 3 - run + 1, 3 * run), (3, 1))
        out = None if out is None else out.view(-1, 3 * run)
        crops = torch.index_select(runs, 0, starts.reshape(-1), out=out)
        return crops.view(b, self.h, self.w, 3 * k)

    def eval_batch(self, start: int, end: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-augmented images [start, end) for all K models (same image in every slot)."""
        p = self.augment.pad
        x = self.padded[start:end, p : p + self.h, p : p + self.w]
        return self.normalise(x.repeat(1, 1, 1, k), k), self.labels[start:end]


def host_to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host array on the device without a host sync. A copy from pageable memory to a
    GPU first waits for the GPU's queue to drain, which would stall every step; from pinned
    memory (PyTorch's caching pinned allocator, which keeps the block until the copy is done)
    with ``non_blocking`` it is only queued."""
    t = torch.from_numpy(array)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@dataclass(frozen=True)
class StreamSeeds:
    order: int
    augment: int


class BatchStream:
    """Batches for K models, each with its own index array, order seed and augmentation seed."""

    chunk_steps = 32  # steps drawn per host-to-device copy (any value gives the same batches)

    def __init__(self, data: DeviceData, indices: Sequence[np.ndarray],
                 seeds: Sequence[StreamSeeds], batch_size: int, augment: bool = True):
        assert len(indices) == len(seeds) and len(indices) >= 1
        self.data, self.batch_size, self.do_augment = data, batch_size, augment
        self.indices = [np.asarray(ix, dtype=np.int64) for ix in indices]
        self.seeds = list(seeds)
        self.k = len(indices)
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}
        self._cached_chunk = None
        # The uint8 crops live only until normalised, so one buffer serves every batch: on the
        # CPU, fresh memory each batch can cost page faults that take longer than the gather.
        self._crops = torch.empty(batch_size * data.h * data.w * 3 * self.k, dtype=torch.uint8,
                                  device=data.device)

    def _epoch_perm(self, model: int, epoch: int) -> np.ndarray:
        key = (model, epoch)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 4 * self.k:  # keep only recent epochs
                self._perm_cache.clear()
            rng = np.random.default_rng(mix_seed(self.seeds[model].order, epoch))
            self._perm_cache[key] = self.indices[model][rng.permutation(len(self.indices[model]))]
        return self._perm_cache[key]

    def step_indices(self, step: int) -> np.ndarray:
        """Dataset indices of batch ``step`` for every model: K×B."""
        out = np.empty((self.k, self.batch_size), dtype=np.int64)
        for m in range(self.k):
            m_len = len(self.indices[m])
            pos = step * self.batch_size
            filled = 0
            while filled < self.batch_size:  # a batch may span several (short) epochs
                epoch, offset = divmod(pos + filled, m_len)
                take = min(self.batch_size - filled, m_len - offset)
                out[m, filled : filled + take] = self._epoch_perm(m, epoch)[offset : offset + take]
                filled += take
        return out

    def augment_params(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Crop offsets and flips for batch ``step``: B×K each, from per-model seeded generators."""
        return tuple(host_to_device(a, self.data.device) for a in self._augment_arrays(step))

    def _augment_arrays(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        spec, b = self.data.augment, self.batch_size
        dys, dxs, flips = [], [], []
        for m in range(self.k):
            g = np.random.default_rng(mix_seed(self.seeds[m].augment, step))
            if self.do_augment:
                dy, dx = g.integers(0, 2 * spec.pad + 1, size=(2, b))
                flip = g.random(b) < 0.5 if spec.flip else np.zeros(b, dtype=bool)
            else:
                dy = dx = np.full(b, spec.pad)
                flip = np.zeros(b, dtype=bool)
            dys.append(dy), dxs.append(dx), flips.append(flip)
        return np.stack(dys, 1), np.stack(dxs, 1), np.stack(flips, 1)

    def _chunk(self, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dataset indices, labels and crop starts of steps [chunk·C, (chunk+1)·C), C×B×K each,
        drawn on the host as ``step_indices`` / ``augment_params`` define them and sent to the
        device in one copy, so a step itself only slices them: no host work, no copy."""
        if self._cached_chunk is None or self._cached_chunk[0] != chunk:
            steps = range(chunk * self.chunk_steps, (chunk + 1) * self.chunk_steps)
            idx = np.stack([self.step_indices(s).T for s in steps])
            aug = [self._augment_arrays(s) for s in steps]
            dy, dx, flip = (np.stack([a[i] for a in aug]) for i in range(3))
            both = host_to_device(np.stack([idx, self.data.first_pixels(idx, dy, dx, flip)]),
                                  self.data.device)
            self._cached_chunk = (chunk, both[0], self.data.labels[both[0]], both[1])
        return self._cached_chunk[1:]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x: B×3K×H×W float, y: B×K labels, idx: B×K dataset indices) for batch ``step``."""
        chunk, row = divmod(step, self.chunk_steps)
        idx, labels, first = self._chunk(chunk)
        x = self.data.normalise(self.data.gather_at(first[row], out=self._crops), self.k)
        return x, labels[row], idx[row]

    def __iter__(self) -> Iterator:
        step = 0
        while True:
            yield self.batch(step)
            step += 1


class PhasedStream:
    """The first ``switch`` steps from one stream, the rest from another (same K and batch):
    learning-rate warmup on a subset, then all data. Both are pure functions of the step, so
    the pair is too and runs still resume exactly."""

    def __init__(self, first, then, switch: int):
        assert first.k == then.k
        self.first, self.then, self.switch, self.k = first, then, switch, first.k

    def batch(self, step: int):
        return (self.first if step < self.switch else self.then).batch(step)

    def close(self) -> None:
        for stream in (self.first, self.then):
            if hasattr(stream, "close"):
                stream.close()
