"""SGD with momentum for K packed models as a handful of whole-model ops, pruning masks folded in.

``FusedSGD`` keeps a flat master copy of every trainable parameter (each parameter's elements in
its memory order, one after another) and its momentum in one flat buffer of the same length. A
step is then the same few element-wise ops whatever the depth, width or K:

    g = cat(grads) · mask;   d = g + λ p;   b = μ b + d   (b starts at zero, so b = d first);
    p ← p − η b;             copy p back into the parameters (one multi-tensor copy)

which is ``torch.optim.SGD``'s update (momentum μ, no dampening, no Nesterov) applied to every
element. The learning rate η is a device tensor, not a Python number: one value for all models,
or a K-vector (warmup sweeps, lr grids) expanded to one value per element by a gather with a
precomputed model index (model k owns a contiguous block of every packed parameter). The step
therefore reads no host value and can be captured as a CUDA graph and replayed with a new η
(``lthfast.train.capture``). Weight decays are fixed for a stage: one Python number, or K of
them expanded once. With masks, the gradient is masked before it touches the momentum, so pruned
weights and their momentum stay exactly zero without a separate masking pass.

Why not ``torch.optim.SGD`` + a masking pass: that is 4 foreach ops plus 2 ops per masked
tensor (44 for ResNet-20); the per-row ``PackedSGD`` it replaces was 6 ops per parameter
(392 per ResNet-20 step, 130 of them ``repeat_interleave`` copies). Counted in
``tests/test_step_budget.py``; figures in BENCHMARKS.md.

    python -c "import lthfast.train.optim as o; help(o.FusedSGD)"
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..prune.magnitude import Masks


def memory_order(t: torch.Tensor, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``t``'s elements as 1-D, in the memory order of ``like`` (default: ``t``): a view when
    the strides agree (channels_last weights flatten without a copy), else a copy. Gradients and
    masks are flattened in their parameter's order, whatever their own strides."""
    like = t if like is None else like
    perm = sorted(range(like.dim()), key=lambda d: -like.stride(d))
    return t.permute(perm).reshape(-1)


def like_param(flat: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """A view of ``flat`` (p.numel() elements, in p's memory order) with p's shape and strides."""
    return flat.as_strided(p.shape, p.stride(), flat.storage_offset())


def unflatten(flat: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of a flat buffer (e.g. the momentum of a ``state_dict``) shaped like ``params``."""
    views, offset = [], 0
    for p in params:
        views.append(like_param(flat[offset : offset + p.numel()], p))
        offset += p.numel()
    return views


class FusedSGD:
    """SGD for the K packed models of ``params``: one flat master copy, one flat momentum."""

    def __init__(self, params: Sequence[torch.nn.Parameter], k: int, momentum: float = 0.9,
                 masks: Optional[Sequence[Optional[torch.Tensor]]] = None,
                 weight_decays: Optional[Sequence[float]] = None):
        self.params = [p for p in params if p.requires_grad]
        if len({p.dtype for p in self.params}) != 1 or len({p.device for p in self.params}) != 1:
            raise ValueError("FusedSGD needs parameters of one dtype on one device")
        for p in self.params:  # model k's elements must be block k of p's memory
            outermost = p.dim() > 0 and max(range(p.dim()), key=p.stride) == 0
            if not outermost or p.shape[0] % k:
                raise ValueError(f"a packed parameter must hold K equal blocks along dim 0 "
                                 f"(shape {tuple(p.shape)}, K={k})")
        self.k, self.momentum = k, momentum
        self.sizes = [p.numel() for p in self.params]
        with torch.no_grad():
            self.flat = torch.cat([memory_order(p.detach()) for p in self.params])
        self.views = unflatten(self.flat, self.params)
        self.mask: Optional[torch.Tensor] = None
        if masks is not None and any(m is not None for m in masks):
            self.mask = torch.cat([
                memory_order(m.to(self.flat.device, self.flat.dtype), p) if m is not None
                else self.flat.new_ones(p.numel()) for m, p in zip(masks, self.params)])
            self.flat.mul_(self.mask)
            self._write_back()
        # momentum, allocated here at its fixed address and zero: the first step's μ·0 + d is
        # torch.optim.SGD's b = d, and a step captured as a CUDA graph before any eager step
        # (no warm-up) still updates this buffer; one made by the first step (``buf = d``)
        # would be that step's temporary, and every replay would train without momentum
        self.buf = torch.zeros_like(self.flat)
        self._model_of: Optional[torch.Tensor] = None
        decays = [0.0] * k if weight_decays is None else [float(d) for d in weight_decays]
        if len(decays) != k:
            raise ValueError(f"{len(decays)} weight decays for {k} models")
        # one decay: a Python number (torch.optim.SGD's arithmetic); K of them: one per element
        self.decay = decays[0] if len(set(decays)) == 1 else self._per_element(decays)

    def lr_vector(self, lrs: Sequence[float]) -> torch.Tensor:
        """K learning rates as the tensor ``step`` takes (one value when they are all equal)."""
        values = [float(lrs[0])] if len(set(lrs)) == 1 else [float(v) for v in lrs]
        return torch.tensor(values, dtype=self.flat.dtype, device=self.flat.device)

    def _per_element(self, values: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """K values (a device K-vector, or numbers) -> one per element of ``flat``."""
        if self._model_of is None:  # model k owns block k of each parameter's K equal blocks
            self._model_of = torch.cat([
                torch.arange(self.k, device=self.flat.device).repeat_interleave(n // self.k)
                for n in self.sizes])
        if not isinstance(values, torch.Tensor):
            values = torch.tensor(values, dtype=self.flat.dtype, device=self.flat.device)
        return values.index_select(0, self._model_of)

    # -- the step -----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, lr: torch.Tensor) -> None:
        """One update at learning rate ``lr``: a device tensor of 1 value (all models) or K
        (one per model), in the parameters' dtype. Leaves the gradients as None."""
        g = torch.cat([memory_order(p.grad if p.grad is not None else torch.zeros_like(p), p)
                       for p in self.params])
        for p in self.params:
            p.grad = None
        if self.mask is not None:
            g.mul_(self.mask)
        if isinstance(self.decay, torch.Tensor):
            g.addcmul_(self.flat, self.decay)
        elif self.decay:
            g.add_(self.flat, alpha=self.decay)
        self.buf.mul_(self.momentum).add_(g)
        # −η·b as addcmul's (−1)·b·η: the same number as torch.optim.SGD's add(b, alpha=−η)
        per_element = lr if lr.numel() == 1 else self._per_element(lr)
        self.flat.addcmul_(self.buf, per_element, value=-1.0)
        self._write_back()

    def _write_back(self) -> None:
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in self.params], self.views)

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The momentum (flat; zero before the first step): all a continuation needs."""
        return {"momentum": self.buf.clone()}

    def load_state_dict(self, state: dict) -> None:
        """A ``state_dict`` of this class, or of ``torch.optim.SGD`` over the same parameters
        (checkpoints written before FusedSGD existed)."""
        if "momentum" in state:
            buf = state["momentum"]
        else:
            per_param = [state["state"].get(i, {}).get("momentum_buffer")
                         for i in range(len(self.params))]
            buf = None if any(b is None for b in per_param) else torch.cat(
                [memory_order(b, p) for b, p in zip(per_param, self.params)])
        with torch.no_grad():  # in place: the buffer's address is what a captured step updates
            if buf is None:  # saved before the first step: no momentum yet
                self.buf.zero_()
                return
            if buf.numel() != self.flat.numel():
                raise ValueError(f"momentum of {buf.numel()} elements for {self.flat.numel()}")
            self.buf.copy_(buf.reshape(-1))
            if self.mask is not None:
                self.buf.mul_(self.mask)


def masks_for(model: torch.nn.Module, masks: Optional[Masks]) -> Optional[list]:
    """The masks in ``model.parameters()`` order (None for unpruned parameters)."""
    if not masks:
        return None
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    unknown = set(masks) - set(names)
    if unknown:
        raise KeyError(f"masks for unknown parameters: {sorted(unknown)}")
    return [masks.get(n) for n in names]
