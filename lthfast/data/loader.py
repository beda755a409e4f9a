"""Device-resident loader: the whole split as one uint8 tensor on the training device.

A run's data order is a pure function of (order seed, step): model k's stream is the
concatenation of seeded permutations of its index array, epoch after epoch, and batch s is
positions [s·B, (s+1)·B) of that stream, so batches cross epoch boundaries and a run can resume
at any step with no loader state to save. Augmentation (pad-and-crop + flip) is one gather on the
pre-padded tensor for the whole batch of all K models at once, drawn from a generator seeded by
(augmentation seed, step); normalisation follows on the device. The output is already in the
packed-model layout ``B × 3K × H × W`` (channels_last), model k's image in channels 3k..3k+2.

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
    """One split on a device: padded uint8 images N×(H+2p)×(W+2p)×3, labels, normalisation."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: Sequence[float],
                 std: Sequence[float], augment: AugmentSpec, device: torch.device | str):
        self.device = torch.device(device)
        self.augment = augment
        p = augment.pad
        x = torch.from_numpy(np.array(images, copy=True))  # memmaps are read-only
        # Pad once (zeros, as torchvision's RandomCrop(padding=p) does) so each batch is one gather.
        self.padded = torch.nn.functional.pad(x, (0, 0, p, p, p, p)).to(self.device)
        self.labels = torch.as_tensor(np.array(labels, dtype=np.int64), device=self.device)
        self.n, self.h, self.w = x.shape[0], x.shape[1], x.shape[2]
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.inv_std = 1.0 / torch.tensor(std, dtype=torch.float32, device=self.device)
        self._arange_h = torch.arange(self.h, device=self.device)
        self._arange_w = torch.arange(self.w, device=self.device)

    def with_labels(self, labels: np.ndarray) -> "DeviceData":
        """Same images, other labels (label noise) without a second copy of the images."""
        clone = object.__new__(DeviceData)
        clone.__dict__.update(self.__dict__)
        clone.labels = torch.as_tensor(np.array(labels, dtype=np.int64), device=self.device)
        return clone

    def normalise(self, x_uint8: torch.Tensor, k: int) -> torch.Tensor:
        """uint8 B×H×W×3K -> float B×3K×H×W (channels_last) normalised per channel."""
        mean = self.mean.repeat(k)
        inv_std = self.inv_std.repeat(k)
        x = (x_uint8.float() - mean) * inv_std
        return x.permute(0, 3, 1, 2)

    def gather(self, idx: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
               flip: torch.Tensor) -> torch.Tensor:
        """Crop+flip gather. idx/dy/dx/flip: B×K. Returns uint8 B×H×W×3K."""
        b, k = idx.shape
        rows = dy[:, None, :] + self._arange_h[None, :, None]                   # B×H×K
        cols_fwd = self._arange_w[None, :, None]
        cols = torch.where(flip[:, None, :], self.w - 1 - cols_fwd, cols_fwd) + dx[:, None, :]
        out = self.padded[idx[:, None, None, :], rows[:, :, None, :], cols[:, None, :, :]]
        return out.reshape(b, self.h, self.w, 3 * k)                          # B×H×W×K×3 -> view

    def eval_batch(self, start: int, end: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-augmented images [start, end) for all K models (same image in every slot)."""
        p = self.augment.pad
        x = self.padded[start:end, p : p + self.h, p : p + self.w]
        return self.normalise(x.repeat(1, 1, 1, k), k), self.labels[start:end]


@dataclass(frozen=True)
class StreamSeeds:
    order: int
    augment: int


class BatchStream:
    """Batches for K models, each with its own index array, order seed and augmentation seed."""

    def __init__(self, data: DeviceData, indices: Sequence[np.ndarray], seeds: Sequence[StreamSeeds],
                 batch_size: int, augment: bool = True):
        assert len(indices) == len(seeds) and len(indices) >= 1
        self.data, self.batch_size, self.do_augment = data, batch_size, augment
        self.indices = [np.asarray(ix, dtype=np.int64) for ix in indices]
        self.seeds = list(seeds)
        self.k = len(indices)
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

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
        to = lambda a: torch.from_numpy(np.stack(a, 1)).to(self.data.device, non_blocking=True)
        return to(dys), to(dxs), to(flips)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x: B×3K×H×W float, y: B×K labels, idx: B×K dataset indices) for batch ``step``."""
        idx = torch.from_numpy(self.step_indices(step).T.copy()).to(self.data.device)
        dy, dx, flip = self.augment_params(step)
        x = self.data.normalise(self.data.gather(idx, dy, dx, flip), self.k)
        return x, self.data.labels[idx], idx

    def __iter__(self) -> Iterator:
        step = 0
        while True:
            yield self.batch(step)
            step += 1
