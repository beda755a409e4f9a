"""Disk full or an unwritable target: the old file survives, one error line, exit 2.

    python -m pytest -q tests/test_disk.py
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from lthfast.errors import UserError
from reliability import IMP_ARGS, snapshot


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_disk_full_keeps_the_old_file(tmp_path, monkeypatch, failing):
    import lthfast.files as store

    path = tmp_path / "results.json"
    store.atomic_write_json(path, {"old": True})
    before = snapshot(tmp_path)
    monkeypatch.setattr(store.os, failing, _enospc)
    with pytest.raises(UserError, match="disk full"):
        store.atomic_write_json(path, {"new": True})
    monkeypatch.undo()
    assert snapshot(tmp_path) == before  # old content, no temporary file left behind
    assert json.loads(path.read_text()) == {"old": True}


def test_disk_full_in_the_cli_is_one_error_line_and_results_survive(tmp_path, monkeypatch,
                                                                    capsys, digits_root,
                                                                    imp_reference):
    """A rerun of a finished IMP run rewrites results.json; with the disk full that must be
    ``error: disk full ...`` with exit 2, and the old results.json must survive intact."""
    import lthfast.cli as cli_module
    import lthfast.files as store

    out = tmp_path / "out"
    shutil.copytree(imp_reference["out"], out)
    before = snapshot(out)
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        if Path(dst).is_relative_to(out):
            _enospc()
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(store.os, "replace", replace)
    args = [a for a in IMP_ARGS if a != "--deterministic"]  # keep this process's torch flags
    monkeypatch.setattr(sys, "argv", ["lthfast", *args, "--root", str(digits_root),
                                      "--out", str(out), "--device", "cpu"])
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main()
    monkeypatch.undo()
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: disk full"), err
    assert "results.json" in err[0]
    assert snapshot(out) == before


def test_disk_full_at_the_lock_files_pid_is_one_line(tmp_path, monkeypatch):
    # an exactly full disk: the lock file is created (an inode), its pid finds no block
    import lthfast.files as store

    monkeypatch.setattr(store.os, "pwrite", _enospc)
    with pytest.raises(UserError, match=r"disk full while writing .*\.lock"):
        with store.locked(tmp_path / "run"):
            pass


@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MiB tmpfs (root only; skipped where mount is refused)."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs",
                                            str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_lock_on_an_exactly_full_disk_is_a_user_error(tmpfs):
    # a real full disk, no injection: the lock file's inode is created, its pid finds no block
    import lthfast.files as store

    with open(tmpfs / "filler", "wb", buffering=0) as f:  # unbuffered: nothing left to flush
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 512)
    with pytest.raises(UserError, match=r"disk full while writing .*\.lock"):
        with store.locked(tmpfs / "run"):
            pass
