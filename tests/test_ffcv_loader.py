"""The ffcv-backed stream: pixels and labels match the .npy arrays; train() runs on it.

One Loader only (each compiles its pipeline with numba, ~5-15 s on a CPU).

    python -m pytest -q tests/test_ffcv_loader.py
"""

from __future__ import annotations

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


def test_ffcv_loader_needs_the_beton(tmp_path, run_cli):
    from lthfast.data.build import build_dataset

    path = build_dataset("synthetic", tmp_path, source="train=64,test=16,size=8,classes=2")
    (path / "train.beton").unlink()
    code, _, stderr = run_cli(["scores", "el2n", "--dataset", "synthetic", "--loader", "ffcv",
                               "--root", tmp_path, "--out", tmp_path / "runs"])
    assert code == 2 and "train.beton is missing" in stderr
    assert not (tmp_path / "runs").exists()
