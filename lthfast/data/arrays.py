"""Read a built dataset directory: meta.json, checksum-verified, memory-mapped arrays.

    python -c "from lthfast.data.arrays import open_dataset; \\
               print(open_dataset('datasets', 'digits'))"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import file_sha256, read_json
from .sources import AugmentSpec


@dataclass(frozen=True)
class DatasetArrays:
    """One built dataset: meta plus memory-mapped uint8 images and int64 labels."""

    name: str
    path: Path
    meta: dict
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def train_size(self) -> int:
        return int(self.meta["train_size"])

    @property
    def augment(self) -> AugmentSpec:
        return AugmentSpec(**self.meta["augment"])

    def __repr__(self) -> str:
        return (f"DatasetArrays({self.name}: train {self.train_images.shape}, "
                f"test {self.test_images.shape}, {self.num_classes} classes)")


def dataset_dir(root: str | Path, name: str) -> Path:
    path = Path(root) / name
    if not (path / "meta.json").exists():
        raise UserError(f"dataset '{name}' is not built under {root} "
                        f"(run: lthfast build-beton {name} --root {root})")
    return path


def load_npy(path: Path, expected_sha: str | None, verify: bool) -> np.ndarray:
    if not path.exists():
        raise UserError(f"missing file {path}")
    if verify and expected_sha is not None and file_sha256(path) != expected_sha:
        raise UserError(f"corrupt file {path} (checksum mismatch); rebuild with --force")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"corrupt file {path}: {exc}") from None


def open_dataset(root: str | Path, name: str, verify: bool = True) -> DatasetArrays:
    path = dataset_dir(root, name)
    meta = read_json(path / "meta.json")
    files = meta.get("files", {})
    arrays = {f"{split}_{kind}": load_npy(path / f"{split}_{kind}.npy",
                                          files.get(f"{split}_{kind}.npy"), verify)
              for split in ("train", "test") for kind in ("images", "labels")}
    return DatasetArrays(name=name, path=path, meta=meta, **arrays)
