"""Dataset sources on tiny copies of the official on-disk formats; safe download and extraction."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lthfast.data import download
from lthfast.data.download import fetch, file_md5, safe_extract_tar
from lthfast.data.sources import cifar, cinic, get_source
from lthfast.errors import UserError

rng = np.random.default_rng(0)


def listing(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


# ---------------------------------------------------------------- CIFAR


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """The official row format, written out from its description: R plane, G plane, B plane."""
    return np.stack([np.concatenate([im[..., c].ravel() for c in range(3)]) for im in images])


def write_pickle(path: Path, obj) -> None:
    """Protocol 2 like the official Python 2 files, naming numpy.core as their arrays do."""
    blob = pickle.dumps(obj, protocol=2)
    path.write_bytes(blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


def make_cifar(tmp: Path, name: str) -> tuple[Path, Path, dict]:
    """Write a tiny official-format archive and folder; return (archive, folder, expected)."""
    layout = cifar.LAYOUTS[name]
    folder = tmp / layout.folder
    folder.mkdir(parents=True)
    expected = {}
    for split, files in (("train", layout.train_files), ("test", layout.test_files)):
        images, labels = [], []
        for i, fname in enumerate(files):
            n = 3 + i % 2
            ims = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
            labs = rng.integers(0, layout.num_classes, size=n).tolist()
            batch = {b"batch_label": fname.encode(), b"data": cifar_rows(ims),
                     b"filenames": [f"img_{j}.png".encode() for j in range(n)]}
            if name == "cifar10":
                batch[b"labels"] = labs
            else:  # coarse labels differ from fine ones, so using the wrong key would show
                batch[b"fine_labels"] = labs
                batch[b"coarse_labels"] = [(x + 7) % 20 for x in labs]
            write_pickle(folder / fname, batch)
            images.append(ims)
            labels += labs
        expected[split] = (np.concatenate(images), np.asarray(labels))
    names = [f"class_{c}".encode() for c in range(layout.num_classes)]
    if name == "cifar10":
        meta = {b"label_names": names, b"num_cases_per_batch": 3, b"num_vis": 3072}
    else:
        meta = {b"fine_label_names": names, b"coarse_label_names": names[:20]}
    write_pickle(folder / layout.meta_file, meta)
    archive = tmp / layout.archive
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=layout.folder)
    expected["classes"] = tuple(n.decode() for n in names)
    return archive, folder, expected


def check(raw, expected) -> None:
    for split in ("train", "test"):
        images, labels = expected[split]
        got = getattr(raw, split)
        assert got.images.dtype == np.uint8 and got.images.shape == images.shape
        np.testing.assert_array_equal(got.images, images)
        assert got.labels.dtype == np.int64
        np.testing.assert_array_equal(got.labels, labels)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_round_trips_from_archive_folder_and_parent(tmp_path, name):
    archive, folder, expected = make_cifar(tmp_path / "src", name)
    for source in (archive, folder, folder.parent):
        raw = get_source(name)(str(source), tmp_path / "root")
        assert raw.name == name and raw.classes == expected["classes"]
        assert raw.augment.pad == 4 and raw.augment.flip
        check(raw, expected)
    assert not (tmp_path / "root").exists()  # a local source is read in place, never copied


def test_cifar_without_source_downloads_and_checks_md5(tmp_path, monkeypatch):
    archive, _, expected = make_cifar(tmp_path / "src", "cifar10")
    layout = dataclasses.replace(cifar.LAYOUTS["cifar10"], url=archive.as_uri(),
                                 md5=file_md5(archive))
    monkeypatch.setitem(cifar.LAYOUTS, "cifar10", layout)
    check(get_source("cifar10")(None, tmp_path / "root"), expected)
    assert file_md5(tmp_path / "root" / "_downloads" / archive.name) == layout.md5

    monkeypatch.setitem(cifar.LAYOUTS, "cifar10", dataclasses.replace(layout, md5="0" * 32))
    with pytest.raises(UserError, match="checksum mismatch"):
        get_source("cifar10")(None, tmp_path / "root2")


def test_cifar_corrupt_or_missing_files_are_user_errors(tmp_path):
    archive, folder, _ = make_cifar(tmp_path / "src", "cifar10")
    load = get_source("cifar10")
    root = tmp_path / "root"

    blob = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(blob[: len(blob) // 2])  # truncated pickle
    with pytest.raises(UserError, match="corrupt CIFAR file data_batch_2"):
        load(str(folder), root)

    (folder / "data_batch_2").unlink()
    with pytest.raises(UserError, match="no data_batch_2"):
        load(str(folder), root)

    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(UserError, match="corrupt CIFAR archive"):
        load(str(truncated), root)

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither"):
        load(str(tmp_path / "empty"), root)
    with pytest.raises(UserError, match="does not exist"):
        load(str(tmp_path / "nope.tar.gz"), root)


class _Payload:
    """Unpickling this would create a directory: the unpickler must refuse it instead."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    _, folder, _ = make_cifar(tmp_path / "src", "cifar10")
    marker = tmp_path / "pwned"
    write_pickle(folder / "test_batch", {b"data": _Payload(marker), b"labels": []})
    with pytest.raises(UserError, match="corrupt CIFAR file test_batch.*refusing"):
        get_source("cifar10")(str(folder), tmp_path / "root")
    assert not marker.exists()


# ---------------------------------------------------------------- CINIC-10

# Names in an order where sorting matters: creation order differs from sorted order.
CINIC_FILES = ["n0153_7.png", "cifar10-x-2.png", "n0153_10.png"]


def make_cinic(tree: Path) -> dict:
    """Write a tiny official-layout CINIC-10 tree; return the expected arrays per split."""
    expected = {}
    for split in cinic.SPLITS:
        images, labels = [], []
        for label, cls in enumerate(cinic.CLASSES):
            (tree / split / cls).mkdir(parents=True)
            per_file = {}
            for k, fname in enumerate(CINIC_FILES):
                if k == 0 and label % 3 == 0:  # ImageNet-sourced grayscale PNGs exist in CINIC
                    gray = rng.integers(0, 256, size=(32, 32), dtype=np.uint8)
                    Image.fromarray(gray, mode="L").save(tree / split / cls / fname)
                    per_file[fname] = np.repeat(gray[..., None], 3, axis=-1)
                else:
                    im = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                    Image.fromarray(im).save(tree / split / cls / fname)
                    per_file[fname] = im
            (tree / split / cls / "notes.txt").write_text("not an image")  # must be skipped
            for fname in sorted(per_file):
                images.append(per_file[fname])
                labels.append(label)
        expected[split] = (np.stack(images), np.asarray(labels))
    return expected


def check_cinic(raw, expected) -> None:
    train = (np.concatenate([expected["train"][0], expected["valid"][0]]),
             np.concatenate([expected["train"][1], expected["valid"][1]]))
    check(raw, {"train": train, "test": expected["test"]})
    n = len(expected["train"][1])
    assert len(raw.train.labels) == n + len(expected["valid"][1])  # train = train + valid
    np.testing.assert_array_equal(raw.train.images[n:], expected["valid"][0])
    assert raw.classes == cinic.CLASSES


def test_cinic_round_trips_from_folder_and_parent(tmp_path):
    expected = make_cinic(tmp_path / "CINIC-10")
    # 3 files x 10 classes per split, gray ones included, the .txt files skipped
    assert expected["valid"][0].shape == (30, 32, 32, 3)
    for source in (tmp_path / "CINIC-10", tmp_path):
        check_cinic(get_source("cinic10")(str(source), tmp_path / "root"), expected)


@pytest.mark.parametrize("top_folder", [True, False])
def test_cinic_from_archive_extracts_once(tmp_path, monkeypatch, top_folder):
    expected = make_cinic(tmp_path / "src" / "CINIC-10")
    archive = tmp_path / "CINIC-10.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        if top_folder:
            tar.add(tmp_path / "src" / "CINIC-10", arcname="CINIC-10")
        else:
            tar.add(tmp_path / "src" / "CINIC-10", arcname=".")
    root = tmp_path / "root"
    check_cinic(get_source("cinic10")(str(archive), root), expected)
    extracted = root / "_downloads" / "cinic10" / file_md5(archive)[:12]
    assert extracted.is_dir() and not [p for p in extracted.parent.iterdir() if p != extracted]

    def no_second_extraction(*args):
        raise AssertionError("extracted again")

    monkeypatch.setattr(cinic, "safe_extract_tar", no_second_extraction)
    check_cinic(get_source("cinic10")(str(archive), root), expected)


def test_cinic_bad_trees_are_user_errors(tmp_path):
    make_cinic(tmp_path / "t")
    load = get_source("cinic10")
    (tmp_path / "t" / "test" / "truck" / "n0153_7.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError, match="corrupt CINIC-10 image .*n0153_7.png"):
        load(str(tmp_path / "t"), tmp_path / "root")
    (tmp_path / "t" / "valid" / "frog").rename(tmp_path / "t" / "valid" / "frogs")
    with pytest.raises(UserError, match="class folders"):
        load(str(tmp_path / "t"), tmp_path / "root")
    with pytest.raises(UserError, match="not a CINIC-10 folder"):
        load(str(tmp_path / "t" / "train"), tmp_path / "root")


def test_cinic_pool_decoding_matches_serial(tmp_path, monkeypatch):
    make_cinic(tmp_path / "t")
    paths, _ = cinic.list_split(tmp_path / "t", "train")
    monkeypatch.setattr(cinic, "POOL_MIN_IMAGES", 0)
    monkeypatch.setattr(cinic, "CHUNK", 7)  # several uneven chunks must land in order
    np.testing.assert_array_equal(cinic.decode_all(paths, workers=2), cinic.decode_pngs(paths))


# ---------------------------------------------------------------- download and extraction


def test_fetch_verifies_md5_and_reuses_a_good_file(tmp_path):
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(3000))
    dest = tmp_path / "dl" / "payload.bin"

    with pytest.raises(UserError, match="checksum mismatch"):
        fetch(src.as_uri(), dest, "0" * 32)
    assert not dest.parent.exists()  # no file, no temp file, not even the folder it made

    md5 = file_md5(src)
    assert fetch(src.as_uri(), dest, md5) == dest and dest.read_bytes() == src.read_bytes()
    src.unlink()
    assert fetch(src.as_uri(), dest, md5) == dest  # right md5 on disk: no download attempted

    dest.write_bytes(b"stale")  # wrong content on disk: downloaded again, and now unreachable
    with pytest.raises(UserError, match="could not download .*--source PATH"):
        fetch(src.as_uri(), dest, md5)
    assert dest.read_bytes() == b"stale"  # a failed download never replaces the old file


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"x", **fields) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if "type" not in fields else 0
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if "type" not in fields else None)


def make_tar(path: Path, members: list[tuple]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, fields in members:
            add_member(tar, name, **fields)
    return path


@pytest.mark.parametrize("members", [
    [("ok.txt", {}), ("../evil", {})],
    [("a/../../evil", {})],
    [("ABS", {})],  # name replaced below by an absolute path inside tmp_path
    [("link", {"type": tarfile.SYMTYPE, "linkname": "/etc"}), ("link/evil", {})],
    [("link", {"type": tarfile.SYMTYPE, "linkname": "../evil"})],
    [("here", {"type": tarfile.SYMTYPE, "linkname": "."}),
     ("up", {"type": tarfile.SYMTYPE, "linkname": "here/.."})],  # escapes although it looks inside
    [("hard", {"type": tarfile.LNKTYPE, "linkname": "../evil"})],
    [("dev", {"type": tarfile.CHRTYPE})],
], ids=["dotdot", "nested-dotdot", "absolute", "symlink-etc", "symlink-up", "symlink-chain",
        "hardlink-up", "device"])
def test_safe_extract_refuses_escapes_and_writes_nothing(tmp_path, members):
    outside = tmp_path / "outside"
    dest = outside / "dest"
    dest.mkdir(parents=True)
    members = [(str(outside / "evil") if n == "ABS" else n, f) for n, f in members]
    archive = make_tar(tmp_path / "evil.tar.gz", members)
    with pytest.raises(UserError, match="unsafe archive"):
        safe_extract_tar(archive, dest)
    assert listing(outside) == {"dest"}  # nothing written, inside or outside dest


def test_safe_extract_keeps_good_archives_and_reports_corrupt_ones(tmp_path):
    archive = make_tar(tmp_path / "good.tar.gz", [
        ("top/a.txt", {}), ("top/sub", {"type": tarfile.DIRTYPE}),
        ("top/sub/link", {"type": tarfile.SYMTYPE, "linkname": "b.txt"}), ("top/sub/b.txt", {})])
    dest = safe_extract_tar(archive, tmp_path / "out")
    assert listing(dest) == {"top", "top/a.txt", "top/sub", "top/sub/link", "top/sub/b.txt"}
    assert (dest / "top" / "sub" / "link").read_bytes() == b"x"

    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(archive.read_bytes()[:40])
    with pytest.raises(UserError, match="corrupt archive|could not extract"):
        safe_extract_tar(broken, tmp_path / "out2")


def test_download_module_checks_every_member_before_writing(tmp_path, monkeypatch):
    # The explicit checks must refuse on their own, also where filter="data" does not exist.
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    archive = make_tar(tmp_path / "e.tar.gz", [("fine.txt", {}), ("../evil", {})])
    with pytest.raises(UserError, match="'../evil'"):
        download.safe_extract_tar(archive, tmp_path / "d")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "d" / "fine.txt").exists()


def test_failed_download_or_extraction_leaves_no_new_folders(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(UserError, match="could not download"):
        fetch((tmp_path / "missing.bin").as_uri(), root / "_downloads" / "x.bin", "0" * 32)
    archive = make_tar(tmp_path / "CINIC-10.tar.gz", [("../evil", {})])
    with pytest.raises(UserError, match="unsafe archive"):
        get_source("cinic10")(str(archive), root)
    assert not root.exists() and not (tmp_path / "evil").exists()


def test_synthetic_is_seeded_and_shaped_as_asked():
    from lthfast.data.sources.synthetic import load_synthetic

    a = load_synthetic("train=50,test=10,size=12,classes=5,seed=3", Path("."))
    b = load_synthetic("train=50,test=10,size=12,classes=5,seed=3", Path("."))
    c = load_synthetic("train=50,test=10,size=12,classes=5,seed=4", Path("."))
    assert a.train.images.shape == (50, 12, 12, 3) and a.test.images.shape == (10, 12, 12, 3)
    assert a.train.images.dtype == np.uint8 and len(a.classes) == 5
    assert np.bincount(a.train.labels).tolist() == [10] * 5  # balanced classes
    assert np.array_equal(a.train.images, b.train.images)
    assert np.array_equal(a.train.labels, b.train.labels)
    assert not np.array_equal(a.train.images, c.train.images)
