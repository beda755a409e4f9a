"""FusedSGD is torch.optim.SGD (momentum, weight decay) plus masking, element for element."""

from __future__ import annotations

import pytest
import torch

from lthfast.train.optim import FusedSGD, memory_order


def packed_params(k: int, seed: int = 0) -> list[torch.nn.Parameter]:
    """Shapes of a packed ResNet's parameters: channels_last conv, 1x1 conv, linear, BN vectors."""
    g = torch.Generator().manual_seed(seed)
    conv = torch.randn(k * 4, 3, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
    one = torch.randn(k * 4, 2, 1, 1, generator=g).contiguous(memory_format=torch.channels_last)
    return [torch.nn.Parameter(t) for t in
            (conv, one, torch.randn(k * 5, 6, generator=g), torch.randn(k * 4, generator=g))]


def random_masks(params, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    # contiguous masks on channels_last weights: flattened in the parameter's order, not theirs
    return [(torch.rand(p.shape, generator=g) > 0.4).float() if p.dim() > 1 else None
            for p in params]


def set_grads(params, step: int):
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).contiguous(
            memory_format=torch.channels_last if p.dim() == 4 else torch.contiguous_format)


def test_shared_lr_equals_torch_sgd_bit_for_bit_with_masks():
    k, lrs = 3, [0.1, 0.1, 0.1, 0.01, 0.01]
    ours, ref = packed_params(k), packed_params(k)
    masks = random_masks(ours)
    with torch.no_grad():
        for p, m in zip(ref, masks):
            if m is not None:
                p.mul_(m)
    opt = FusedSGD(ours, k, 0.9, masks, [5e-4] * k)
    sgd = torch.optim.SGD(ref, lr=lrs[0], momentum=0.9, weight_decay=5e-4)
    for step, lr in enumerate(lrs):
        set_grads(ours, step), set_grads(ref, step)
        opt.step(opt.lr_vector([lr] * k))
        for group in sgd.param_groups:
            group["lr"] = lr
        sgd.step()
        with torch.no_grad():  # what the old loop did after every update
            for p, m in zip(ref, masks):
                if m is not None:
                    p.mul_(m)
                    sgd.state[p]["momentum_buffer"].mul_(m)
    for p, q, m in zip(ours, ref, masks):
        assert torch.equal(p, q)
        assert p.grad is None and p.stride() == q.stride()
        if m is not None:
            assert torch.all(p[m == 0] == 0) and torch.count_nonzero(p[m == 1]) == int(m.sum())


def test_per_model_lr_and_decay_equal_k_separate_sgd_runs():
    k = 3
    lrs, decays = [0.1, 0.05, 0.2], [1e-4, 0.0, 5e-3]
    ours = packed_params(k)
    opt = FusedSGD(ours, k, 0.9, weight_decays=decays)
    refs = [[torch.nn.Parameter(memory_order(p.detach()).view(k, -1)[m].clone()) for p in ours]
            for m in range(k)]
    sgds = [torch.optim.SGD(refs[m], lr=lrs[m], momentum=0.9, weight_decay=decays[m])
            for m in range(k)]
    for step in range(4):
        set_grads(ours, step)
        for m in range(k):
            for r, p in zip(refs[m], ours):
                r.grad = memory_order(p.grad, p).view(k, -1)[m].clone()
            sgds[m].step()
        opt.step(opt.lr_vector(lrs))
    for m in range(k):
        for r, p in zip(refs[m], ours):
            assert torch.equal(memory_order(p.detach()).view(k, -1)[m], r)  # bit for bit


def test_continues_from_its_own_state_and_from_torch_sgd_state():
    k = 2
    a, b, c = packed_params(k), packed_params(k), packed_params(k)
    opt_a = FusedSGD(a, k, 0.9)
    sgd_b = torch.optim.SGD(b, lr=0.1, momentum=0.9)
    for step in range(3):
        set_grads(a, step), set_grads(b, step)
        opt_a.step(opt_a.lr_vector([0.1]))
        sgd_b.step()
    opt_c = FusedSGD(c := [torch.nn.Parameter(p.detach().clone()) for p in a], k, 0.9)
    opt_c.load_state_dict(opt_a.state_dict())
    opt_b = FusedSGD(b, k, 0.9)
    opt_b.load_state_dict(sgd_b.state_dict())  # a checkpoint written before FusedSGD
    for opt, params in ((opt_a, a), (opt_b, b), (opt_c, c)):
        set_grads(params, 9)
        opt.step(opt.lr_vector([0.1]))
    for p, q, r in zip(a, b, c):
        assert torch.equal(p, q) and torch.equal(p, r)


def test_refuses_parameters_that_are_not_k_blocks():
    with pytest.raises(ValueError, match="K equal blocks"):
        FusedSGD([torch.nn.Parameter(torch.zeros(5, 2))], 2)

