"""CIFAR ResNet-(6n+2) of He et al. (2016), with K independent copies packed into one network.

Every convolution is a grouped convolution with ``groups=K`` over K·C channels and every
BatchNorm runs over K·C channels, so model k owns channel block k everywhere: its BN statistics
(running ones included) see only its own batch and its gradients only its own loss. The result
is exactly K separate networks trained side by side, at the launch cost of one — the main lever
on a GPU, where a ResNet-20 step at batch 128 is launch-bound. K=1 is the plain network.

How the K models run is the model's ``execution`` (one registry entry each, same parameters,
same results to float tolerance):
- ``grouped``: one grouped-conv network over K·C channels (the GPU default);
- ``looped``: model after model, each on views of its slice of the packed parameters (the CPU
  default). A CPU step is compute- and memory-bound, not launch-bound, and K·C-channel
  activations (84 MB at K=10, batch 128) fall out of the caches: oneDNN's grouped kernels ran
  1.1-1.4x slower than K single models one after another (BENCHMARKS.md, section c);
- ``auto``: looped on the CPU, grouped elsewhere.

Every packed dimension is the leading one, so model k's slice of a parameter is block k of K
equal blocks along dim 0: ``param.reshape(K, -1)[k]`` (a view for contiguous tensors; a
channels_last conv weight needs ``reshape``, or ``view(K, *single_shape)``), which pruning,
initialisation and unpacking rely on.

Widths 16/32/64, 3×3 convs, BN, 1×1 projection shortcuts (with BN) where the shape changes;
ResNet-20/32/56 have 0.27M / 0.46M / 0.85M parameters.

    python -c "from lthfast.models import build; print(build('resnet20', 10, k=4).num_params())"
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


class PackedConv(nn.Conv2d):
    """K independent convs: weight is (K·out)×in×kh×kw, i.e. the K weights concatenated."""

    def __init__(self, k: int, c_in: int, c_out: int, kernel: int, stride: int = 1):
        super().__init__(k * c_in, k * c_out, kernel, stride=stride, padding=kernel // 2,
                         groups=k, bias=False)
        self.k = k


class PackedLinear(nn.Module):
    """K independent linear layers on B×(K·C) features -> B×K×O logits."""

    def __init__(self, k: int, c_in: int, c_out: int):
        super().__init__()
        self.k, self.c_in, self.c_out = k, c_in, c_out
        self.weight = nn.Parameter(torch.empty(k * c_out, c_in))
        self.bias = nn.Parameter(torch.empty(k * c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.view(self.k, self.c_out, self.c_in)
        out = torch.einsum("bkc,koc->bko", x.view(x.shape[0], self.k, self.c_in), w)
        return out + self.bias.view(self.k, self.c_out)


class Block(nn.Module):
    def __init__(self, k: int, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = PackedConv(k, c_in, c_out, 3, stride)
        self.bn1 = nn.BatchNorm2d(k * c_out)
        self.conv2 = PackedConv(k, c_out, c_out, 3)
        self.bn2 = nn.BatchNorm2d(k * c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(PackedConv(k, c_in, c_out, 1, stride),
                                          nn.BatchNorm2d(k * c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class PackedResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, k: int = 1, widths=(16, 32, 64),
                 execution: str = "auto"):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 >= 8, got {depth}")
        n = (depth - 2) // 6
        self.depth, self.num_classes, self.k, self.widths = depth, num_classes, k, tuple(widths)
        self.stem = PackedConv(k, 3, widths[0], 3)
        self.stem_bn = nn.BatchNorm2d(k * widths[0])
        blocks, c_in = [], widths[0]
        for stage, width in enumerate(widths):
            for i in range(n):
                blocks.append(Block(k, c_in, width, 2 if (stage > 0 and i == 0) else 1))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = PackedLinear(k, c_in, num_classes)
        self.reset_parameters()
        self.execution = execution

    @property
    def execution(self) -> str:
        return self._execution

    @execution.setter
    def execution(self, value: str) -> None:
        if value not in EXECUTIONS and value != "auto":
            raise ValueError(f"unknown execution '{value}' (known: auto, {', '.join(EXECUTIONS)})")
        self._execution = value
        # The looped execution's K=1 twin is made here, never in forward: torch.compile cannot
        # trace the making of parameters (fullgraph fails), so it must exist before any call.
        if (self.k > 1 or value == "looped") and "_twin_model" not in self.__dict__:
            self.__dict__["_twin_model"] = PackedResNet(self.depth, self.num_classes, 1,
                                                        self.widths, "grouped")

    def reset_parameters(self, seeds: list[int] | None = None) -> None:
        """Initialise each packed model from its own seed, as the lottery-ticket codebases do.

        open_lth's CIFAR ResNets (``kaiming_normal`` + ``bn_initializers.uniform``) and the
        paper's own code (lth_diet: Composer's ``KAIMING_NORMAL`` + ``BN_UNIFORM``) draw conv and
        linear weights Kaiming-normal with fan-in and gain √2 (std √(2 / fan_in)), BatchNorm
        weights U(0, 1) and BatchNorm biases 0; the linear bias keeps PyTorch's default
        U(±1/√fan_in). All draws come from a generator seeded by the model's own seed.
        """
        seeds = seeds if seeds is not None else list(range(self.k))
        assert len(seeds) == self.k
        for m in range(self.k):
            g = torch.Generator().manual_seed(int(seeds[m]))
            for module in self.modules():
                if isinstance(module, PackedConv):
                    w = module.weight.data.view(self.k, -1)[m]
                    fan_in = module.weight[0].numel()  # in-channels (per group) × kh × kw
                    w.copy_(torch.randn(w.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                elif isinstance(module, PackedLinear):
                    w = module.weight.data.view(self.k, -1)[m]
                    w.copy_(torch.randn(w.shape, generator=g) * (2.0 / module.c_in) ** 0.5)
                    bound = 1.0 / module.c_in ** 0.5
                    b = module.bias.data.view(self.k, -1)[m]
                    b.copy_(torch.rand(b.shape, generator=g) * 2 * bound - bound)
                elif isinstance(module, nn.BatchNorm2d):
                    module.reset_running_stats()
                    w = module.weight.data.view(self.k, -1)[m]
                    w.copy_(torch.rand(w.shape, generator=g))
                    module.bias.data.view(self.k, -1)[m].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B×3K×H×W (model k's image in channels 3k..3k+2) -> logits B×K×classes."""
        execution = self.execution
        if execution == "auto":
            execution = "looped" if x.device.type == "cpu" and self.k > 1 else "grouped"
        return EXECUTIONS[execution](self, x)

    def forward_grouped(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.stem_bn(self.stem(x)))
        out = self.blocks(out)
        out = out.mean((2, 3))  # adaptive_avg_pool2d(out, 1)'s numbers; its CUDA backward is
        # not deterministic, mean's is (--deterministic raises on such ops)
        return self.fc(out)

    def forward_looped(self, x: torch.Tensor) -> torch.Tensor:
        """Model after model through a K=1 twin that borrows views of each model's slice."""
        k = self.k
        twin = self._twin()
        twin.train(self.training)
        # unbind once per tensor: its backward stacks the K slices' gradients in one copy, where
        # K separate slicings would each add a full-size zero-padded gradient
        params = {n: p.view(k, *single_shape(p, k)).unbind(0) for n, p in self.named_parameters()}
        buffers = {n: b.view(k, *single_shape(b, k)).unbind(0) for n, b in self.named_buffers()
                   if b.dim() > 0}  # BN running stats: updated in place through the views
        counters = {n: b for n, b in self.named_buffers() if b.dim() == 0}  # num_batches_tracked
        # the K models share one batch counter: the first call advances it, the others each
        # see it as it was (momentum=None averages by it)
        before = {n: b.clone() for n, b in counters.items()} if k > 1 else {}
        self._sync_batchnorm(twin)
        outs = []
        for m in range(k):
            tensors = {n: v[m] for n, v in (params | buffers).items()} | (
                counters if m == 0 else {n: b.clone() for n, b in before.items()})
            xm = x[:, 3 * m : 3 * m + 3].contiguous(memory_format=torch.channels_last)
            outs.append(functional_call(twin, tensors, (xm,)))
        return torch.cat(outs, dim=1)

    def _sync_batchnorm(self, twin: "PackedResNet") -> None:
        """BatchNorm settings are attributes, not tensors, so ``functional_call`` does not
        carry them: give the twin this model's momentum and eps (e.g. momentum=None while
        BatchNorm statistics are recomputed)."""
        for mine, its in zip(self.modules(), twin.modules()):
            if isinstance(mine, nn.modules.batchnorm._BatchNorm) and (
                    its.momentum != mine.momentum or its.eps != mine.eps):
                its.momentum, its.eps = mine.momentum, mine.eps

    def _twin(self) -> "PackedResNet":
        """A K=1 network of the same shape (not a submodule: it owns no state of this model).
        Its own tensors are never used, every one is swapped for a view, so it stays on the CPU."""
        return self.__dict__["_twin_model"]

    def num_params(self) -> int:
        """Parameters of one model."""
        return sum(p.numel() for p in self.parameters()) // self.k


EXECUTIONS: dict[str, Callable[[PackedResNet, torch.Tensor], torch.Tensor]] = {
    "grouped": PackedResNet.forward_grouped,
    "looped": PackedResNet.forward_looped,
}


def single_shape(t: torch.Tensor, k: int) -> tuple[int, ...]:
    return (t.shape[0] // k, *t.shape[1:]) if t.dim() > 0 else ()


def unpack_state(model: "PackedResNet") -> list[dict[str, torch.Tensor]]:
    """The K models' state dicts, each shaped as a K=1 model's (on the CPU, detached copies)."""
    k = model.k
    state = {n: t.detach().cpu() for n, t in model.state_dict().items()}
    return [{n: (t.reshape(k, -1)[m].reshape(single_shape(t, k)).clone() if t.dim() > 0
                 else t.clone()) for n, t in state.items()} for m in range(k)]


def pack_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """K single-model state dicts (or masks) -> one packed dict (concatenated on dim 0)."""
    return {n: (torch.cat([s[n] for s in states]) if states[0][n].dim() > 0 else states[0][n])
            for n in states[0]}


def load_packed(model: "PackedResNet", states: list[dict[str, torch.Tensor]]) -> None:
    assert len(states) == model.k, (len(states), model.k)
    device = next(model.parameters()).device
    model.load_state_dict({n: t.to(device) for n, t in pack_state(states).items()})
