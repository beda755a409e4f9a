"""Convert a dataset once: uint8 arrays (.npy), FFCV betons, and meta.json with checksums.

Output in ``<root>/<name>/``: ``{train,test}_{images,labels}.npy`` (memory-mappable; the fast
loader reads these), ``{train,test}.beton`` (raw RGB + int label, readable by a stock ffcv
``Loader``; written by ``build-beton`` when ffcv is installed, and for a dataset built on first
use only when ``--loader ffcv`` first reads them: see ``ensure_betons``), ``subsets/`` and
``meta.json``. meta.json holds the
classes, sizes, image shape, per-channel train mean/std (the paper normalises by train-set
statistics), the augmentation spec, and a sha256 of every file, so corruption is caught at load.
meta.json is written last: a dataset directory without it is unfinished and is rebuilt.

    lthfast build-beton digits        # prints datasets/digits
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import UserError
from ..files import atomic_save_npy, atomic_write_json, file_sha256, locked, read_json
from .sources import RawDataset, get_source, split_name

META_VERSION = 1


def ffcv_available() -> bool:
    import torch

    # Importing ffcv sets torch to one intra-op thread and leaves it so: the training that
    # follows in this process (e.g. the first run, which builds digits) would run at half
    # speed and with other reduction orders than the next run, so not bit-identical to it.
    threads = torch.get_num_threads()
    try:
        import ffcv  # noqa: F401
    except Exception:  # ffcv's import can fail in many ways (numba, opencv); all mean "absent"
        return False
    finally:
        torch.set_num_threads(threads)
    return True


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in 0..255 units, accumulated in float64 chunks (CINIC is 550 MB)."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for s in range(0, len(images), 8192):
        chunk = images[s : s + 8192].reshape(-1, 3).astype(np.float64)
        total += chunk.sum(0)
        total_sq += (chunk**2).sum(0)
    n = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


class _SplitOnDisk:
    """A split's saved arrays as ffcv's writer reads them: by index, memory-mapped on first use.
    Module-level and holding only paths, so it pickles cheaply into the writer's worker under
    any start method (a spawned process, e.g. a benchmark's, spawns its children too)."""

    def __init__(self, images: Path, labels: Path):
        self.paths = (images, labels)
        self.arrays = None

    def __len__(self):
        return len(np.load(self.paths[1], mmap_mode="r"))

    def __getitem__(self, i):
        if self.arrays is None:
            self.arrays = [np.load(p, mmap_mode="r") for p in self.paths]
        return np.asarray(self.arrays[0][i]), int(self.arrays[1][i])

    def __getstate__(self):
        return {"paths": self.paths, "arrays": None}


def write_beton(path: Path, images: Path, labels: Path) -> None:
    """``path`` from a split's saved ``images``/``labels`` arrays."""
    import torch
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    tmp = path.with_name(f".{path.name}.tmp")
    # write_mode="raw": lossless, so beton and arrays hold the same pixels and loaders compare
    # fairly
    writer = DatasetWriter(str(tmp), {"image": RGBImageField(write_mode="raw"),
                                      "label": IntField()}, num_workers=1)
    threads = torch.get_num_threads()  # see ffcv_available: keep torch's threads as they were
    try:
        writer.from_indexed_dataset(_SplitOnDisk(images, labels))
    finally:
        torch.set_num_threads(threads)
    os.replace(tmp, path)


def canonical_name(name: str) -> str:
    """A dataset name as its directory is called: a synthetic variant's options sorted, defaults
    left out (``synthetic:size=8,noise=120`` -> ``synthetic:noise=120,size=8``)."""
    from .sources.synthetic import variant_name

    kind, options = split_name(name)
    if options is None:
        return name
    get_source(kind)
    if kind != "synthetic":
        raise UserError(f"dataset '{kind}' takes no options in its name (got '{name}')")
    return variant_name(options)


def build_dataset(name: str, root: Path, source: Optional[str] = None, force: bool = False,
                  betons: bool = True) -> Path:
    """Build ``root/name`` from its source unless it is already complete; returns the directory.
    A variant's name carries its options (``synthetic:train=2000``): built in its own
    directory under its canonical name."""
    load = get_source(name)  # unknown names fail before anything is written
    if split_name(name)[1] is not None:
        if source is not None:
            raise UserError(f"{name}: give the options in the name or in --source, not both")
        source, name = split_name(name)[1], canonical_name(name)
        if name == "synthetic":  # the default options: the plain name, built from its default
            source = None
    out = Path(root) / name
    if (out / "meta.json").exists() and not force:
        built_from = read_json(out / "meta.json").get("source")
        if source is not None and source != built_from:  # it would be ignored: say so
            raise UserError(f"{name} is already built in {out} from {built_from or 'its default'}"
                            f"; add --force to rebuild it from {source}")
        if betons and ffcv_available():  # built on first use, arrays only: add what was asked
            ensure_betons(out)
        return out
    created = not out.exists()
    try:
        with locked(out):
            if (out / "meta.json").exists() and not force:  # built by a concurrent process
                return out
            raw = dataclasses.replace(load(source, Path(root)), name=name)
            write_dataset(raw, out, betons=betons and ffcv_available(), source=source)
    except BaseException:
        if created and not (out / "meta.json").exists():  # leave no lock or half a dataset
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def ensure_betons(path: Path) -> None:
    """Write a built dataset's missing betons from its checksummed arrays; meta.json gains them.

    A dataset built on first use (``digits``, synthetic variants) has arrays only: only
    ``--loader ffcv`` reads betons, and importing ffcv costs seconds of numba compiling, so a
    first ``imp`` should not pay for them. The bytes equal what a full build writes."""
    from .arrays import open_dataset

    parts = [p for p in ("train", "test") if not (path / f"{p}.beton").exists()]
    if not parts:
        return
    with locked(path):
        ds = open_dataset(path.parent, path.name)  # checksums verified: betons from sound arrays
        files = dict(ds.meta.get("files", {}))
        for part in parts:
            beton = path / f"{part}.beton"
            if beton.exists():  # written by a concurrent process while we waited
                continue
            print(f"writing {beton} for --loader ffcv (once)", file=sys.stderr, flush=True)
            write_beton(beton, path / f"{part}_images.npy", path / f"{part}_labels.npy")
            files[beton.name] = file_sha256(beton)
        atomic_write_json(path / "meta.json", {**read_json(path / "meta.json"), "files": files})


def write_dataset(raw: RawDataset, out: Path, betons: bool, source: Optional[str] = None) -> None:
    if len(raw.train.labels) == 0 or len(raw.test.labels) == 0:
        raise UserError(f"dataset {raw.name} has an empty split")
    files = {}
    (out / "subsets").mkdir(parents=True, exist_ok=True)  # where index arrays and noisy labels go
    for part, split in (("train", raw.train), ("test", raw.test)):
        for kind, array in (("images", split.images), ("labels", split.labels.astype(np.int64))):
            path = atomic_save_npy(out / f"{part}_{kind}.npy", array)
            files[path.name] = file_sha256(path)
        if betons:
            write_beton(out / f"{part}.beton", out / f"{part}_images.npy",
                        out / f"{part}_labels.npy")
            files[f"{part}.beton"] = file_sha256(out / f"{part}.beton")
    mean, std = channel_stats(raw.train.images)
    counts = np.bincount(raw.train.labels, minlength=len(raw.classes))
    atomic_write_json(out / "meta.json", {
        "version": META_VERSION,
        "name": raw.name,
        "classes": list(raw.classes),
        "num_classes": len(raw.classes),
        "train_size": int(len(raw.train.labels)),
        "test_size": int(len(raw.test.labels)),
        "image_shape": list(raw.train.images.shape[1:]),
        "train_class_counts": counts.tolist(),
        "mean": mean,
        "std": std,
        "augment": dataclasses.asdict(raw.augment),
        "files": files,
        "source": source,  # what it was built from (None: the default download or bundle)
    })
