"""Checkpoints: written atomically with a sha256 sidecar, read back with ``weights_only=True``.

The sidecar (``<file>.sha256``) is written after the checkpoint itself, so a checkpoint without a
matching sidecar is either half-written or tampered with, and is refused either way.

    python -c "from lthfast.train.checkpoint import save, load; save('/tmp/c.pt', {'a': 1}); print(load('/tmp/c.pt'))"
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import UserError
from ..store import atomic_write_bytes


def save(path: str | Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    path = Path(path)
    atomic_write_bytes(path, data)
    atomic_write_bytes(path.with_name(path.name + ".sha256"),
                       hashlib.sha256(data).hexdigest().encode())


def load(path: str | Path, map_location: Optional[str | torch.device] = "cpu") -> Any:
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    try:
        data = path.read_bytes()
        expected = sidecar.read_text().strip()
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} is incomplete (missing file or checksum)") from None
    if hashlib.sha256(data).hexdigest() != expected:
        raise UserError(f"checkpoint {path} fails its checksum (corrupt or tampered); delete it "
                        "to restart that stage")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors have many types; all mean "not a safe checkpoint"
        raise UserError(f"checkpoint {path} refused: {str(exc).splitlines()[0]}") from None


def exists(path: str | Path) -> bool:
    path = Path(path)
    return path.exists() and path.with_name(path.name + ".sha256").exists()


def remove(path: str | Path) -> None:
    path = Path(path)
    for p in (path, path.with_name(path.name + ".sha256")):
        p.unlink(missing_ok=True)
