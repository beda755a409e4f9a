"""``lthfast errors`` (Fig. 9): per-example ‖p − y‖ of w_{t_r} and of its sparse projection,
checked against a direct computation from the saved weights and masks.

    python -m pytest -q tests/test_errors.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lthfast import api
from lthfast.experiments.common import Runtime
from lthfast.models import build
from lthfast.prune.magnitude import prune
from lthfast.runs import RunStore
from lthfast.train import checkpoint as ckpt


def direct_errors(state, digits) -> np.ndarray:
    mean = torch.tensor(digits.meta["mean"], dtype=torch.float32)
    std = torch.tensor(digits.meta["std"], dtype=torch.float32)
    x = ((torch.from_numpy(np.array(digits.train_images)).float() - mean) / std)
    y = torch.from_numpy(np.array(digits.train_labels, dtype=np.int64))
    net = build("resnet8", 10)
    net.load_state_dict(state)
    net.eval()
    with torch.no_grad():
        p = net(x.permute(0, 3, 1, 2).contiguous())[:, 0].double().softmax(-1)
    return (p - torch.nn.functional.one_hot(y, 10).double()).norm(dim=1).numpy()


def test_dense_and_sparse_projection_errors(digits, data_root, tmp_path):
    rt = Runtime(root=data_root, out=tmp_path, device="cpu", checkpoint_every=0, progress=None)
    request = api.ErrorsRequest(dataset="digits", subset="random", size=256, steps=20,
                                train_steps=60, batch_size=32)
    dense = json.loads(api.errors(request, rt).read_text())
    sparse_path = api.errors(api.ErrorsRequest(**{**request.__dict__, "level": 2}), rt)
    sparse = json.loads(sparse_path.read_text())
    assert sparse_path.name == "errors_level_2.json" and sparse["level"] == 2

    imp = RunStore(tmp_path).run("imp", json.loads((sparse_path.parent / "config.json")
                                                   .read_text()))
    pre = RunStore(tmp_path).run("pretrain", imp.config["pretrain"])
    w = ckpt.load(pre.stage(0).file("weights.pt"))
    # level 2's mask prunes level 1's trained weights: levels 0 and 1 trained, level 2 did not
    # (it used to train in full just to read its mask)
    assert imp.stage(0, 1).is_done() and not imp.stage(0, 2).is_done()
    level1 = imp.stage(0, 1)
    mask = prune(ckpt.load(level1.file("weights.pt")), ckpt.load(level1.file("mask.pt")), 0.2)
    projected = {n: t * mask[n] if n in mask else t for n, t in w.items()}
    for summary, state in ((dense, w), (sparse, projected)):
        errors = np.load(Path(summary["per_example"]["0"]))
        assert errors.dtype == np.float32 and errors.shape == (digits.train_size,)
        np.testing.assert_allclose(errors, direct_errors(state, digits), atol=1e-5, rtol=0)
        assert summary["mean"] == float(errors.mean())
        assert sum(summary["replicates"]["0"]["histogram"]["counts"]) == digits.train_size
    # the projection really removed weights: 0.8^2 of them remain, and the errors moved
    assert not np.allclose(np.load(Path(dense["per_example"]["0"])),
                           np.load(Path(sparse["per_example"]["0"])))


def test_a_diverged_pre_training_is_recorded_and_exits_zero(data_root, tmp_path, run_cli):
    """Issue 24 item 1: ``errors --pretrain-lr 1e6`` records where w_{t_r} diverged, with null
    statistics, and exits 0 (twice: the rerun reads the finished branch)."""
    args = ["errors", "--dataset", "digits", "--steps", "10", "--train-steps", "40",
            "--pretrain-lr", "1e6", "--root", data_root, "--out", tmp_path]
    for _ in range(2):
        code, out, err = run_cli(args)
        assert code == 0 and "Traceback" not in err, err
    summary = json.loads(Path(out.split()[-1]).read_text())
    assert summary["mean"] is None and summary["replicates"]["0"]["histogram"] is None
    assert summary["replicates"]["0"]["quantiles"] == {"0.1": None, "0.5": None, "0.9": None}
    assert 0 <= summary["diverged"]["0"]["step"] < 10
