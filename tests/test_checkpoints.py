"""Checkpoints refuse what is not a plain tensor checkpoint: modified, truncated or code-carrying
files, and files whose checksum does not match.

    python -m pytest -q tests/test_checkpoints.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lthfast.errors import UserError
from reliability import sha


class NotATensor:
    """Any non-allow-listed class: weights_only=True must refuse to rebuild it."""

    def __init__(self, value):
        self.value = value


class RunsCodeOnLoad:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _rewrite_sidecar(path: Path):
    path.with_name(path.name + ".sha256").write_text(sha(path))


def test_checkpoint_roundtrip_is_accepted(tmp_path):
    from lthfast.train import checkpoint as ckpt

    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 7, "log": [{"loss": [1.5]}]}
    ckpt.save(tmp_path / "c.pt", state)
    back = ckpt.load(tmp_path / "c.pt")
    assert torch.equal(back["w"], state["w"]) and back["step"] == 7 and back["log"] == state["log"]


def test_checkpoint_refuses_non_tensor_objects_even_with_a_valid_checksum(tmp_path):
    from lthfast.train import checkpoint as ckpt

    path = tmp_path / "custom.pt"
    ckpt.save(path, {"w": torch.zeros(2), "extra": NotATensor(3)})  # writes a matching sidecar
    _rewrite_sidecar(path)
    with pytest.raises(UserError, match="refused"):
        ckpt.load(path)

    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": RunsCodeOnLoad(str(marker))}, path)
    _rewrite_sidecar(path)
    with pytest.raises(UserError, match="refused"):
        ckpt.load(path)
    assert not marker.exists(), "loading a checkpoint executed code from its pickle"


def test_checkpoint_refuses_modified_or_incomplete_files(tmp_path):
    from lthfast.train import checkpoint as ckpt

    path = tmp_path / "c.pt"
    ckpt.save(path, {"w": torch.arange(100.0)})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum"):
        ckpt.load(path)
    path.write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(UserError, match="checksum"):
        ckpt.load(path)
    path.with_name("c.pt.sha256").unlink()
    assert not ckpt.exists(path)
    with pytest.raises(UserError, match="incomplete"):
        ckpt.load(path)
