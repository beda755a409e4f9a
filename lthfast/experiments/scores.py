"""Per-example scores of the training set: EL2N (Paul et al. 2021) and forgetting (Toneva et al.).

Scores are registered by name; each trains K networks from different inits as one packed model
and writes a float32 ``scores.npy`` in dataset order (one value per train example) in a run
directory keyed by the config hash; lower means easier for both.

- ``el2n``: after t iterations, ‖softmax(f(x)) − onehot(y)‖₂ per example, averaged over K.
  Defaults per dataset from appendix A (ResNet-20 / 7,800 iterations for CIFAR-10, ...).
- ``forgetting``: during training, each time an example is in a mini-batch, a change from
  correctly to incorrectly classified is a forgetting event; the score is the count, averaged
  over K. An example never classified correctly ranks hardest: it gets one more than the
  largest count of that model.

Scores on noisy labels use the noisy labels (appendix A: the noisy examples then rank as hard).

    lthfast scores el2n --dataset digits --models 4 --steps 60
    # -> runs/el2n_<hash>/scores.npy
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import hash_of, to_dict
from ..data.arrays import DatasetArrays
from ..data.loader import StreamSeeds
from ..data.streams import check_loader
from ..data.subsets import train_labels
from ..errors import UserError
from ..registry import Registry
from ..models.packed import unpack_state
from ..store import atomic_save_npy, is_done, locked, mark_done, prepare_run_dir
from ..train import checkpoint as ckpt
from ..train.evaluate import el2n, predict
from ..train.schedule import Schedule
from .common import Runtime, device_split, new_model, replicate_seeds, run_training


# name -> fn(runtime, config, dataset, run dir) -> float scores, one per train example
SCORES = Registry("score")


@dataclass(frozen=True)
class ScoreConfig:
    score: str
    dataset: str
    model: str
    models: int  # K
    steps: int
    batch_size: int
    lr: float
    milestones: tuple[int, ...]
    seed: int = 0
    label_noise: float = 0.0
    noise_seed: int = 0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    gamma: float = 0.1


class ForgettingCounter:
    """Counts forgetting events per (model, example) on the device, without host syncs."""

    def __init__(self, k: int, n: int, device: torch.device):
        self.last_correct = torch.zeros(k, n, dtype=torch.bool, device=device)
        self.ever_correct = torch.zeros(k, n, dtype=torch.bool, device=device)
        self.forgotten = torch.zeros(k, n, dtype=torch.int32, device=device)

    def __call__(self, step: int, logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> None:
        correct = (logits.argmax(-1) == y).T  # K×B
        idx = idx.T
        prev = torch.gather(self.last_correct, 1, idx)
        self.forgotten.scatter_add_(1, idx, (prev & ~correct).int())
        self.last_correct.scatter_(1, idx, correct)
        self.ever_correct.scatter_(1, idx, self.ever_correct.gather(1, idx) | correct)

    def state_dict(self) -> dict:
        return {"last_correct": self.last_correct, "ever_correct": self.ever_correct,
                "forgotten": self.forgotten}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            getattr(self, name).copy_(value)

    def scores(self) -> np.ndarray:
        counts = self.forgotten.float()
        never = ~self.ever_correct
        top = counts.max(dim=1, keepdim=True).values + 1
        return torch.where(never, top, counts).mean(0).cpu().numpy()


def forgetting_from_sequence(correct: list[bool]) -> int:
    """Reference for one example's presentations: the number of correct -> incorrect changes."""
    return sum(1 for a, b in zip(correct, correct[1:]) if a and not b)


def check_score_request(models: int, steps: int) -> None:
    if models < 1:
        raise UserError("--models must be >= 1")
    if steps < 1:
        raise UserError("--steps must be >= 1")


def score_dir(rt: Runtime, cfg: ScoreConfig) -> Path:
    return Path(rt.out) / f"{cfg.score}_{hash_of(cfg)}"


def compute_scores(rt: Runtime, cfg: ScoreConfig, ds: DatasetArrays) -> Path:
    """Train the K networks (or reuse them) and write ``scores.npy``; returns its path."""
    score_fn = SCORES.lookup(cfg.score)
    check_score_request(cfg.models, cfg.steps)
    check_loader(rt.loader, ds, cfg.label_noise, rt.deterministic)
    root = prepare_run_dir(score_dir(rt, cfg), to_dict(cfg))
    with locked(root):
        if not is_done(root):
            scores = score_fn(rt, cfg, ds, root)
            if scores.shape != (ds.train_size,) or not np.all(np.isfinite(scores)):
                raise UserError(f"{cfg.score} scores are not finite (training diverged?); "
                                f"see {root}/metrics.jsonl")
            atomic_save_npy(root / "scores.npy", scores.astype(np.float32))
            mark_done(root, {"score": cfg.score, "loader": rt.loader})
            ckpt.remove(root / "checkpoint.pt")
    return root / "scores.npy"


def train_ensemble(rt: Runtime, cfg: ScoreConfig, ds: DatasetArrays, root: Path, on_batch=None):
    device = rt.torch_device
    seeds = [replicate_seeds(cfg.seed, m) for m in range(cfg.models)]
    model = new_model(cfg.model, ds.num_classes, [s["init"] for s in seeds], device)
    labels = train_labels(ds, cfg.label_noise, cfg.noise_seed)
    data = device_split(ds, "train", device, labels=labels)
    run_training(rt, model, ds, data, [np.arange(ds.train_size)] * cfg.models,
                 [StreamSeeds(s["order"], s["augment"]) for s in seeds], cfg.batch_size,
                 Schedule(cfg.lr, cfg.milestones, cfg.gamma), 0, cfg.steps, root,
                 f"{cfg.score} K={cfg.models}", on_batch=on_batch, momentum=cfg.momentum,
                 weight_decay=cfg.weight_decay)
    return model, data


@SCORES.register("el2n")
def el2n_scores(rt: Runtime, cfg: ScoreConfig, ds: DatasetArrays, root: Path) -> np.ndarray:
    model, data = train_ensemble(rt, cfg, ds, root)
    ckpt.save(root / "models.pt", {"states": unpack_state(model)})  # for analyses and checks
    logits = predict(model, data, amp=rt.use_amp)
    return el2n(logits, data.labels).mean(0).cpu().numpy()


@SCORES.register("forgetting")
def forgetting_scores(rt: Runtime, cfg: ScoreConfig, ds: DatasetArrays, root: Path) -> np.ndarray:
    counter = ForgettingCounter(cfg.models, ds.train_size, rt.torch_device)
    train_ensemble(rt, cfg, ds, root, on_batch=counter)  # the counter is checkpointed too
    return counter.scores()
