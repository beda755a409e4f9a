"""The training step is capturable: recorded once and replayed, it equals the eager run.

CUDA graphs cannot run here, so the proof uses their CPU stand-in (``EmulatedGraph``): it
replays exactly the aten ops of one recorded step on exactly the same tensors, so anything the
step takes from the host and not from its tensor inputs (a learning rate as a Python number, a
row index, a tensor made from host values) is frozen at its captured value, as in a CUDA graph.
The first test shows that the stand-in catches such a step; the others that the real one is not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lthfast.data.loader import BatchStream, DeviceData, StreamSeeds
from lthfast.errors import UserError
from lthfast.experiments.common import Runtime
from lthfast.models import build
from lthfast.prune.magnitude import full_masks, prune
from lthfast.train import capture
from lthfast.train.capture import CaptureError, CapturedStep, EmulatedGraph, graph_for
from lthfast.train.optim import FusedSGD
from lthfast.train.step import TrainStep
from lthfast.train.hooks import Hook
from lthfast.train.loop import LoopConfig, train
from lthfast.train.schedule import Schedule


def run_steps(step, inputs):
    return [tuple(t.clone() for t in step(*x)) for x in inputs]


def test_the_stand_in_freezes_host_values_as_a_cuda_graph_does():
    """A step reading a Python number that changes replays with its captured value; the same
    step taking that number as a tensor input replays exactly."""
    def make(read_python: bool):
        state, scale = torch.zeros(4), {"now": 1.0}

        def step(x, lr):
            scale["now"] += 1.0  # host state that changes every call, like a warmup's lr
            if read_python:
                state.add_(x, alpha=scale["now"])
            else:
                state.add_(x * lr)
            return (state,)
        return step, scale

    xs = [(torch.full((4,), float(i)), torch.tensor([i + 2.0])) for i in range(6)]
    for read_python, equal in ((True, False), (False, True)):
        eager, _ = make(read_python)
        captured, _ = make(read_python)
        replayed = CapturedStep(captured, EmulatedGraph(), warmup=1)
        got = run_steps(replayed, xs)
        assert replayed.captured
        assert all(torch.equal(a[0], b[0]) for a, b in zip(got, run_steps(eager, xs))) == equal


@pytest.mark.parametrize("body,why", [
    (lambda x: x.add_(sum(x.tolist())), "reads device values"),
    (lambda x: x.add_(torch.tensor([1.0, 2.0, 3.0])), "tensor from host values"),
    (lambda x: x[x > 1].add_(1), "value-dependent shape"),
])
def test_the_stand_in_refuses_what_cuda_cannot_capture(body, why):
    step = CapturedStep(lambda x: (body(x),), EmulatedGraph(), warmup=0)
    with pytest.raises(CaptureError, match="run without --cuda-graph"):
        step(torch.arange(3.0))
    assert not step.captured and why in step.failed


def test_integer_indexing_is_capturable_and_inputs_must_keep_their_shape():
    table = torch.arange(10.0)
    step = CapturedStep(lambda i: (table[i] * 2,), EmulatedGraph(), warmup=0)
    assert [step(torch.tensor([i]))[0].item() for i in (1, 4, 7)] == [2.0, 8.0, 14.0]
    assert step.captured
    with pytest.raises(ValueError, match="captured step takes"):
        step(torch.tensor([1, 2]))


def test_a_capture_that_fails_is_an_error_or_if_optional_a_notice_then_eager(capsys):
    state = torch.zeros(3)

    def syncing_step(x):
        state.add_(float(x.sum()))  # a host read of a device value: CUDA cannot capture it
        return (state,)

    step = CapturedStep(syncing_step, EmulatedGraph(), warmup=1)
    step(torch.zeros(3))
    with pytest.raises(CaptureError, match="not capturable.*run without --cuda-graph"):
        step(torch.zeros(3))
    state.zero_()
    step = CapturedStep(syncing_step, EmulatedGraph(), warmup=1, required=False)
    for i in range(4):
        step(torch.full((3,), float(i)))
    assert not step.captured and "not capturable" in step.failed
    assert torch.equal(state, torch.full((3,), 3.0 * (0 + 1 + 2 + 3)))  # every step ran once
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("notice: CUDA graph capture failed")


class PoisoningGraph(EmulatedGraph):
    """The stand-in with CUDA's rule: a failed capture turns graphs off in the process."""

    poisons_process = True


def test_a_failed_capture_that_turns_graphs_off_says_so_once_and_then_refuses(capsys,
                                                                            monkeypatch):
    monkeypatch.setattr(capture, "_broken", None)
    bad = CapturedStep(lambda x: (x.add_(x.sum().item()),), PoisoningGraph(), warmup=0,
                       required=False)
    bad(torch.zeros(2))
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("notice: CUDA graphs off for the rest of this process")
    assert capture.broken()
    # a later stage: a fine step, but graphs are off: an error if required, else a notice
    good = CapturedStep(lambda x: (x.add_(1),), PoisoningGraph(), warmup=0)
    with pytest.raises(CaptureError, match="earlier capture in this process failed"):
        good(torch.zeros(2))
    monkeypatch.setenv("LTHFAST_CAPTURE_BACKEND", "emulate")  # the loop's check, before a stage
    with pytest.raises(CaptureError, match="run without --cuda-graph.*fresh process"):
        capture.capture_graph(torch.device("cpu"))


def test_a_recompile_inside_the_capture_is_an_error_not_a_captured_compile(monkeypatch):
    """Capture runs under fail_on_recompile: the compiled forward must compile in warm-up."""
    import torch._dynamo

    torch._dynamo.reset()
    fn = torch.compile(lambda x: x * 2 + 1, backend="aot_eager", dynamic=False)
    step = CapturedStep(lambda x: (fn(x),), EmulatedGraph(), warmup=1)
    step(torch.ones(4))  # compiles for shape (4,)
    with pytest.raises(CaptureError, match="recompile"):
        step(torch.ones(5))  # a new shape at capture: would compile inside the capture
    ok = CapturedStep(lambda x: (fn(x),), EmulatedGraph(), warmup=1)
    assert [ok(torch.full((4,), float(i)))[0][0].item() for i in range(3)] == [1.0, 3.0, 5.0]
    assert ok.captured  # the same shape as warm-up: captured, and compile + replay is right
    torch._dynamo.reset()


def test_a_step_captured_before_any_eager_step_trains_with_momentum():
    """No warm-up: the captured first step must still update a momentum buffer that later
    replays read (a buffer made by the first step, ``buf = g``, was that step's temporary)."""
    def make():
        torch.manual_seed(0)
        model = build("resnet8", 10, k=1)
        opt = FusedSGD(list(model.parameters()), 1, momentum=0.9)
        return model, TrainStep(model, opt, amp=False)

    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4, 1), generator=g),
                torch.tensor([0.1])) for _ in range(4)]
    eager_model, eager = make()
    for b in batches:
        eager(*b)
    replayed_model, step = make()
    replayed = CapturedStep(step, EmulatedGraph(), step.opt.params, warmup=0)
    for b in batches:
        replayed(*b)
    assert replayed.captured
    for (name, a), b in zip(eager_model.state_dict().items(),
                            replayed_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(eager.opt.buf, step.opt.buf) and step.opt.buf.abs().sum() > 0


@pytest.fixture(scope="module")
def train_data(digits):
    return DeviceData.from_dataset(digits, "train", "cpu")


def run(train_data, k, capture, per_model, steps=11, hooks=(), amp=False):
    torch.manual_seed(0)
    model = build("resnet8", 10, k=k).to(memory_format=torch.channels_last)
    state = model.state_dict()
    masks = prune(state, full_masks(state), 0.5)
    schedule = (tuple(Schedule(0.05 * (m + 1), (7,), warmup=5) for m in range(k)) if per_model
                else Schedule(0.1, (7,), warmup=5))  # lrs change at every warmup step and at 7
    decay = tuple(1e-4 * (m + 1) for m in range(k)) if per_model else 5e-4
    stream = BatchStream(train_data, [np.arange(train_data.n)] * k,
                         [StreamSeeds(m, 10 + m) for m in range(k)], 16)
    cfg = LoopConfig(schedule, 2, 2 + steps, weight_decay=decay, log_every=4, capture=capture,
                     amp=amp)
    result = train(model, stream, cfg, masks=masks, hooks=hooks)
    return model, result


@pytest.mark.parametrize("k,per_model,amp", [(1, False, False), (3, True, False), (3, True, True)])
def test_replayed_training_equals_eager_training_bit_for_bit(train_data, monkeypatch, k, per_model,
                                                              amp):
    """The real loop: loader, per-step learning rates (warmup, a milestone), per-model lrs and
    weight decays, masks, bf16 autocast, loss window and logging, through eager warm-up,
    capture and replay."""
    eager_model, eager = run(train_data, k, False, per_model, amp=amp)
    monkeypatch.setenv("LTHFAST_CAPTURE_BACKEND", "emulate")
    replayed_model, replayed = run(train_data, k, True, per_model, amp=amp)
    assert replayed.captured and not eager.captured
    assert replayed.log == eager.log and len(eager.log) == 4  # losses and lrs at steps 4, 8, 12, 13
    for (name, a), b in zip(eager_model.state_dict().items(), replayed_model.state_dict().values()):
        assert torch.equal(a, b), name  # weights and BatchNorm statistics
    assert torch.equal(eager.optimizer_state["momentum"], replayed.optimizer_state["momentum"])


def test_no_capture_on_the_cpu_or_with_hooks(train_data, monkeypatch, capsys):
    _, plain = run(train_data, 1, True, False, steps=5)
    assert not plain.captured  # no CUDA: the step runs eagerly
    assert graph_for(torch.device("cpu")) is None

    class Counting(Hook):
        def __init__(self):
            self.batches = 0

        def on_batch(self, step, logits, y, idx):
            self.batches += 1

    monkeypatch.setenv("LTHFAST_CAPTURE_BACKEND", "emulate")
    hook = Counting()
    _, hooked = run(train_data, 1, True, False, steps=5, hooks=[hook])
    assert not hooked.captured and hook.batches == 5  # hooks run on the host: no capture
    err = capsys.readouterr().err.splitlines()  # ... and it says so, in one line
    assert err == ["notice: --cuda-graph off for this stage: its hooks (Counting) run on the "
                   "host at every step; training eagerly"]
    monkeypatch.setenv("LTHFAST_CAPTURE_BACKEND", "bogus")
    with pytest.raises(ValueError, match="LTHFAST_CAPTURE_BACKEND"):
        graph_for(torch.device("cpu"))


def test_a_replayed_step_launches_only_its_inputs_and_the_loss_record(train_data, monkeypatch):
    """Per replayed step the host still launches the loader's few ops, the copies into the
    graph's static inputs (images, labels, lr) and the loss record: ~10, against ~190 eager."""
    from lthfast.train.counting import OpCounter, count_syncs

    monkeypatch.setenv("LTHFAST_CAPTURE_BACKEND", "emulate")
    counts = {}
    for steps in (6, 14):
        with OpCounter() as ops, count_syncs() as syncs:
            _, result = run(train_data, 3, True, True, steps=steps)
        assert result.captured
        counts[steps] = (ops.total, sum(syncs.values()))
    per_step = (counts[14][0] - counts[6][0]) / 8
    assert 0 < per_step <= 12
    assert counts[14][1] - counts[6][1] == 2  # the two extra logging steps' reads, nothing else


def test_the_runtime_asks_for_cuda_graphs_only_where_they_can_run():
    with pytest.raises(UserError, match="needs a CUDA device"):
        Runtime(device="cpu", cuda_graph=True)
    with pytest.raises(UserError, match="needs --loader device"):  # ffcv's threads touch CUDA
        Runtime(device="cuda", cuda_graph=True, loader="ffcv")
    assert Runtime(device="cuda", cuda_graph=True).cuda_graph
