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
from lthfast.train.hooks import Hook
from lthfast.train.loop import LoopConfig, train
from lthfast.train.optim import unflatten
from lthfast.train.schedule import Schedule


@pytest.mark.parametrize("name,params", [("resnet20", 272_474), ("resnet32", 466_906),
                                         ("resnet56", 855_770)])
def test_parameter_counts(name, params):
    assert build(name, 10).num_params() == params
    assert build(name, 10, k=3).num_params() == params  # per model
    assert abs(params / 1e6 - {"resnet20": 0.27, "resnet32": 0.46, "resnet56": 0.85}[name]) < 0.01


# Table 1 of the paper's appendix, column by column: network, batch size, pre-training lr, lr,
# momentum, weight decay, decay factor, milestones, iterations, IMP pruning fraction.
TABLE1 = {
    "cifar10": ("resnet20", 128, 0.4, 0.1, 0.9, 1e-4, 0.1, (31200, 46800), 62400, 0.2),
    "cifar100": ("resnet32", 128, 0.4, 0.1, 0.9, 1e-4, 0.1, (31200, 46800), 62400, 0.2),
    "cinic10": ("resnet56", 256, 0.1, 0.1, 0.9, 1e-4, 0.1, (15625, 23440), 31250, 0.2),
}


@pytest.mark.parametrize("dataset", list(TABLE1))
def test_presets_are_table1(dataset):
    p = PRESETS[dataset]
    assert (p.model, p.batch_size, p.pretrain_lr, p.lr, p.momentum, p.weight_decay, p.gamma,
            p.milestones, p.train_steps, p.prune_fraction) == TABLE1[dataset]


def test_table1_schedules():
    c10, cinic = PRESETS["cifar10"], PRESETS["cinic10"]
    s = Schedule(c10.lr, c10.milestones)
    assert [s.lr_at(t) for t in (0, 31199, 31200, 46799, 46800, 62399)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    s = Schedule(cinic.lr, cinic.milestones)
    assert [s.lr_at(t) for t in (15624, 15625, 23439, 23440)] == pytest.approx(
        [0.1, 0.01, 0.01, 0.001])
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


@pytest.mark.parametrize("momentum", [0.5, None])  # None: a cumulative average (BN recompute)
def test_looped_batchnorm_follows_the_packed_models_settings(momentum):
    """BatchNorm momentum and eps are module attributes, not tensors: the looped execution
    must use the packed model's, and every model must count batches from the same number."""
    torch.manual_seed(0)
    models = {}
    for execution in ("grouped", "looped"):
        m = build("resnet8", 10, k=3)
        m.reset_parameters([1, 2, 3])
        m.execution = execution
        for bn in (b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)):
            bn.momentum, bn.eps = momentum, 1e-3
        models[execution] = m
    x = torch.randn(4, 9, 16, 16)
    for _ in range(2):
        for m in models.values():
            m(x)
    grouped, looped = (models[e].state_dict() for e in ("grouped", "looped"))
    for name in grouped:
        if "running" in name or "num_batches" in name:
            assert torch.allclose(grouped[name], looped[name], atol=1e-6), name


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
    # a schedule's shape (x0.1 at 100): at a constant lr 0.1 the test accuracy of the last
    # step's weights and BN statistics swings (0.69 after 100 steps with today's wheels)
    result = train(model, stream, LoopConfig(Schedule(0.1, (100,), 0.1), 0, 150, log_every=20))
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
            changed += name.endswith("weight") and not torch.equal(
                value, fresh(1, [k + 1]).state_dict()[name].double())
        assert changed > 10  # the models did train


@pytest.mark.parametrize("execution", ["grouped", "looped"])
def test_packed_models_with_own_lr_weight_decay_and_mask_equal_separate_runs(digits, execution):
    """Each packed model its own schedule (one with warmup), weight decay and pruning mask
    (FusedSGD's per-element path), against K separate runs; float64, as above."""
    seeds = [StreamSeeds(10, 20), StreamSeeds(30, 40), StreamSeeds(50, 60)]
    schedules = (Schedule(0.05, (8,)), Schedule(0.1, (6,), warmup=4), Schedule(0.02))
    decays = (1e-4, 5e-3, 0.0)
    inits = [1, 2, 3]
    masks = [prune(s, full_masks(s), 0.3 + 0.2 * k)
             for k, s in enumerate(unpack_state(fresh(3, inits)))]
    _, stream = digits_stream(digits, seeds)
    packed = fresh(3, inits, execution).double()
    result = train(packed, stream, LoopConfig(schedules, 0, 12, weight_decay=decays, log_every=4),
                   masks={n: torch.cat([m[n] for m in masks]) for n in masks[0]})
    assert result.log[0]["lr"] == [0.05, 0.1, 0.02]  # step 4: model 1's warmup just ended
    for k in range(3):
        _, single_stream = digits_stream(digits, [seeds[k]])
        single = fresh(1, [inits[k]]).double()
        train(single, single_stream, LoopConfig(schedules[k], 0, 12, weight_decay=decays[k],
                                                log_every=4), masks=masks[k])
        got = unpack_state(packed)[k]
        for name, value in single.state_dict().items():
            assert torch.allclose(got[name], value, atol=1e-9, rtol=1e-9), (k, name)
        for name, mask in masks[k].items():
            assert torch.all(got[name][mask == 0] == 0)


@pytest.mark.parametrize("decays", [1e-4, (1e-4, 2e-4)], ids=["shared", "per-model"])
def test_pruned_momentum_stays_zero_and_training_continues_from_returned_state(digits, decays):
    seeds = [StreamSeeds(0, 1), StreamSeeds(2, 3)]
    _, stream = digits_stream(digits, seeds)
    states = unpack_state(fresh(2, [0, 1]))
    masks = [prune(s, full_masks(s), 0.5) for s in states]
    packed_masks = {n: torch.cat([m[n] for m in masks]) for n in masks[0]}

    def run(spans):
        model, state = fresh(2, [0, 1]).double(), None
        for start, end in spans:
            result = train(model, stream, LoopConfig(Schedule(0.1, (5,)), start, end,
                                                     weight_decay=decays, log_every=3),
                           masks=packed_masks, optimizer_state=state)
            state = result.optimizer_state
        return model, result

    whole, result = run([(0, 9)])
    params = dict(whole.named_parameters())
    buffers = unflatten(result.optimizer_state["momentum"], list(whole.parameters()))
    assert len(buffers) == len(params)
    names = list(params)  # the optimizer's state is keyed by parameter order
    for i, buf in enumerate(buffers):
        if names[i] in packed_masks:
            mask = packed_masks[names[i]]
            assert torch.all(buf[mask == 0] == 0) and torch.count_nonzero(buf[mask == 1]) > 0
    split, _ = run([(0, 4), (4, 9)])  # stop at 4, continue with the returned momentum
    for name, value in whole.state_dict().items():
        assert torch.equal(split.state_dict()[name], value), name


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

        class Die(Hook):
            def on_batch(self, step, *args):
                if step == 13:
                    raise Kill

        model = fresh(1, [9])
        with pytest.raises(Kill):
            train(model, stream, cfg, checkpoint_path=tmp_path / "ck.pt", hooks=[Die()])
        resumed = fresh(1, [0])  # a different init: everything must come from the checkpoint
        result = train(resumed, stream, cfg, checkpoint_path=tmp_path / "ck.pt")
        for name, value in reference.state_dict().items():
            assert torch.equal(resumed.state_dict()[name], value), name
        assert result.log == ref_result.log
    finally:
        torch.use_deterministic_algorithms(False)


def test_resume_restores_torch_rng_and_refuses_other_masks(digits, tmp_path):
    """A hook drawing from torch's RNG sees the same numbers with and without an interruption;
    a checkpoint written under one pruning mask does not resume a run under another."""
    from lthfast.errors import UserError

    seeds = [StreamSeeds(5, 6)]
    cfg = LoopConfig(Schedule(0.1), 0, 10, log_every=5, checkpoint_every=4)
    _, stream = digits_stream(digits, seeds)
    state = unpack_state(fresh(1, [9]))[0]
    mask, other = prune(state, full_masks(state), 0.2), prune(state, full_masks(state), 0.4)

    class drawing(Hook):
        def __init__(self, draws, stop_at=None):
            self.draws, self.stop_at = draws, stop_at

        def on_batch(self, step, *args):
            if step == self.stop_at:
                raise KeyboardInterrupt
            self.draws.append(torch.rand(()).item())

    torch.manual_seed(123)
    uninterrupted = []
    train(fresh(1, [9]), stream, cfg, masks=mask, hooks=[drawing(uninterrupted)])
    torch.manual_seed(123)
    before, after = [], []
    with pytest.raises(KeyboardInterrupt):
        train(fresh(1, [9]), stream, cfg, masks=mask, checkpoint_path=tmp_path / "ck.pt",
              hooks=[drawing(before, stop_at=6)])
    torch.manual_seed(999)  # a fresh process would not share the RNG state
    with pytest.raises(UserError, match="other pruning masks"):
        train(fresh(1, [9]), stream, cfg, masks=other, checkpoint_path=tmp_path / "ck.pt")
    train(fresh(1, [9]), stream, cfg, masks=mask, checkpoint_path=tmp_path / "ck.pt",
          hooks=[drawing(after)])
    assert before[:4] + after == uninterrupted  # steps 0-3, then 4-9 again from the checkpoint


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


def test_per_example_outputs_match_their_definitions():
    from lthfast.train.evaluate import accuracy, el2n, example_losses

    torch.manual_seed(0)
    logits = torch.randn(2, 6, 4)  # K=2 models, 6 examples, 4 classes
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    losses = example_losses(logits, labels)
    assert losses.shape == (2, 6)
    for k in range(2):
        for i in range(6):
            expected = -torch.log_softmax(logits[k, i], -1)[labels[i]]
            assert losses[k, i] == pytest.approx(expected.item(), abs=1e-6)
            onehot = torch.nn.functional.one_hot(labels[i], 4).float()
            assert el2n(logits, labels)[k, i] == pytest.approx(
                (logits[k, i].softmax(-1) - onehot).norm().item(), abs=1e-6)
        assert accuracy(logits, labels)[k] == pytest.approx(
            (logits[k].argmax(-1) == labels).float().mean().item())


def test_init_follows_open_lth_and_lth_diet():
    """Kaiming-normal fan-in convs and linear weights (std √(2/fan_in)), BN weight U(0,1), BN
    bias 0: what open_lth and the paper's code draw. Fan-out (the old init) would give a conv
    std of √(2/(out·9)), a factor √(out/in) away for the widening convs."""
    model = build("resnet56", 10, k=2)
    model.reset_parameters([1, 2])
    state = unpack_state(model)[0]
    conv = state["blocks.9.conv1.weight"]  # 16 -> 32 channels: fan-in 144, fan-out 288
    assert conv.std().item() == pytest.approx((2 / 144) ** 0.5, rel=0.05)
    fc = state["fc.weight"]
    assert fc.std().item() == pytest.approx((2 / 64) ** 0.5, rel=0.15)
    bn_w = torch.cat([v for n, v in state.items() if n.endswith("bn1.weight")])
    assert bn_w.min() >= 0 and bn_w.max() <= 1 and 0.4 < bn_w.mean() < 0.6 and bn_w.std() > 0.2
    assert all(torch.count_nonzero(v) == 0 for n, v in state.items() if n.endswith("bn1.bias"))


def test_after_backward_hook_sees_this_steps_gradients(digits):
    """A gradient hook sees p.grad between backward and update, once per step, and the update
    that follows is the one made from those gradients."""
    _, stream = digits_stream(digits, [StreamSeeds(0, 1)])
    model = fresh(1, [0])
    seen = []

    class Norms(Hook):
        wants_gradients = True

        def after_backward(self, step, model):
            grads = [p.grad for p in model.parameters()]
            assert all(g is not None for g in grads)
            seen.append((step, torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()))

    before = model.stem.weight.detach().clone()
    train(model, stream, LoopConfig(Schedule(0.1), 0, 1, momentum=0.0, weight_decay=0.0),
          hooks=[Norms()])
    assert [s for s, _ in seen] == [0] and seen[0][1] > 0
    assert not torch.equal(before, model.stem.weight)


def test_a_replicate_trains_bit_identically_alone_or_packed(digits):
    """On the CPU each packed model's arithmetic is independent of K and of its neighbours, so
    '1 replicate, then a second' ends bit-equal to '2 at once'."""
    torch.use_deterministic_algorithms(True)
    try:
        cfg = LoopConfig(Schedule(0.1), 0, 12, log_every=4)
        _, alone_stream = digits_stream(digits, [StreamSeeds(7, 8)])
        alone = fresh(1, [5])
        alone_result = train(alone, alone_stream, cfg)
        _, pair_stream = digits_stream(digits, [StreamSeeds(7, 8), StreamSeeds(9, 10)])
        pair = fresh(2, [5, 6])
        pair_result = train(pair, pair_stream, cfg)
        a, b = unpack_state(alone)[0], unpack_state(pair)[0]
        assert all(torch.equal(a[n], b[n]) for n in a)
        assert [r["loss"][0] for r in alone_result.log] == [r["loss"][0] for r in pair_result.log]
        test = DeviceData(digits.test_images, digits.test_labels, digits.meta["mean"],
                          digits.meta["std"], digits.augment, "cpu")
        assert summary(predict(alone, test), test.labels)["loss"][0] == \
            summary(predict(pair, test), test.labels)["loss"][0]
    finally:
        torch.use_deterministic_algorithms(False)
