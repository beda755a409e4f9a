"""Files: atomic writes (honouring the umask), strict JSON, checksums, locks, environment facts.

Every write goes to a temporary file in the same directory and is moved into place with
``os.replace``, so a reader never sees half a file, even after ``kill -9``. Files get the mode a
plain ``open`` would give them (0644 under umask 022), so colleagues on a shared cluster can read
each other's results. Where runs live is ``lthfast.runs``'s business, not this module's.

    python -c "from lthfast.files import atomic_write_json; atomic_write_json('/tmp/x.json', {})"
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import UserError


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def config_hash(obj: dict) -> str:
    """Short, stable identity of a config: sha256 of its canonical JSON."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:12]


@contextlib.contextmanager
def _writable(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"disk full while writing {path}") from exc
        if exc.errno is not None:  # unwritable, read-only, a file where a folder should be, ...
            raise UserError(f"cannot write {path}: "
                            f"{exc.strerror or os.strerror(exc.errno)}") from exc
        raise


def _file_mode() -> int:
    """0666 less the process umask: what ``open(path, "w")`` would create (mkstemp gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    from . import faults

    path = Path(path)
    with _writable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, _file_mode())
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            faults.point("replace", path=str(path))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return path


def json_safe(obj: Any) -> Any:
    """Non-finite floats become null: NaN/Infinity are not JSON (RFC 8259), and a diverged run's
    losses are exactly that. Strict readers (JavaScript, serde, jq) then still read our files."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def natural_order(obj: Any) -> Any:
    """Dicts with their keys sorted, numbers as numbers: replicate "2" before "10"."""
    if isinstance(obj, dict):
        key = lambda k: (0, int(k), "") if str(k).isdigit() else (1, 0, str(k))  # noqa: E731
        return {k: natural_order(obj[k]) for k in sorted(obj, key=key)}
    if isinstance(obj, list):
        return [natural_order(v) for v in obj]
    return obj


def to_json(obj: Any, indent: int | None = None) -> str:
    """Results JSON: keys in natural order (replicates 2 before 10), no NaN."""
    return json.dumps(natural_order(json_safe(obj)), indent=indent, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, (to_json(obj, indent=2) + "\n").encode())


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"missing file {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"corrupt JSON file {path}") from None


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def environment() -> dict:
    """Versions, device and git SHA: written as env.json beside every config.json."""
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(Exception):
        env["git_sha"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5).stdout.strip() or None
    return env


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path/.lock``; a second process waits until the first is done.

    Waiting (not skipping) means both processes end up reporting the same finished results: the
    second one finds every stage done and only reads them. A waiting process says so on stderr,
    naming the holder (its pid, written into the lock file while it holds the lock).
    """
    with _writable(path):
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            print(f"waiting for process {holder}, which is working on {path}", file=sys.stderr,
                  flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        with _writable(path / ".lock"):  # the pid needs a block: ENOSPC on an exactly full disk
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
