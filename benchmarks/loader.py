"""Loader throughput: lthfast ``BatchStream`` vs a stock ffcv ``Loader`` vs a torch ``DataLoader``.

All three deliver the same thing: batches of normalised float32 images with the CIFAR
augmentation (zero-pad 4, random 32×32 crop, random horizontal flip) and their labels, on the
training device, from one synthetic 50,000-image 32×32×3 set (arrays for lthfast and the
DataLoader, the ``train.beton`` written from the same pixels for ffcv). Measured on the full set
and on a 2,048-index subset (the data-diet case): steady-state images/s (median over repeats of
N batches, after warm-up) and, separately, the first epoch including setup — for ffcv that is
its numba compile, for the DataLoader its worker start, for lthfast the copy to the device.

ffcv and the DataLoader use ``workers`` processes/threads (default: the usable CPUs, 2 on the
2-core dev machine); lthfast uses none (its gather runs in torch's intra-op threads).
Without torchvision (the CPU torch wheel has none) the DataLoader's per-sample transforms are
hand-written tensor equivalents of ToTensor + RandomCrop(32, padding=4) + RandomHorizontalFlip +
Normalize, and the row says so.

    python -m benchmarks --only loader [--quick]
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .common import (DEFAULT_CACHE, Row, ffcv_available, open_synthetic, rerun, sync, timed,
                     torchvision_available, usable_cpus)

SECTION = "loader"
HAND_WRITTEN = ("DataLoader + per-sample transforms "
                "(torchvision unavailable: hand-written equivalents)")
TORCHVISION = "DataLoader + per-sample torchvision transforms"


@dataclass(frozen=True)
class LoaderConfig:
    train: int = 50_000
    size: int = 32
    batch: int = 512
    subset: int = 2048
    batches: int = 5  # timed batches per repeat
    warmup: int = 2
    repeats: int = 10
    workers: int = 0  # 0: the usable CPUs
    first_epoch: bool = True
    ffcv: bool = True
    dataloader: bool = True
    quick: bool = False

    @property
    def n_workers(self) -> int:
        return self.workers or usable_cpus()


class PerSampleDataset(torch.utils.data.Dataset):
    """The classic recipe: every example transformed on its own in a worker, then collated."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                 mean, std, pad: int, flip: bool, augment: bool = True):
        self.images, self.labels, self.indices = images, labels, np.asarray(indices)
        self.h, self.w = images.shape[1], images.shape[2]
        self.pad, self.flip, self.augment = pad, flip, augment
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) / 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) / 255.0
        self.tv = None
        if torchvision_available():
            import torchvision.transforms as T

            ops = [T.ToTensor()]
            if augment:
                ops += [T.RandomCrop((self.h, self.w), padding=pad)]
                ops += [T.RandomHorizontalFlip()] if flip else []
            ops += [T.Normalize(self.mean.flatten().tolist(), self.std.flatten().tolist())]
            self.tv = T.Compose(ops)

    @property
    def label(self) -> str:
        return TORCHVISION if self.tv is not None else HAND_WRITTEN

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        image = np.array(self.images[j])  # H×W×3 uint8 (a copy: the array is a read-only memmap)
        if self.tv is not None:
            return self.tv(image), int(self.labels[j])
        x = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)  # ToTensor
        if self.augment:
            p = self.pad
            if p:  # RandomCrop(size, padding=p): zero-pad, then a random crop of the original size
                x = F.pad(x, (p, p, p, p))
                top = int(torch.randint(0, 2 * p + 1, (1,)))
                left = int(torch.randint(0, 2 * p + 1, (1,)))
                x = x[:, top : top + self.h, left : left + self.w]
            if self.flip and float(torch.rand(1)) < 0.5:  # RandomHorizontalFlip
                x = x.flip(-1)
        x = (x - self.mean) / self.std  # Normalize
        return x.contiguous(), int(self.labels[j])


def make_dataloader(ds, indices: np.ndarray, batch: int, workers: int,
                    device: torch.device, augment: bool = True,
                    seed: int = 0) -> tuple[torch.utils.data.DataLoader, str]:
    data = PerSampleDataset(ds.train_images, ds.train_labels, indices, ds.meta["mean"],
                            ds.meta["std"], ds.augment.pad, ds.augment.flip, augment)
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
        persistent_workers=workers > 0, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed))
    return loader, data.label


def endless(loader) -> Iterator:
    """Batches of a loader epoch after epoch (each epoch a fresh iterator, as training does)."""
    while True:
        yield from loader


def to_device(batch, device: torch.device):
    x, y = batch[0], batch[1]
    if x.device != device:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return x, y


def _steady(next_batch, cfg: LoaderConfig, device: torch.device) -> list[float]:
    """images/s over ``cfg.batches`` batches, per repeat, after ``cfg.warmup`` batches."""
    for _ in range(cfg.warmup):
        next_batch()
    def consume():
        # One batch alive at a time, as in training. Keeping all N alive (a list) makes the
        # allocator hand their memory back to the OS and page-fault it in again each window,
        # which measures the VM rather than the loader (ffcv, which reuses buffers, is immune).
        for _ in range(cfg.batches):
            next_batch()

    out = []
    for _ in range(cfg.repeats):
        seconds = timed(consume, device)
        out.append(cfg.batch * cfg.batches / seconds)
    return out


def _subsets(ds, cfg: LoaderConfig) -> list[tuple[str, np.ndarray]]:
    n = ds.train_size
    rng = np.random.default_rng(0)
    subset = np.sort(rng.choice(n, size=min(cfg.subset, n), replace=False))
    return [(f"full set ({n:,} images)", np.arange(n)),
            (f"{len(subset):,}-index subset", subset)]


def bench_lthfast(ds, indices: np.ndarray, cfg: LoaderConfig, device: torch.device):
    from lthfast.data.loader import BatchStream, StreamSeeds
    from lthfast.data.loader import DeviceData

    def first_epoch():
        data = DeviceData.from_dataset(ds, "train", device)
        stream = BatchStream(data, [indices], [StreamSeeds(1, 2)], cfg.batch)
        for step in range(len(indices) // cfg.batch):
            stream.batch(step)
        return stream

    first = None
    if cfg.first_epoch:
        start = time.perf_counter()
        stream = first_epoch()
        sync(device)
        first = time.perf_counter() - start
    else:
        stream = BatchStream(DeviceData.from_dataset(ds, "train", device), [indices],
                             [StreamSeeds(1, 2)],
                             cfg.batch)
    steps = itertools.count(len(indices) // cfg.batch)
    return _steady(lambda: stream.batch(next(steps)), cfg, device), first


class _Epochs:
    """A stock ffcv Loader iterated epoch after epoch; ``close`` stops its background thread."""

    def __init__(self, loader):
        self.loader, self.iterator = loader, None

    def __call__(self):
        while True:
            if self.iterator is None:
                self.iterator = iter(self.loader)
            try:
                return next(self.iterator)
            except StopIteration:
                self.iterator = None

    def close(self):
        if self.iterator is not None:
            self.iterator.close()
            self.iterator = None


def bench_ffcv(ds, indices: np.ndarray, cfg: LoaderConfig, device: torch.device):
    from lthfast.data.ffcv_loader import make_loader

    threads = torch.get_num_threads()
    start = time.perf_counter()
    loader = make_loader(ds.path / "train.beton", ds.meta, cfg.batch, indices, seed=1,
                         device=device, augment=True, num_workers=cfg.n_workers)
    next_batch = _Epochs(loader)
    first = None
    if cfg.first_epoch:
        for _ in range(len(loader)):
            next_batch()
        sync(device)
        first = time.perf_counter() - start
    else:  # still compile before timing
        next_batch()
    try:
        values = _steady(next_batch, cfg, device)
    finally:
        next_batch.close()
        torch.set_num_threads(threads)  # ffcv sets torch's thread count to num_workers
    return values, first


def bench_dataloader(ds, indices: np.ndarray, cfg: LoaderConfig, device: torch.device):
    start = time.perf_counter()
    loader, label = make_dataloader(ds, indices, cfg.batch, cfg.n_workers, device)
    batches = endless(loader)
    first = None
    if cfg.first_epoch:
        for _ in range(len(loader)):
            to_device(next(batches), device)
        sync(device)
        first = time.perf_counter() - start
    values = _steady(lambda: to_device(next(batches), device), cfg, device)
    batches = loader = None  # stop the persistent workers (the timing closure is done)
    return values, first, label


def run(cfg: LoaderConfig = LoaderConfig(), device: Optional[torch.device] = None,
        cache=DEFAULT_CACHE, log=print) -> list[Row]:
    device = device or torch.device("cpu")
    ds = open_synthetic(cache, cfg.train, size=cfg.size, betons=cfg.ffcv)
    use_ffcv = cfg.ffcv and ffcv_available() and (ds.path / "train.beton").exists()
    command = rerun(SECTION, cfg.quick)
    workers = f"{cfg.n_workers} workers"
    cases = _subsets(ds, cfg)
    results: dict[tuple[str, str], tuple] = {}
    # DataLoaders first: they fork workers, and forking after ffcv has started numba's TBB
    # thread pool draws a (harmless, here) warning from numba.
    if cfg.dataloader:
        for case, indices in cases:
            log(f"[loader] {case}: torch DataLoader")
            values, first, label = bench_dataloader(ds, indices, cfg, device)
            results[case, "dataloader"] = (label, values, first, False, workers)
    for case, indices in cases:
        log(f"[loader] {case}: lthfast BatchStream")
        values, first = bench_lthfast(ds, indices, cfg, device)
        results[case, "lthfast"] = ("lthfast BatchStream", values, first, True,
                                    "no workers (torch intra-op threads)")
    for case, indices in cases:
        if use_ffcv:
            log(f"[loader] {case}: ffcv Loader")
            values, first = bench_ffcv(ds, indices, cfg, device)
            results[case, "ffcv"] = ("ffcv Loader (stock, same beton)", values, first, False,
                                     f"{workers} (numba threads); first epoch includes its "
                                     f"numba compile")
        elif cfg.ffcv:
            results[case, "ffcv"] = ("ffcv Loader", [], None, False,
                                     "not run: ffcv not installed or the dataset has no beton")

    rows: list[Row] = []
    for case, indices in cases:
        epoch_images = len(indices) // cfg.batch * cfg.batch
        firsts = []
        for kind in ("lthfast", "ffcv", "dataloader"):
            if (case, kind) not in results:
                continue
            variant, values, first, reference, note = results[case, kind]
            rows.append(Row(SECTION, f"{case}, steady state", variant, values,
                            reference=reference, note=note, command=command))
            if first is not None:
                firsts.append(Row(SECTION, f"{case}, first epoch incl. setup", variant,
                                  [epoch_images / first], reference=reference,
                                  note=f"{first:.1f} s for {epoch_images:,} images",
                                  command=command))
        rows.extend(firsts)
    return rows
