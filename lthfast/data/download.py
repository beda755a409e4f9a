"""Download official dataset archives with an MD5 check, and unpack tar archives safely.

``fetch`` streams a URL into a temporary file beside the destination, checks its MD5 and only then
moves it into place, so a half-finished or tampered download is never mistaken for a good one; a
destination that already has the right MD5 is reused without touching the network.
``safe_extract_tar`` refuses members that would land outside the target folder.

    python -c "from pathlib import Path; from lthfast.data.download import fetch; \
fetch('https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz', \
Path('datasets/_downloads/cifar-10-python.tar.gz'), 'c58f30108f718f92721af3b95e74349a')"
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import posixpath
import sys
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import Iterator

from ..errors import UserError

CHUNK = 1 << 20
TIMEOUT_S = 60
# tarfile.FilterError exists only where filter="data" does; () makes its except clause a no-op.
_FILTER_ERRORS = getattr(tarfile, "FilterError", ())


def file_md5(path: str | os.PathLike) -> str:
    # usedforsecurity=False: MD5 is only an integrity check here; FIPS builds refuse it otherwise.
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def new_folder(path: Path) -> Iterator[Path]:
    """Create ``path`` (with parents); if the block fails, remove the folders made here if empty.

    A failed download or extraction then leaves the data root as it found it.
    """
    path = Path(path)
    created = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def fetch(url: str, dest: Path, md5: str) -> Path:
    """Download ``url`` to ``dest`` unless it is already there with MD5 ``md5``; return ``dest``."""
    dest = Path(dest)
    if dest.is_file() and file_md5(dest) == md5:
        return dest
    hint = "pass --source PATH to a local copy"
    with new_folder(dest.parent):
        _download(url, dest, md5, hint)
    return dest


def _download(url: str, dest: Path, md5: str, hint: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        h = hashlib.md5(usedforsecurity=False)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
                # Announced only once connected, so a failure stays a one-line error.
                size = int(resp.headers.get("Content-Length") or 0) >> 20
                print(f"downloading {url} ({size} MB) -> {dest}", file=sys.stderr, flush=True)
                for chunk in iter(lambda: resp.read(CHUNK), b""):
                    h.update(chunk)
                    out.write(chunk)
        # OSError covers URLError, timeouts and resets; HTTPException a truncated response;
        # ValueError a malformed URL.
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise UserError(f"could not download {url}: {reason}; {hint}") from None
        if h.hexdigest() != md5:
            raise UserError(f"checksum mismatch for {url}: md5 {h.hexdigest()}, expected {md5}; "
                            f"{hint}")
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    """Why extracting ``member`` could write outside the target folder, or None if it cannot.

    Names and link targets must be relative and free of ``..``. Forbidding ``..`` outright (rather
    than checking that it stays inside lexically) is what makes the rule sound: ``a -> .`` followed
    by ``b -> a/..`` looks inside on paper but resolves to the parent. With ``..`` gone, every link
    points to ``dest/<downward path>``, so by induction no path through links can leave ``dest``.
    """
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return "is a device, fifo or other special file"
    paths = [("name", member.name)]
    if member.issym() or member.islnk():
        paths.append(("link target", member.linkname))
    for what, path in paths:
        if posixpath.isabs(path):
            return f"has an absolute {what} '{path}'"
        if ".." in path.split("/"):
            return f"has a {what} with '..': '{path}'"
    return None


def safe_extract_tar(archive: Path, dest: Path) -> Path:
    """Extract a (possibly compressed) tar into ``dest``; refuse it whole if a member could escape.

    Every member is checked before anything is written, so a refused archive leaves ``dest`` as it
    was. Where Python's ``filter="data"`` exists (3.10.12+, 3.11.4+) it runs as a second line of
    defence and also drops setuid bits and other unsafe metadata.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                reason = _unsafe_reason(member)
                if reason:
                    raise UserError(f"unsafe archive {archive}: member '{member.name}' {reason}")
            dest.mkdir(parents=True, exist_ok=True)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # older Python: our own checks above are the whole defence
                tar.extractall(dest, members=members)
    except _FILTER_ERRORS as exc:  # filter="data" refused something our own checks let through
        raise UserError(f"unsafe archive {archive}: {exc}") from None
    except tarfile.TarError as exc:
        raise UserError(f"corrupt archive {archive}: {exc}") from None
    except (EOFError, zlib.error) as exc:  # truncated or damaged gzip/bz2/xz stream
        raise UserError(f"corrupt archive {archive}: {exc}") from None
    except OSError as exc:  # missing archive, bad gzip header, or a full disk while extracting
        raise UserError(f"could not extract {archive}: {exc}") from None
    return dest
