"""The ffcv-backed stream: pixels and labels match the .npy arrays; train() runs on it.

One Loader only (each compiles its pipeline with numba, ~5-15 s on a CPU).

    python -m pytest -q tests/test_ffcv_loader.py
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("ffcv")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lthfast.data.build import build_dataset

    root = tmp_path_factory.mktemp("ffcv_data")
    return build_dataset("synthetic", root, source="train=256,test=64,size=16,classes=4")


def test_ffcv_stream_matches_arrays_and_trains(tiny):
    from lthfast.data.arrays import open_dataset
    from lthfast.data.ffcv_loader import FFCVStream
    from lthfast.models import build
    from lthfast.train.loop import LoopConfig, train
    from lthfast.train.schedule import Schedule

    ds = open_dataset(tiny.parent, "synthetic")
    images, labels = np.asarray(ds.train_images), np.asarray(ds.train_labels)
    subset = np.arange(0, 256, 2)[:96]  # 96 examples, batch 32: 3 batches an epoch
    b = 32
    stream = FFCVStream(tiny, [subset], [7], batch_size=b, augment=False, num_workers=2)
    assert stream.k == 1 and stream.batches_per_epoch == [3]
    mean = torch.tensor(ds.meta["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ds.meta["std"]).view(1, 3, 1, 1)

    seen = []
    for step in range(3):  # one epoch
        x, y, idx = stream.batch(step)
        assert x.shape == (b, 3, 16, 16) and x.dtype == torch.float32
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert y.shape == (b, 1) and y.dtype == torch.int64
        assert idx.shape == (b, 1) and idx.dtype == torch.int64
        pixels = (x * std + mean).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        ix = idx[:, 0].numpy()
        # batch by batch, the reconstructed indices name exactly the delivered images and labels
        np.testing.assert_array_equal(pixels.numpy(), images[ix])
        np.testing.assert_array_equal(y[:, 0].numpy(), labels[ix])
        seen.append(ix)
    seen = np.concatenate(seen)
    assert sorted(seen.tolist()) == subset.tolist()  # one epoch: every subset example once

    # the next epoch is another permutation of the same subset
    x, y, idx = stream.batch(3)
    assert set(idx[:, 0].tolist()) <= set(subset.tolist())

    model = build("resnet8", 4, k=1).to(memory_format=torch.channels_last)
    result = train(model, stream, LoopConfig(schedule=Schedule(0.05), start_step=4, end_step=8,
                                             log_every=2))
    assert result.step == 8
    assert all(np.isfinite(result.mean_losses))
    stream.close()


def test_imp_and_scores_train_on_ffcv_when_asked(tiny, run_cli, tmp_path, monkeypatch):
    """--loader ffcv reaches every training stage (pre-training, levels, score ensembles)."""
    import json

    from lthfast.data import streams
    from lthfast.data.ffcv_loader import FFCVStream

    made = []
    real = streams.STREAMS["ffcv"]

    def spy(*args):
        stream = real(*args)
        made.append(type(stream))
        return stream

    monkeypatch.setitem(streams.STREAMS, "ffcv", spy)
    out = tmp_path / "runs"
    small = ["--root", tiny.parent, "--out", out, "--batch-size", "32", "--checkpoint-every", "0"]
    code, stdout, stderr = run_cli(["imp", "--dataset", "synthetic", "--loader", "ffcv",
                                    "--subset", "random", "--size", "64", "--steps", "2",
                                    "--levels", "0", "--train-steps", "8", *small])
    assert code == 0, stderr
    results = json.loads((tmp_path / stdout.split()[-1] / "results.json").read_text())
    assert [r["loader"] for r in results["rows"]] == ["ffcv"]
    assert np.isfinite(results["rows"][0]["test_acc"])
    assert made == [FFCVStream, FFCVStream]  # pre-training and level 0

    code, stdout, stderr = run_cli(["scores", "el2n", "--dataset", "synthetic", "--loader", "ffcv",
                                    "--models", "2", "--steps", "3", *small])
    assert code == 0, stderr
    scores = np.load(stdout.split()[-1])
    assert scores.shape == (256,) and np.all(np.isfinite(scores))
    assert made[2:] == [FFCVStream]  # one stream of K=2 zipped loaders


@pytest.mark.parametrize("flags, message", [
    (["--label-noise", "0.2"], "cannot train on noisy labels"),
    (["--deterministic"], "not reproducible"),
    (["--loader", "bogus"], "unknown loader 'bogus'"),
])
def test_ffcv_loader_refuses_what_it_cannot_do(tiny, run_cli, tmp_path, flags, message):
    out = tmp_path / "runs"
    args = ["imp", "--dataset", "synthetic", "--loader", "ffcv", "--subset", "random",
            "--size", "64", "--steps", "2", "--levels", "0", "--root", tiny.parent, "--out", out]
    code, stdout, stderr = run_cli(args + flags)
    assert code == 2 and message in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists()  # nothing written


def test_missing_betons_are_written_from_the_arrays(tmp_path):
    from lthfast.data.arrays import open_dataset
    from lthfast.data.build import build_dataset, ensure_betons
    from lthfast.files import file_sha256

    source = "train=64,test=16,size=8,classes=2"
    lazy = build_dataset("synthetic", tmp_path / "lazy", source=source, betons=False)
    full = build_dataset("synthetic", tmp_path / "full", source=source)
    assert not list(lazy.glob("*.beton"))
    ensure_betons(lazy)
    files = open_dataset(lazy.parent, "synthetic").meta["files"]  # checksums verified on open
    for part in ("train", "test"):
        beton = f"{part}.beton"
        assert file_sha256(lazy / beton) == file_sha256(full / beton) == files[beton]


def test_ffcv_loader_writes_a_missing_beton_when_first_read(tmp_path, monkeypatch):
    from lthfast.data import ffcv_loader
    from lthfast.data.arrays import open_dataset
    from lthfast.data.build import build_dataset
    from lthfast.data.streams import check_loader, make_stream

    path = build_dataset("synthetic", tmp_path, source="train=64,test=16,size=8,classes=2",
                         betons=False)
    ds = open_dataset(tmp_path, "synthetic")
    check_loader("ffcv", ds)  # a missing beton is no reason to refuse
    made = []
    monkeypatch.setattr(ffcv_loader, "FFCVStream", lambda *a, **k: made.append(a) or "stream")
    data = SimpleNamespace(device="cpu")  # the device-resident split: only its device is read
    assert make_stream("ffcv", ds, data, [np.arange(8)], [1], 4) == "stream"
    assert (path / "train.beton").exists() and (path / "test.beton").exists()
    assert made and made[0][0] == path


def test_build_beton_adds_the_betons_to_a_dataset_built_on_first_use(tmp_path, run_cli):
    from lthfast.api import open_data

    ds = open_data(tmp_path, "digits")
    assert not list(ds.path.glob("*.beton"))  # first use: arrays only
    code, _, _ = run_cli(["build-beton", "digits", "--root", tmp_path])
    assert code == 0 and (ds.path / "train.beton").exists() and (ds.path / "test.beton").exists()
