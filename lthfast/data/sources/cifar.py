"""`cifar10` and `cifar100`: the official "python version" archives from the University of Toronto.

``--source`` may be the official ``.tar.gz``, its extracted folder (``cifar-10-batches-py/`` or
``cifar-100-python/``) or that folder's parent; without it the archive is downloaded (MD5-checked)
into ``<root>/_downloads/``. The archive is read in place, never extracted. Each batch file is a
pickled dict with bytes keys: ``b"data"`` is N×3072 uint8, one image per row as three 32×32
planes (R, G, B), and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100) its classes.

Pickle is the official format, so pass only official archives. As a safeguard the unpickler
accepts nothing but the numpy array constructors these files need: a crafted file that tries to
call anything else is refused as corrupt instead of running code.

    lthfast build-beton cifar10 --source ~/data/cifar-10-python.tar.gz   # -> datasets/cifar10
"""

from __future__ import annotations

import io
import pickle
import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ...errors import UserError
from ..download import fetch
from . import AugmentSpec, RawDataset, RawSplit, register_source


@dataclass(frozen=True)
class CifarLayout:
    name: str
    folder: str  # the one top-level folder inside the official archive
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    url: str
    md5: str

    @property
    def archive(self) -> str:
        return posixpath.basename(self.url)

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)


# Looked up at call time (not bound into the loaders), so tests can point them at local files.
LAYOUTS = {
    "cifar10": CifarLayout(
        "cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",), "batches.meta", b"labels", b"label_names", 10,
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a"),
    "cifar100": CifarLayout(
        "cifar100", "cifar-100-python", ("train",), ("test",), "meta", b"fine_labels",
        b"fine_label_names", 100,
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85"),
}

# What a pickled numpy array needs: the official files name numpy.core, files re-pickled with
# numpy >= 2 numpy._core. _codecs.encode is how Python 3 writes bytes at protocol 2 (a copy
# re-saved that way still loads); it only encodes a string, so it cannot run code either.
_ALLOWED_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


# The largest file of either official archive is CIFAR-100's train pickle (~155 MB); a member
# declaring more is refused before it is read, so a small archive cannot make us hold gigabytes.
MAX_MEMBER_BYTES = 256 * 2**20


def _read_archive(path: Path, layout: CifarLayout) -> dict[str, bytes]:
    """The needed files' bytes, read in one pass over the (gzip-compressed) tar."""
    wanted = {f"{layout.folder}/{name}": name for name in layout.files}
    blobs = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = wanted.get(posixpath.normpath(member.name))
                if name and member.isfile():
                    if member.size > MAX_MEMBER_BYTES:
                        raise UserError(f"{path}: {member.name} is {member.size:,} bytes, more "
                                        f"than any file of the official {layout.archive}")
                    blobs[name] = tar.extractfile(member).read()
    # EOFError/zlib.error: truncated or damaged gzip, which tarfile does not wrap.
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise UserError(f"corrupt CIFAR archive {path}: {exc}") from None
    missing = [n for n in layout.files if n not in blobs]
    if missing:
        raise UserError(f"{path} is not the {layout.name} archive: no {layout.folder}/{missing[0]}")
    return blobs


def _read_folder(path: Path, layout: CifarLayout) -> dict[str, bytes]:
    """Accept the extracted folder itself or the folder it was extracted into."""
    for folder in (path / layout.folder, path):
        if (folder / layout.meta_file).is_file():
            missing = [n for n in layout.files if not (folder / n).is_file()]
            if missing:
                raise UserError(f"incomplete {layout.name} folder {folder}: no {missing[0]}")
            return {name: (folder / name).read_bytes() for name in layout.files}
    raise UserError(f"{path} holds neither {layout.folder}/ nor {layout.meta_file}; pass the "
                    f"official {layout.archive} or its extracted folder")


def _unpickle(blob: bytes, what: str) -> dict:
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(blob), encoding="bytes").load()
    # A damaged pickle can fail with almost any exception type (EOFError, ValueError, KeyError...).
    except Exception as exc:
        raise UserError(f"corrupt CIFAR file {what}: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise UserError(f"corrupt CIFAR file {what}: not a dict")
    return obj


def _split(blobs: dict[str, bytes], names: tuple[str, ...], layout: CifarLayout) -> RawSplit:
    images, labels = [], []
    for name in names:
        batch = _unpickle(blobs[name], name)
        try:
            data = np.asarray(batch[b"data"])
            lab = np.asarray(batch[layout.label_key], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"corrupt CIFAR file {name}: bad or missing {exc}") from None
        if data.dtype != np.uint8 or data.shape[1:] != (3072,) or lab.shape != data.shape[:1]:
            raise UserError(f"corrupt CIFAR file {name}: data {data.dtype} {data.shape}, "
                            f"{lab.size} labels")
        if lab.size and (lab.min() < 0 or lab.max() >= layout.num_classes):
            raise UserError(f"corrupt CIFAR file {name}: label outside 0..{layout.num_classes - 1}")
        # Row = R plane, G plane, B plane, each 32×32 row-major -> N×3×32×32 -> N×32×32×3.
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    return RawSplit(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))


def load_cifar(layout: CifarLayout, source: Optional[str], root: Path) -> RawDataset:
    if source is None:
        path = fetch(layout.url, Path(root) / "_downloads" / layout.archive, layout.md5)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(f"{layout.name} source {path} does not exist")
    blobs = _read_folder(path, layout) if path.is_dir() else _read_archive(path, layout)
    meta = _unpickle(blobs[layout.meta_file], layout.meta_file)
    names = meta.get(layout.names_key)
    if not isinstance(names, list) or len(names) != layout.num_classes:
        raise UserError(f"corrupt CIFAR file {layout.meta_file}: expected {layout.num_classes} "
                        f"class names under {layout.names_key.decode()}")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return RawDataset(
        name=layout.name,
        classes=classes,
        train=_split(blobs, layout.train_files, layout),
        test=_split(blobs, layout.test_files, layout),
        augment=AugmentSpec(pad=4, flip=True),
    )


@register_source("cifar10")
def load_cifar10(source: Optional[str], root: Path) -> RawDataset:
    return load_cifar(LAYOUTS["cifar10"], source, root)


@register_source("cifar100")
def load_cifar100(source: Optional[str], root: Path) -> RawDataset:
    return load_cifar(LAYOUTS["cifar100"], source, root)
