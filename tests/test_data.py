"""Dataset build, subsets, label noise and the device-resident loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lthfast.data.build import build_dataset, channel_stats, ffcv_available
from lthfast.data.loader import BatchStream, DeviceData, StreamSeeds
from lthfast.data.sources import get_source
from lthfast.data.subsets import (SubsetSpec, load_subset, make_subset, noisy_labels,
                                  noisy_labels_path, write_subset)
from lthfast.errors import UserError
from lthfast.files import file_sha256


def test_digits_build_matches_source_and_meta(digits, data_root):
    raw = get_source("digits")(None, data_root)
    assert np.array_equal(digits.train_images, raw.train.images)
    assert np.array_equal(digits.test_labels, raw.test.labels)
    assert digits.train_images.shape[1:] == (8, 8, 3) and digits.train_images.dtype == np.uint8
    assert digits.train_size + digits.meta["test_size"] == 1797
    # stratified split: every class has ~20% of its examples in test
    counts = np.bincount(digits.test_labels, minlength=10) / (
        np.bincount(digits.test_labels, minlength=10)
        + np.bincount(digits.train_labels, minlength=10))
    assert np.all(np.abs(counts - 0.2) < 0.02)
    mean, std = channel_stats(np.asarray(digits.train_images))
    assert np.allclose(digits.meta["mean"],
                       np.asarray(digits.train_images, np.float64).mean((0, 1, 2)))
    assert np.allclose(std, np.asarray(digits.train_images, np.float64).std((0, 1, 2)))
    assert digits.meta["augment"] == {"pad": 1, "flip": False}
    for name, sha in digits.meta["files"].items():
        assert file_sha256(digits.path / name) == sha


def test_rebuild_is_noop_unless_forced(tmp_path):
    out = build_dataset("synthetic", tmp_path, source="train=40,test=20,size=8,classes=2",
                        betons=False)
    assert (out / "subsets").is_dir()  # made by the build, for index arrays
    stamp = (out / "meta.json").stat().st_mtime_ns
    build_dataset("synthetic", tmp_path, source="train=40,test=20,size=8,classes=2", betons=False)
    assert (out / "meta.json").stat().st_mtime_ns == stamp
    build_dataset("synthetic", tmp_path, source="train=40,test=20,size=8,classes=2",
                  betons=False, force=True)
    assert (out / "meta.json").stat().st_mtime_ns != stamp


@pytest.mark.skipif(not ffcv_available(), reason="ffcv not installed")
def test_betons_agree_with_arrays(synthetic):
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    indices = np.arange(10, 74)
    loader = Loader(str(synthetic.path / "train.beton"), batch_size=32, num_workers=1,
                    order=OrderOption.SEQUENTIAL, indices=indices,
                    pipelines={"image": [SimpleRGBImageDecoder(), ToTensor()],
                               "label": [IntDecoder(), ToTensor()]})
    xs, ys = zip(*[(x.numpy().copy(), y.numpy().copy()) for x, y in loader])
    assert np.array_equal(np.concatenate(xs), synthetic.train_images[indices])
    assert np.array_equal(np.concatenate(ys).ravel(), synthetic.train_labels[indices])


def test_random_subset_is_class_balanced(digits):
    idx = make_subset(digits, SubsetSpec("random", size=200, seed=3))
    assert len(idx) == 200 and len(np.unique(idx)) == 200
    assert set(np.bincount(digits.train_labels[idx], minlength=10)) == {20}
    other = make_subset(digits, SubsetSpec("random", size=200, seed=4))
    assert not np.array_equal(idx, other)
    uneven = make_subset(digits, SubsetSpec("random", size=205, seed=3))
    assert set(np.bincount(digits.train_labels[uneven], minlength=10)) == {20, 21}


def test_uneven_class_shares_are_drawn_by_the_subset_seed(digits):
    """15 over 10 classes: five get 2. Which five follows the seed, not always the same ones."""
    shares = {tuple(np.bincount(digits.train_labels[make_subset(
        digits, SubsetSpec("random", size=15, seed=seed))], minlength=10)) for seed in range(6)}
    assert len(shares) > 1 and all(sorted(s) == [1] * 5 + [2] * 5 for s in shares)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.float32])
def test_integer_scores_rank_as_numbers(digits, tmp_path, dtype):
    """Forgetting counts saved as unsigned bytes: "hard" still takes the highest counts."""
    counts = np.arange(digits.train_size) % 7
    path = tmp_path / "counts.npy"
    np.save(path, counts.astype(dtype))
    hard = make_subset(digits, SubsetSpec("hard", size=100, scores=str(path)))
    easy = make_subset(digits, SubsetSpec("easy", size=100, scores=str(path)))
    assert set(counts[hard]) == {6} and set(counts[easy]) == {0}


def test_easy_and_hard_pick_the_right_ends(digits, tmp_path):
    scores = np.random.default_rng(0).random(digits.train_size).astype(np.float32)
    path = tmp_path / "scores.npy"
    np.save(path, scores)
    easy = make_subset(digits, SubsetSpec("easy", size=100, scores=str(path)))
    hard = make_subset(digits, SubsetSpec("hard", size=100, scores=str(path)))
    assert scores[easy].max() < np.sort(scores)[100]
    assert scores[hard].min() > np.sort(scores)[-101]
    offset = make_subset(digits, SubsetSpec("easy", size=100, scores=str(path), offset=50))
    assert np.array_equal(np.sort(offset), np.sort(np.argsort(scores)[50:150]))
    balanced = make_subset(digits, SubsetSpec("easy", size=100, scores=str(path),
                                              class_balanced=True))
    assert set(np.bincount(digits.train_labels[balanced], minlength=10)) == {10}
    for c in range(10):  # within each class, the chosen ones are that class's lowest scores
        members = np.flatnonzero(digits.train_labels == c)
        chosen = balanced[digits.train_labels[balanced] == c]
        assert scores[chosen].max() <= np.sort(scores[members])[9]


def test_subset_files_are_deterministic_and_validated(digits, tmp_path):
    path = write_subset(digits, SubsetSpec("random", size=50, seed=1))
    assert write_subset(digits, SubsetSpec("random", size=50, seed=1)) == path
    assert np.array_equal(load_subset(path, digits.train_size),
                          make_subset(digits, SubsetSpec("random", size=50, seed=1)))
    bad = tmp_path / "bad.npy"
    for array, message in ((np.array([0, 1, 1]), "duplicate"),
                           (np.array([0, digits.train_size]), "outside"),
                           (np.zeros((2, 2), dtype=np.int64), "1-D")):
        np.save(bad, array)
        with pytest.raises(UserError, match=message):
            load_subset(bad, digits.train_size)
    for size in (0, -1, digits.train_size + 1):
        with pytest.raises(UserError, match="--size"):
            make_subset(digits, SubsetSpec("random", size=size))


def test_label_noise_share_and_reuse(digits):
    labels = np.asarray(digits.train_labels)
    noisy = noisy_labels(labels, 0.5, 10, seed=0)
    changed = np.mean(noisy != labels)
    # half re-drawn, 1/10 of those land on the true label again: about 45% corrupted
    assert 0.40 < changed < 0.50
    assert np.array_equal(noisy, noisy_labels(labels, 0.5, 10, seed=0))
    assert np.array_equal(noisy_labels(labels, 0.0, 10, seed=0), labels)
    path = noisy_labels_path(digits, 0.5, 0)
    stamp = path.stat().st_mtime_ns
    assert noisy_labels_path(digits, 0.5, 0) == path and path.stat().st_mtime_ns == stamp
    assert np.array_equal(np.load(path), noisy)
    with pytest.raises(UserError):
        noisy_labels(labels, 1.5, 10, seed=0)


def make_stream(ds, indices, batch, seeds=(StreamSeeds(1, 2),), augment=True):
    data = DeviceData(ds.train_images, ds.train_labels, ds.meta["mean"], ds.meta["std"],
                      ds.augment, "cpu")
    return BatchStream(data, [indices] * len(seeds), list(seeds), batch, augment=augment)


@pytest.mark.parametrize("m,batch", [(64, 16), (50, 16), (7, 16)])
def test_stream_covers_subset_each_epoch(synthetic, m, batch):
    subset = np.random.default_rng(0).choice(synthetic.train_size, m, replace=False)
    stream = make_stream(synthetic, subset, batch)
    seen = np.concatenate([stream.step_indices(s)[0] for s in range(3 * m // batch + 3)])
    for epoch in range(3):  # consecutive windows of length M are permutations of the subset
        window = seen[epoch * m : (epoch + 1) * m]
        assert sorted(window) == sorted(subset)
    assert not np.array_equal(seen[:m], seen[m : 2 * m]) or m < 8  # reshuffled per epoch


def reference_augment(image, pad, dy, dx, flip):
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    out = padded[dy : dy + image.shape[0], dx : dx + image.shape[1]]
    return out[:, ::-1] if flip else out


@pytest.mark.parametrize("k", [1, 3])  # K = 1 gathers whole crop rows, K > 1 single pixels
def test_augmentation_matches_reference(synthetic, k):
    stream = make_stream(synthetic, np.arange(synthetic.train_size), 32,
                         seeds=tuple(StreamSeeds(1 + 2 * m, 2 + 2 * m) for m in range(k)))
    x, y, idx = stream.batch(5)
    params = stream.augment_params(5)
    crops = stream.data.gather(idx, *params).numpy()  # uint8 B×H×W×3K, before normalisation
    dy, dx, flip = (t.numpy() for t in params)
    assert flip.any() and (~flip).any() and len(np.unique(dy)) > 1 and len(np.unique(dx)) > 1
    mean, std = np.array(synthetic.meta["mean"]), np.array(synthetic.meta["std"])
    x = x.numpy()
    for b in range(32):
        for m in range(k):
            ref = reference_augment(synthetic.train_images[idx[b, m]], 4, dy[b, m], dx[b, m],
                                    flip[b, m])
            assert np.array_equal(crops[b, :, :, 3 * m : 3 * m + 3], ref)
            got = x[b, 3 * m : 3 * m + 3].transpose(1, 2, 0) * std + mean
            assert np.allclose(got, ref, atol=1e-3)
            assert y[b, m] == synthetic.train_labels[idx[b, m]]


def test_same_seeds_same_batches(synthetic):
    a = make_stream(synthetic, np.arange(100), 16).batch(9)
    b = make_stream(synthetic, np.arange(100), 16).batch(9)
    c = make_stream(synthetic, np.arange(100), 16, seeds=(StreamSeeds(1, 5),)).batch(9)
    d = make_stream(synthetic, np.arange(100), 16, seeds=(StreamSeeds(7, 2),)).batch(9)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert torch.equal(a[2], c[2]) and not torch.equal(a[0], c[0])  # augmentation seed only
    assert not torch.equal(a[2], d[2])  # order seed
    assert a[0].is_contiguous(memory_format=torch.channels_last)


def test_importing_ffcv_leaves_torch_threads_alone():
    """ffcv's import sets torch to one thread; lthfast restores it, or the first run in a fresh
    root (which builds digits, and so imports ffcv) would train at half speed with other
    reduction orders, not bit-identical to the next run."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(2); "
            "from lthfast.data.build import ffcv_available; ffcv_available(); "
            "print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "2", out.stderr[-2000:]
