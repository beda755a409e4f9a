"""``lthfast grads`` (Figs. 7-8): gradient norms, coherence and learning speed during a replay of
pre-training that must not change the trajectory it measures.

    python -m pytest -q tests/test_grads.py
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lthfast import api
from lthfast.experiments.analyses.grads import cosines_to_mean
from lthfast.experiments.common import Runtime
from lthfast.runs import RunStore
from lthfast.train import checkpoint as ckpt


def test_cosine_of_identical_batch_gradients_is_one_and_opposite_ones_cancel():
    g = torch.randn(1000, dtype=torch.float64)
    assert torch.allclose(cosines_to_mean(torch.stack([g, g, g])), torch.ones(3,
                                                                              dtype=torch.float64))
    noisy = cosines_to_mean(torch.stack([g, -g, g + 1e-3]))
    assert noisy[0] > 0.99 and noisy[1] < -0.99  # the mean is about g / 3


def test_the_replay_measures_without_changing_pre_training(data_root, tmp_path):
    """The hook probes 16 extra batches every 2 steps and evaluates every 5; the replayed
    network still ends bit-identical to imp's pre-training stage, so what it measured is the
    trajectory imp trains."""
    rt = Runtime(root=data_root, out=tmp_path, device="cpu", checkpoint_every=0, progress=None,
                 deterministic=True)
    request = api.GradsRequest(dataset="digits", subset="random", size=256, steps=12,
                               train_steps=60, batch_size=32, replicates=2, coherence_every=2,
                               coherence_batches=4, eval_every=5)
    summary = json.loads(api.grads(request, rt).read_text())
    imp = api.recast(request, api.ImpRequest, levels=0)
    run = api.imp(imp, rt)
    pre = RunStore(tmp_path).run("pretrain", run.config["pretrain"])
    for r in ("0", "1"):
        branch = Path(summary["replicates"][r]["path"])
        replay = ckpt.load(branch / "weights.pt")
        trained = ckpt.load(pre.stage(int(r)).file("weights.pt"))
        assert all(torch.equal(replay[n], trained[n]) for n in trained)
        norms = np.load(branch / "grad_norms.npy")
        assert norms.shape == (12,) and np.all(norms > 0) and np.all(np.isfinite(norms))
        coherence = np.load(branch / "coherence.npy")
        assert coherence.shape == (6, 4) and np.all((-1 <= coherence) & (coherence <= 1))
        assert list(np.load(branch / "coherence_steps.npy")) == [0, 2, 4, 6, 8, 10]
        # accuracies of w_s: step 0, every 5, and w_12 = w_{t_r}, after the last update
        assert list(np.load(branch / "speed_steps.npy")) == [0, 5, 10, 12]
        for name in ("train_acc", "subset_acc", "test_acc"):
            acc = np.load(branch / f"{name}.npy")
            assert acc.shape == (4,) and np.all((0 <= acc) & (acc <= 1))
        # the last point is the pre-trained network itself (it was w_11 before the fix)
        assert summary["replicates"][r]["final_test_acc"] == pytest.approx(
            pre.stage(int(r)).record().test_acc, abs=1e-6)
        assert np.isnan(np.load(branch / "eval_subset_acc.npy")).all()  # no --eval-subset
    assert summary["mean_coherence"] > 0
    # rerun with fewer replicates: replicate 1's finished replay stays in the summary
    again = api.grads(dataclasses.replace(request, replicates=1), rt)
    assert json.loads(again.read_text()) == summary


def test_grads_resumes_bit_exactly_after_kill9(data_root, tmp_path):
    """The statistics hook's state is checkpointed with the model: killed mid-replay, the rerun
    ends with the same gradient norms, coherence and accuracies as an uninterrupted run."""
    import signal

    from reliability import Cli

    args = ["grads", "--dataset", "digits", "--steps", "12",
            "--train-steps", "40", "--batch-size", "32", "--coherence-every", "3",
            "--coherence-batches", "2", "--eval-every", "4", "--deterministic",
            "--root", data_root]
    run = lambda out, kill=None: Cli().run(args + ["--out", out], kill=kill, timeout=300)  # noqa: E731

    assert run(tmp_path / "ref").returncode == 0
    killed = run(tmp_path / "kill", {"stage": r"pretrain/replicate_0/grads_\w+", "step": 8})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run(tmp_path / "kill")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for name in ("grad_norms", "coherence", "train_acc", "test_acc", "weights"):
        suffix = ".pt" if name == "weights" else ".npy"
        [a] = (tmp_path / "ref").glob(f"pretrain_*/replicate_0/grads_*/{name}{suffix}")
        [b] = (tmp_path / "kill").glob(f"pretrain_*/replicate_0/grads_*/{name}{suffix}")
        assert a.read_bytes() == b.read_bytes(), name


def test_probe_batches_have_a_seed_domain_of_their_own_under_seed():
    """The coherence batches used mix_seed(r, 3, j): IMP replicate 3's seeds under --seed r, and
    the same whatever --seed. Now (seed, 3, r, j): disjoint from every IMP and score network's
    seeds, and another --seed gives other batches."""
    from lthfast.experiments.analyses.grads import probe_seeds
    from lthfast.experiments.common import SCORE_SEEDS, replicate_seeds

    taken = {v for seed in range(6) for r in range(8) for domain in (0, SCORE_SEEDS)
             for v in replicate_seeds(seed, r, domain).values()}
    probes = {v for seed in range(6) for r in range(8)
              for v in dataclasses.astuple(probe_seeds(seed, r))}
    assert len(probes) == 6 * 8 * 2 and not probes & taken
    assert probe_seeds(0, 1) != probe_seeds(1, 1)


def test_the_all_data_network_is_also_measured_on_the_easy_subset(data_root, tmp_path):
    """Fig. 7a: accuracy on a subset the network does not train on (--eval-subset), at every
    accuracy point; the last equals the pre-trained network's accuracy on those examples."""
    from lthfast.experiments.common import Context, packed_model
    from lthfast.train.evaluate import predict

    rt = Runtime(root=data_root, out=tmp_path, device="cpu", checkpoint_every=0, progress=None)
    request = api.GradsRequest(dataset="digits", subset="all", steps=8, train_steps=40,
                               batch_size=32, coherence_every=4, coherence_batches=2,
                               eval_every=4, eval_subset="random", eval_size=64)
    summary = json.loads(api.grads(request, rt).read_text())
    assert summary["config"]["eval_subset"]["kind"] == "random"
    branch = Path(summary["replicates"]["0"]["path"])
    indices = np.load(branch / "eval_subset.npy")
    accs = np.load(branch / "eval_subset_acc.npy")
    assert len(indices) == 64 and accs.shape == (3,) and np.isfinite(accs).all()
    state = ckpt.load(branch / "weights.pt")
    ctx = Context(rt, api.open_data(data_root, "digits"))
    data = ctx.train_split()
    correct = (predict(packed_model(ctx, [state]), data).argmax(-1)[0] == data.labels).float()
    assert accs[-1] == pytest.approx(float(correct[indices].mean()), abs=1e-6)
    assert summary["replicates"]["0"]["final_eval_subset_acc"] == pytest.approx(accs[-1])
