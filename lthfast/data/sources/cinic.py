"""`cinic10`: CINIC-10 (Darlow et al., 2018), 270,000 32×32 PNGs from CIFAR-10 and ImageNet.

The official layout is ``train/``, ``valid/`` and ``test/``, each with one folder per class
holding PNGs (the ImageNet ones are sometimes grayscale; they are converted to RGB). As in the
paper, train = train + valid (180,000 images) and test = test (90,000). Classes, and files within
a class, are taken in sorted order so the arrays are the same on every machine.

``--source`` may be that folder (or a folder holding it) or the official ``CINIC-10.tar.gz``,
which is extracted safely into ``<root>/_downloads/cinic10/<md5 prefix>/``; without it the archive
is downloaded (MD5-checked) first. Decoding needs Pillow and uses a process pool for the full set.

    lthfast build-beton cinic10 --source ~/data/CINIC-10.tar.gz   # -> datasets/cinic10
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from ...errors import UserError
from ..download import fetch, file_md5, new_folder, safe_extract_tar
from . import AugmentSpec, RawDataset, RawSplit, register_source

URL = "https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz"
MD5 = "6ee4d0c996905fe93221de577967a372"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")  # already sorted, so sorted folder order and label order agree
SPLITS = ("train", "valid", "test")
SIZE = 32
CHUNK = 1000  # images per pool task: large enough that pickling results is cheap
POOL_MIN_IMAGES = 20_000  # below this, starting worker processes costs more than it saves


def decode_pngs(paths: list[str]) -> np.ndarray:
    """Decode PNGs into an N×32×32×3 uint8 array (a pool task; must stay importable)."""
    from PIL import Image

    out = np.empty((len(paths), SIZE, SIZE, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                rgb = im.convert("RGB")  # lazy open: decoding happens here, errors included
        # PIL reports damaged files as OSError (incl. UnidentifiedImageError), SyntaxError or
        # ValueError depending on where the damage is.
        except (OSError, SyntaxError, ValueError) as exc:
            raise UserError(f"corrupt CINIC-10 image {path}: {exc}") from None
        if rgb.size != (SIZE, SIZE):
            raise UserError(f"CINIC-10 image {path} is {rgb.size[0]}×{rgb.size[1]}, not 32×32")
        out[i] = np.asarray(rgb)
    return out


def decode_all(paths: list[str], workers: Optional[int] = None) -> np.ndarray:
    images = np.empty((len(paths), SIZE, SIZE, 3), dtype=np.uint8)
    chunks = [paths[s : s + CHUNK] for s in range(0, len(paths), CHUNK)]
    workers = workers or min(os.cpu_count() or 1, 16)
    if len(paths) < POOL_MIN_IMAGES or workers < 2:
        results = map(decode_pngs, chunks)
        pool = None
    else:
        # spawn, not fork: the caller may hold torch threads, which fork does not copy safely.
        pool = multiprocessing.get_context("spawn").Pool(workers)
        results = pool.imap(decode_pngs, chunks)  # ordered, and only a few chunks in flight
    try:
        for s, block in zip(range(0, len(paths), CHUNK), results):
            images[s : s + len(block)] = block
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return images


def find_tree(path: Path) -> Path:
    """The folder holding train/, valid/ and test/: ``path`` itself or one of its subfolders."""
    candidates = [path, *sorted(p for p in path.iterdir() if p.is_dir())]
    for folder in candidates:
        if all((folder / split).is_dir() for split in SPLITS):
            return folder
    raise UserError(f"{path} is not a CINIC-10 folder: expected train/, valid/ and test/ in it "
                    f"or in one of its subfolders")


def list_split(tree: Path, split: str) -> tuple[list[str], np.ndarray]:
    """Sorted PNG paths of one split and their labels."""
    folder = tree / split
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if found != list(CLASSES):
        raise UserError(f"{folder} has class folders {found}, expected {list(CLASSES)}")
    paths, labels = [], []
    for label, name in enumerate(CLASSES):
        # scandir: file type comes with the listing, so 270k files need no extra stat calls
        with os.scandir(folder / name) as entries:
            files = sorted(e.path for e in entries
                           if e.is_file() and e.name.lower().endswith(".png"))
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise UserError(f"{folder} holds no PNG images")
    return paths, np.asarray(labels, dtype=np.int64)


def extract_once(archive: Path, root: Path, md5: str) -> Path:
    """Extract ``archive`` under a folder named by its MD5, so a different archive never reuses it.

    Extraction goes to a temporary folder that is renamed into place when complete: an existing
    folder is always a whole extraction, even after an interrupted run.
    """
    dest = Path(root) / "_downloads" / "cinic10" / md5[:12]
    if not dest.is_dir():
        with new_folder(dest.parent):
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".extract-"))
            try:
                safe_extract_tar(archive, tmp)
                os.replace(tmp, dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return dest


@register_source("cinic10")
def load_cinic10(source: Optional[str], root: Path) -> RawDataset:
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise UserError("cinic10 needs Pillow to decode PNGs: pip install pillow") from None
    if source is None:
        archive = fetch(URL, Path(root) / "_downloads" / "CINIC-10.tar.gz", MD5)
        folder = extract_once(archive, root, MD5)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(f"cinic10 source {path} does not exist")
        folder = path if path.is_dir() else extract_once(path, root, file_md5(path))
    tree = find_tree(folder)
    train_paths, train_labels = list_split(tree, "train")
    valid_paths, valid_labels = list_split(tree, "valid")
    test_paths, test_labels = list_split(tree, "test")
    return RawDataset(
        name="cinic10",
        classes=CLASSES,
        train=RawSplit(decode_all(train_paths + valid_paths),
                       np.concatenate([train_labels, valid_labels])),
        test=RawSplit(decode_all(test_paths), test_labels),
        augment=AugmentSpec(pad=4, flip=True),
    )
