"""Models, the training loop, packed K-model training, masks, schedules and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lthfast.config import PRESETS
from lthfast.data.loader import BatchStream, DeviceData, StreamSeeds
from lthfast.models import build
from lthfast.models.packed import load_packed, unpack_state
from lthfast.prune.magnitude import full_masks, prune
from lthfast.train.evaluate import predict, summary
from lthfast.train.loop import LoopConfig, train
from lthfast.train.schedule import Schedule


@pytest.mark.parametrize("name,params", [("resnet20", 272_474), ("resnet32", 466_906),
                                         ("resnet56", 855_770)])
def test_parameter_counts(name, params):
    assert build(name, 10).num_params() == params
    assert build(name, 10, k=3).num_params() == params  # per model
    assert abs(params / 1e6 - {"resnet20": 0.27, "resnet32": 0.46, "resnet56": 0.85}[name]) < 0.01


def test_table1_schedules():
    c10, c100, cinic = PRESETS["cifar10"], PRESETS["cifar100"], PRESETS["cinic10"]
    assert (c10.model, c10.batch_size, c10.pretrain_lr, c10.train_steps) == ("resnet20", 128, 0.4, 62400)
    assert (c100.model, c100.milestones) == ("resnet32", (31200, 46800))
    assert (cinic.model, cinic.batch_size, cinic.pretrain_lr, cinic.milestones, cinic.train_steps) == (
        "resnet56", 256, 0.1, (15625, 23440), 31250)
    s = Schedule(c10.lr, c10.milestones)
    assert [s.lr_at(t) for t in (0, 31199, 31200, 46799, 46800, 62399)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    w = Schedule(3.2, (80, 120), warmup=10)
    assert w.lr_at(0) == pytest.approx(0.32) and w.lr_at(9) == pytest.approx(3.2)


@pytest.mark.parametrize("execution", ["grouped", "looped"])
def test_packed_forward_equals_separate_models(execution):
    torch.manual_seed(0)
    packed = build("resnet8", 10, k=3)
    packed.execution = execution
    packed.reset_parameters([11, 12, 13])
    singles = []
    for seed in (11, 12, 13):
        m = build("resnet8", 10)
        m.reset_parameters([seed])
        singles.append(m)
    for a, b in zip(unpack_state(packed), [m.state_dict() for m in singles]):
        assert all(torch.equal(a[n], b[n]) for n in b)  # same init from the same seed
    x = torch.randn(5, 3, 3, 16, 16)
    out = packed(x.reshape(5, 9, 16, 16))
    for k, m in enumerate(singles):
        assert torch.allclose(out[:, k], m(x[:, k])[:, 0], atol=1e-5)


def digits_stream(ds, seeds, batch=32, indices=None):
    data = DeviceData(ds.train_images, ds.train_labels, ds.meta["mean"], ds.meta["std"],
                      ds.augment, "cpu")
    indices = np.arange(ds.train_size) if indices is None else indices
    return data, BatchStream(data, [indices] * len(seeds), seeds, batch)


def fresh(k, seeds, execution="auto"):
    m = build("resnet8", 10, k=k)
    m.reset_parameters(seeds)
    m.execution = execution
    return m.to(memory_format=torch.channels_last)


def test_short_run_lowers_loss_and_learns(digits):
    data, stream = digits_stream(digits, [StreamSeeds(0, 1)])
    model = fresh(1, [0])
    result = train(model, stream, LoopConfig(Schedule(0.1), 0, 60, log_every=20))
    assert result.log[-1]["loss"][0] < 0.5 * result.log[0]["loss"][0]
    test = DeviceData(digits.test_images, digits.test_labels, digits.meta["mean"],
                      digits.meta["std"], digits.augment, "cpu")
    assert summary(predict(model, test), test.labels)["acc"][0] > 0.8


def test_masked_weights_stay_zero(digits):
    _, stream = digits_stream(digits, [StreamSeeds(0, 1), StreamSeeds(2, 3)])
    model = fresh(2, [0, 1])
    states = unpack_state(model)
    masks = [prune(s, full_masks(s), 0.5) for s in states]
    packed = {n: torch.cat([m[n] for m in masks]) for n in masks[0]}
    train(model, stream, LoopConfig(Schedule(0.1), 0, 15, log_every=5), masks=packed)
    params = dict(model.named_parameters())
    for name, mask in packed.items():
        assert torch.all(params[name][mask == 0] == 0)
        assert torch.count_nonzero(params[name][mask == 1]) > 0.99 * mask.sum()


@pytest.mark.parametrize("execution", ["grouped", "looped"])
def test_packed_training_equals_sequential(digits, execution):
    """In float64: float32 runs agree to ~1e-7 until a ReLU input near zero lands on the other
    side in one of them, after which both are valid runs that differ by SGD-noise amounts.
    Both executions of the packed model; BN running statistics and counters are compared too."""
    seeds = [StreamSeeds(10, 20), StreamSeeds(30, 40), StreamSeeds(50, 60)]
    cfg = LoopConfig(Schedule(0.05, (8,)), 0, 12, log_every=4)
    _, stream = digits_stream(digits, seeds)
    packed = fresh(3, [1, 2, 3], execution).double()
    train(packed, stream, cfg)
    for k in range(3):
        _, single_stream = digits_stream(digits, [seeds[k]])
        single = fresh(1, [k + 1]).double()
        train(single, single_stream, cfg)
        ref = single.state_dict()
        got = unpack_state(packed)[k]
        changed = 0
        for name, value in ref.items():
            assert torch.allclose(got[name], value, atol=1e-9, rtol=1e-9), name
            changed += name.endswith("weight") and not torch.equal(value, fresh(1, [k + 1]).state_dict()[name].double())
        assert changed > 10  # the models did train


def test_resume_equals_uninterrupted(digits, tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        seeds = [StreamSeeds(5, 6)]
        cfg = LoopConfig(Schedule(0.1, (12,)), 3, 20, log_every=4, checkpoint_every=5)
        _, stream = digits_stream(digits, seeds)
        reference = fresh(1, [9])
        ref_result = train(reference, stream, cfg)

        class Kill(Exception):
            pass

        def die(step, *args):
            if step == 13:
                raise Kill

        model = fresh(1, [9])
        with pytest.raises(Kill):
            train(model, stream, cfg, checkpoint_path=tmp_path / "ck.pt", on_batch=die)
        resumed = fresh(1, [0])  # a different init: everything must come from the checkpoint
        result = train(resumed, stream, cfg, checkpoint_path=tmp_path / "ck.pt")
        for name, value in reference.state_dict().items():
            assert torch.equal(resumed.state_dict()[name], value), name
        assert result.log == ref_result.log
    finally:
        torch.use_deterministic_algorithms(False)


def test_rewind_restores_unpruned_weights_bit_exactly(digits):
    model = fresh(2, [3, 4])
    _, stream = digits_stream(digits, [StreamSeeds(0, 1), StreamSeeds(2, 3)])
    train(model, stream, LoopConfig(Schedule(0.1), 0, 5, log_every=5))
    rewind = unpack_state(model)
    train(model, stream, LoopConfig(Schedule(0.1), 5, 10, log_every=5))
    masks = [prune(s, full_masks(s), 0.2) for s in unpack_state(model)]
    load_packed(model, rewind)
    from lthfast.train.loop import apply_masks

    apply_masks(model, {n: torch.cat([m[n] for m in masks]) for n in masks[0]})
    for k, state in enumerate(unpack_state(model)):
        for name, value in rewind[k].items():
            expected = value * masks[k][name] if name in masks[k] else value
            assert torch.equal(state[name], expected), name


def test_divergence_is_recorded_not_raised(digits):
    _, stream = digits_stream(digits, [StreamSeeds(0, 1)])
    model = fresh(1, [0])
    result = train(model, stream, LoopConfig(Schedule(1e6), 0, 40, log_every=5))
    assert result.diverged[0] is not None and result.step < 40
    assert result.diverged[0]["step"] < 40
