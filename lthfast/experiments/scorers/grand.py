"""GraNd (Paul et al. 2021, "Deep learning on a data diet"): the norm of the per-example loss
gradient with respect to all weights, E_K ‖∇_w ℓ(f_w(x), y)‖₂, averaged over K networks at
step t (default 0: at initialisation, as that paper; ``--steps`` as for EL2N). Higher: harder.

Per-example gradients come batched from ``torch.func``: ``vmap`` of ``grad`` of a
``functional_call`` over a batch of examples, not a loop over them. All parameters count
(conv, linear, BatchNorm weights and biases), on un-augmented images with fp32 logits.

BatchNorm: in train mode it normalises with the batch's statistics, which couples the examples
of a batch (an example's gradient would depend on its batch mates). The gradient here is taken
with BatchNorm in eval mode, normalising with the running statistics, so each example's
gradient is its own (the authors' code evaluates its networks the same way). At step 0 the
running statistics are the initial ones (mean 0, variance 1). A plain one-example-at-a-time
autograd reference in eval mode gives the same numbers (tests/test_score_zoo.py).

    lthfast scores grand --dataset digits --models 4          # at initialisation
    lthfast scores grand --dataset digits --models 4 --steps 60
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from ...models.packed import unpack_state
from ..common import packed_model
from ..scores import SCORES, ScoreKind

# per-example gradients held at once: batch × parameters floats (2^25: 128 MiB in fp32)
GRADIENT_FLOATS = 2 ** 25


def example_gradient_norms(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖∇_w cross_entropy(net(x_i), y_i)‖₂ for every example i of the batch (a K=1 network,
    evaluated in eval mode: see the module docstring)."""
    net.eval()
    params = {n: p.detach() for n, p in net.named_parameters()}
    buffers = {n: b.detach() for n, b in net.named_buffers()}

    def loss(p, xi, yi):
        logits = functional_call(net, (p, buffers), (xi.unsqueeze(0),))
        logits = logits.reshape(1, -1)  # bf16 never reaches here; fp64 (tests) stays fp64
        return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)),
                               yi.unsqueeze(0))

    def squared_norm(p, xi, yi):
        return sum(g.pow(2).sum() for g in grad(loss)(p, xi, yi).values())

    return vmap(squared_norm, in_dims=(None, 0, 0))(params, x, y).sqrt()


def grand_per_model(ctx, model, hooks, data) -> list[np.ndarray]:
    """Each member's GraNd, member by member as a K=1 network, in batches that fit."""
    out = []
    for state in unpack_state(model):
        net = packed_model(ctx, [state])
        batch = max(1, min(1024, GRADIENT_FLOATS // sum(p.numel() for p in net.parameters())))
        norms = [example_gradient_norms(net, *data.eval_batch(s, min(s + batch, data.n), 1))
                 for s in range(0, data.n, batch)]
        out.append(torch.cat(norms).double().cpu().numpy())
    return out


SCORES.register("grand")(ScoreKind(default_steps=lambda p: 0, per_model=grand_per_model,
                                   min_steps=0, reference="Paul et al. 2021"))
