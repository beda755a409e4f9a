"""Global magnitude pruning over all conv and linear weights of one model (IMP's step 6).

Each level removes ``round(fraction × remaining)`` of the still-unpruned prunable weights, those
of smallest magnitude across all layers together (ties broken by position, so it is
deterministic). Biases and BatchNorm parameters are never pruned.

    python -c "from lthfast.prune.magnitude import prune; help(prune)"
"""

from __future__ import annotations

import torch

Masks = dict[str, torch.Tensor]


def is_prunable(name: str, tensor: torch.Tensor) -> bool:
    """Conv and linear weights: the >1-D ``weight`` parameters (BN weights are 1-D)."""
    return name.endswith("weight") and tensor.dim() > 1


def full_masks(state: dict[str, torch.Tensor]) -> Masks:
    return {n: torch.ones_like(t) for n, t in state.items() if is_prunable(n, t)}


def prune(state: dict[str, torch.Tensor], masks: Masks, fraction: float) -> Masks:
    """New masks with ``fraction`` of the remaining weights (smallest |w|, globally) removed."""
    names = sorted(masks)
    flat_w = torch.cat([state[n].detach().flatten().abs().float() for n in names])
    flat_m = torch.cat([masks[n].flatten() for n in names]).bool()
    alive = torch.nonzero(flat_m).squeeze(1)
    n_prune = int(round(fraction * len(alive)))
    new_m = flat_m.clone()
    if n_prune > 0:
        # stable sort of alive magnitudes: equal magnitudes are pruned in index order
        order = torch.sort(flat_w[alive], stable=True).indices
        new_m[alive[order[:n_prune]]] = False
    out, offset = {}, 0
    for n in names:
        size = masks[n].numel()
        out[n] = new_m[offset : offset + size].view_as(masks[n]).to(masks[n].dtype)
        offset += size
    return out


def remaining_fraction(masks: Masks) -> float:
    total = sum(m.numel() for m in masks.values())
    return float(sum(m.sum().item() for m in masks.values()) / total)
