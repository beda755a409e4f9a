"""Checkpoints: written atomically with a sha256 sidecar, read back with ``weights_only=True``.

The sidecar (``<file>.sha256``) is written after the checkpoint itself, so a checkpoint without a
matching sidecar is either half-written or tampered with: ``load`` refuses it; ``load_resumable``
(periodic training checkpoints) drops it and the stage starts over.

    python -c "from lthfast.train.checkpoint import save, load; \\
               save('/tmp/c.pt', {'a': 1}); print(load('/tmp/c.pt'))"
"""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import UserError
from ..files import atomic_write_bytes


def save(path: str | Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    path = Path(path)
    atomic_write_bytes(path, data)
    atomic_write_bytes(_sidecar(path),
                       hashlib.sha256(data).hexdigest().encode())


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _verified(path: Path) -> Optional[bytes]:
    """The checkpoint's bytes if they match the sidecar, None if they do not; raises if absent."""
    try:
        data = path.read_bytes()
        expected = _sidecar(path).read_text().strip()
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} is incomplete (missing file or checksum)") from None
    return data if hashlib.sha256(data).hexdigest() == expected else None


def _unpickle(path: Path, data: bytes, map_location) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors have many types; all mean "not a safe checkpoint"
        raise UserError(f"checkpoint {path} refused: {str(exc).splitlines()[0]}") from None


def load(path: str | Path, map_location: Optional[str | torch.device] = "cpu") -> Any:
    path = Path(path)
    data = _verified(path)
    if data is None:
        raise UserError(f"checkpoint {path} fails its checksum (corrupt or tampered); delete it "
                        "to restart that stage")
    return _unpickle(path, data, map_location)


def load_resumable(path: str | Path, map_location: Optional[str | torch.device] = "cpu") -> Any:
    """A periodic training checkpoint, or None when there is none to resume from.

    A checkpoint whose sidecar does not match is what ``kill -9`` between the two replaces of
    ``save`` leaves behind: the stage restarts from its beginning (the same seeds give the same
    result) rather than asking the user to delete files. One that verifies but will not load
    safely is still refused.
    """
    path = Path(path)
    if not exists(path):
        return None
    data = _verified(path)
    if data is None:
        print(f"warning: {path} was cut off mid-write; restarting that stage", file=sys.stderr)
        remove(path)
        return None
    return _unpickle(path, data, map_location)


def exists(path: str | Path) -> bool:
    path = Path(path)
    return path.exists() and _sidecar(path).exists()


def remove(path: str | Path) -> None:
    path = Path(path)
    for p in (path, _sidecar(path)):
        p.unlink(missing_ok=True)
