"""Evaluation without augmentation, in large batches: per-example outputs for all K models.

Per-example logits feed test accuracy, EL2N (softmax error norms), loss barriers and error
distributions; the reductions are small functions over them.

    python -c "import lthfast.train.evaluate as e; help(e.predict)"
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .compiled import compiled_forward


@torch.no_grad()
def predict(model: torch.nn.Module, data, batch_size: int = 1024, amp: bool = False,
            compile: bool = False) -> torch.Tensor:
    """Logits of every example of ``data`` (a DeviceData) for every packed model: K×N×C float32.
    ``compile``: through the process's compiled evaluation forward (never the training one).

    Every batch has ``batch_size`` examples (or all N, if fewer): the last one is the last
    ``batch_size`` examples, of which the ones not yet predicted are kept. A short last batch
    (10,000 test images at 1,024: 784) would be a second compiled graph (``dynamic=False``) and
    a second CUDA-graph-sized shape; in eval mode an example's logits do not depend on the
    others in its batch, so re-predicting a few is only their cost."""
    was_training = model.training
    model.eval()
    k = model.k
    device = data.device
    forward = compiled_forward(model, "eval") if compile else model
    outs = []
    for start in range(0, data.n, batch_size):
        end = min(start + batch_size, data.n)
        first = max(0, end - batch_size)  # = start, except for a short last batch
        x, _ = data.eval_batch(first, end, k)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outs.append(forward(x).float()[start - first:])
    model.train(was_training)
    return torch.cat(outs).permute(1, 0, 2).contiguous()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """K×N×C, N -> accuracy per model (K,)."""
    return (logits.argmax(-1) == labels).float().mean(-1)


def example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """K×N×C, N -> cross-entropy per model and example (K×N), row by row (model-major), so a
    model's losses and their mean do not depend on which models it was packed with."""
    k, n, c = logits.shape
    losses = F.cross_entropy(logits.reshape(k * n, c), labels.repeat(k), reduction="none")
    return losses.view(k, n)


def el2n(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """‖softmax(f(x)) − onehot(y)‖₂ per model and example (K×N)."""
    probs = logits.softmax(-1)
    onehot = F.one_hot(labels, logits.shape[-1]).to(probs.dtype)
    return (probs - onehot).norm(dim=-1)


def summary(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, list[float]]:
    return {"acc": accuracy(logits, labels).tolist(),
            "loss": example_losses(logits, labels).mean(-1).tolist()}
