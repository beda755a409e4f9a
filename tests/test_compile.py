"""torch.compile on the CPU: one graph per forward, compiled once per process, same numbers.

Backends ``eager`` / ``aot_eager`` trace exactly as inductor would (dynamo + AOT autograd) and
need no C compiler, so graph breaks, recompiles and the compiled gradients are all checked here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lthfast.data.loader import BatchStream, DeviceData, StreamSeeds
from lthfast.models import build
from lthfast.prune.magnitude import full_masks, prune
from lthfast.train.evaluate import predict
from lthfast.train.loop import LoopConfig, train
from lthfast.train.schedule import Schedule
from lthfast.train.step import per_model_loss


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.config.error_on_recompile = False
    torch._dynamo.reset()


def model_for(k, execution, seed=0):
    model = build("resnet8", 10, k=k)
    model.reset_parameters([seed + m for m in range(k)])
    model.execution = execution
    return model.to(memory_format=torch.channels_last)


def batch(k, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3 * k, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 10, (8, k), generator=g)


@pytest.mark.parametrize("k,execution", [(1, "grouped"), (3, "grouped"), (1, "looped"),
                                         (3, "looped")])
def test_forward_compiles_as_one_graph(fresh_dynamo, k, execution):
    model = model_for(k, execution)
    x, y = batch(k)
    compiled = torch.compile(model, backend="eager", fullgraph=True, dynamic=False)
    per_model_loss(compiled(x), y).sum().backward()  # fullgraph: any graph break raises
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.mark.parametrize("execution", ["grouped", "looped"])
def test_compiled_and_eager_steps_agree(fresh_dynamo, execution):
    eager, compiled = model_for(3, execution), model_for(3, execution)
    x, y = batch(3)
    per_model_loss(eager(x), y).sum().backward()
    fn = torch.compile(compiled, backend="aot_eager", dynamic=False)
    per_model_loss(fn(x), y).sum().backward()
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name
    for (name, b), c in zip(eager.named_buffers(), compiled.buffers()):  # BN running statistics
        assert torch.allclose(b.float(), c.float(), rtol=1e-5, atol=1e-6), name
    assert any(not torch.equal(b, torch.zeros_like(b)) for b in compiled.buffers())


@pytest.mark.parametrize("execution", ["grouped", "looped"])
def test_second_level_and_new_replicate_compile_nothing(fresh_dynamo, digits, monkeypatch,
                                                        execution):
    """After a first stage (train + evaluate), a pruned level and a new replicate reuse its
    graphs."""
    monkeypatch.setenv("LTHFAST_COMPILE_BACKEND", "eager")
    data = DeviceData.from_dataset(digits, "train", "cpu")
    test = DeviceData.from_dataset(digits, "test", "cpu")
    indices = [np.arange(256)] * 2

    def stage(seed, masks=None):
        model = model_for(2, execution, seed)
        stream = BatchStream(data, indices, [StreamSeeds(seed, seed + 1)] * 2, 16)
        train(model, stream, LoopConfig(Schedule(0.05), 0, 3, log_every=3, compile=True),
              masks=masks)
        predict(model, test, compile=True)
        return model

    first = stage(0)
    torch._dynamo.config.error_on_recompile = True
    state = first.state_dict()
    stage(0, masks=prune(state, full_masks(state), 0.2))  # the next IMP level
    stage(7)  # another replicate


def test_bf16_autocast_trains_through_the_real_loop_on_cpu(digits):
    data = DeviceData.from_dataset(digits, "train", "cpu")
    model = model_for(2, "grouped")
    state = model.state_dict()
    masks = prune(state, full_masks(state), 0.5)
    conv_out = set()
    model.stem.register_forward_hook(lambda module, args, out: conv_out.add(out.dtype))
    stream = BatchStream(data, [np.arange(512)] * 2, [StreamSeeds(1, 2), StreamSeeds(3, 4)], 32)
    result = train(model, stream, LoopConfig(Schedule(0.05), 0, 12, log_every=4, amp=True),
                   masks=masks)
    assert conv_out == {torch.bfloat16}  # autocast really ran: the convolutions are bf16
    assert all(np.isfinite(entry["loss"]).all() for entry in result.log)
    assert result.log[-1]["loss"][0] < result.log[0]["loss"][0] + 0.5
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert params[name].dtype == torch.float32  # fp32 master weights
        assert torch.all(params[name][mask == 0] == 0), name


def test_evaluation_compiles_one_graph_when_the_last_batch_is_short(fresh_dynamo, digits,
                                                                    monkeypatch):
    """The last batch is padded to a full one (the last ``batch_size`` examples), so a set whose
    size is not a multiple of the batch is one compiled graph, not two; same logits."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("LTHFAST_COMPILE_BACKEND", "eager")
    test = DeviceData.from_dataset(digits, "test", "cpu")
    batch = 64
    assert test.n % batch and test.n > batch
    model = model_for(2, "grouped")
    counters.clear()
    logits = predict(model, test, batch_size=batch, compile=True)
    assert counters["stats"]["unique_graphs"] == 1
    whole = predict(model, test, batch_size=test.n)  # eager, one batch
    assert logits.shape == whole.shape == (2, test.n, 10)
    assert torch.allclose(logits, whole, rtol=1e-5, atol=1e-5)
