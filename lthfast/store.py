"""Run directories keyed by config hash, atomic writes, finished-stage markers and file locks.

Every write goes to a temporary file in the same directory and is moved into place with
``os.replace``, so a reader never sees half a file, even after ``kill -9``. A stage is finished
exactly when its ``done.json`` exists; it is written last.

    python -c "from lthfast.store import atomic_write_json; atomic_write_json('/tmp/x.json', {})"
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
            raise UserError(f"cannot write {path}: {exc.strerror or os.strerror(exc.errno)}") from exc
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    with _writable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
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


def to_json(obj: Any, indent: int | None = None) -> str:
    return json.dumps(json_safe(obj), indent=indent, sort_keys=True, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, (to_json(obj, indent=2) + "\n").encode())


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one metrics line; a torn last line from a kill is skipped by ``read_jsonl``."""
    path = Path(path)
    with _writable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(to_json(record) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    records = []
    if not Path(path).exists():
        return records
    for line in Path(path).read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


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


def prepare_run_dir(path: Path, config: dict) -> Path:
    """Create a run directory with config.json and env.json; refuse a hash collision."""
    cfg_path = path / "config.json"
    if cfg_path.exists():
        if read_json(cfg_path) != json.loads(canonical_json(config)):
            raise UserError(f"{path} holds a different config; refusing to mix runs")
    else:
        atomic_write_json(cfg_path, config)
        atomic_write_json(path / "env.json", environment())
    return path


def is_done(stage_dir: Path) -> bool:
    return (stage_dir / "done.json").exists()


def mark_done(stage_dir: Path, info: dict | None = None) -> None:
    atomic_write_json(stage_dir / "done.json", info or {})


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path/.lock``; a second process waits until the first is done.

    Waiting (not skipping) means both processes end up reporting the same finished results: the
    second one finds every stage done and only reads them.
    """
    with _writable(path):
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
