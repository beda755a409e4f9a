"""IMP with weight rewinding and data-diet pre-training (Algorithm 1 of the paper).

Pre-train the dense network for t_r iterations on a subset S (optionally with noisy labels) at
the pre-training lr; then, level after level, train the masked network from w_{t_r} to the end of
the schedule on the full training set with true labels, prune 20% of the remaining weights by
global magnitude, and rewind the survivors to w_{t_r}. Level k's test accuracy is that of the
sparse network with 0.8^k of its weights.

Stages and reuse: the pre-training result lives in ``pretrain_<hash>/replicate_<r>/`` keyed by
what determines it (so IMP runs differing only after t_r share it); each level lives in
``imp_<hash>/replicate_<r>/level_<k>/``. Levels and replicates are not part of the hash, so
asking for more of either later trains only what is missing. Replicates that need the same stage
are trained together as one packed model.

    lthfast imp --dataset digits --subset random --size 256 --steps 20 --levels 3
    # -> runs/imp_<hash> with results.json (test_acc per replicate and level)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import Preset, hash_of, to_dict
from ..data.arrays import DatasetArrays
from ..data.loader import StreamSeeds
from ..data.streams import check_loader
from ..data.subsets import train_labels
from ..errors import UserError
from ..models.packed import load_packed, pack_state, unpack_state
from ..prune.magnitude import full_masks, prune, remaining_fraction
from ..store import atomic_write_json, is_done, locked, mark_done, prepare_run_dir, read_json
from ..train import checkpoint as ckpt
from ..train.evaluate import predict, summary
from ..train.schedule import Schedule
from .common import Runtime, device_split, new_model, replicate_seeds, run_training


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines w_{t_r}."""

    dataset: str
    model: str
    batch_size: int
    lr: float
    milestones: tuple[int, ...]
    steps: int  # t_r
    subset_sha: str  # content hash of the index array: the same indices share a pre-training
    subset_size: int
    seed: int = 0
    label_noise: float = 0.0
    noise_seed: int = 0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    gamma: float = 0.1


@dataclass(frozen=True)
class ImpConfig:
    pretrain: PretrainConfig
    lr: float
    milestones: tuple[int, ...]
    train_steps: int  # T: each level trains iterations [t_r, T)
    prune_fraction: float = 0.2
    subset_name: str = field(default="", compare=False)  # for humans; not part of the identity

    def identity(self) -> dict:
        d = to_dict(self)
        d.pop("subset_name", None)
        return d


def make_config(preset: Preset, dataset: str, steps: int, subset_indices: np.ndarray,
                subset_name: str, seed: int, label_noise: float, noise_seed: int) -> ImpConfig:
    import hashlib

    if steps < 0:
        raise UserError("--steps must be >= 0")
    if steps >= preset.train_steps:
        raise UserError(f"--steps {steps} must be smaller than the schedule's "
                        f"{preset.train_steps} iterations (--train-steps)")
    sha = hashlib.sha256(np.ascontiguousarray(subset_indices, dtype=np.int64).tobytes()).hexdigest()
    pre = PretrainConfig(
        dataset=dataset, model=preset.model, batch_size=preset.batch_size, lr=preset.pretrain_lr,
        milestones=preset.milestones, steps=steps, subset_sha=sha[:16],
        subset_size=len(subset_indices), seed=seed, label_noise=label_noise,
        noise_seed=noise_seed, momentum=preset.momentum, weight_decay=preset.weight_decay,
        gamma=preset.gamma)
    return ImpConfig(pretrain=pre, lr=preset.lr, milestones=preset.milestones,
                     train_steps=preset.train_steps, prune_fraction=preset.prune_fraction,
                     subset_name=subset_name)


def imp_dir(rt: Runtime, cfg: ImpConfig) -> Path:
    from ..store import config_hash

    return Path(rt.out) / f"imp_{config_hash(cfg.identity())}"


def pretrain_dir(rt: Runtime, cfg: PretrainConfig) -> Path:
    return Path(rt.out) / f"pretrain_{hash_of(cfg)}"


def run_pretrain(rt: Runtime, cfg: PretrainConfig, ds: DatasetArrays, subset: np.ndarray,
                 replicates: list[int]) -> list[dict]:
    """w_{t_r} for each replicate (K=1-shaped state dicts), training the missing ones packed."""
    root = prepare_run_dir(pretrain_dir(rt, cfg), to_dict(cfg))
    device = rt.torch_device
    with locked(root):
        todo = [r for r in replicates if not is_done(root / f"replicate_{r}")]
        if todo:
            seeds = [replicate_seeds(cfg.seed, r) for r in todo]
            model = new_model(cfg.model, ds.num_classes, [s["init"] for s in seeds], device)
            group_dir = root / ("group_" + "_".join(map(str, todo)))
            result = None
            if cfg.steps > 0:
                labels = train_labels(ds, cfg.label_noise, cfg.noise_seed)
                data = device_split(ds, "train", device, labels=labels)
                streams = [StreamSeeds(s["pretrain_order"], s["pretrain_augment"]) for s in seeds]
                result = run_training(
                    rt, model, ds, data, [subset] * len(todo), streams, cfg.batch_size,
                    Schedule(cfg.lr, cfg.milestones, cfg.gamma), 0, cfg.steps, group_dir,
                    "pre-train", momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            test = device_split(ds, "test", device)
            metrics = summary(predict(model, test, amp=rt.use_amp), test.labels)
            for i, (r, state) in enumerate(zip(todo, unpack_state(model))):
                stage = root / f"replicate_{r}"
                ckpt.save(stage / "weights.pt", state)
                mark_done(stage, {"test_acc": metrics["acc"][i], "test_loss": metrics["loss"][i],
                                  "diverged": result.diverged[i] if result else None,
                                  "loader": rt.loader})
            ckpt.remove(group_dir / "checkpoint.pt")
        return [ckpt.load(root / f"replicate_{r}" / "weights.pt") for r in replicates]


def run_imp(rt: Runtime, cfg: ImpConfig, ds: DatasetArrays, subset: np.ndarray, levels: int,
            replicates: int) -> Path:
    """Run (or finish) IMP for ``levels`` pruning levels and ``replicates`` replicates."""
    if levels < 0:
        raise UserError("--levels must be >= 0")
    if replicates < 1:
        raise UserError("--replicates must be >= 1")
    check_loader(rt.loader, ds, cfg.pretrain.label_noise, rt.deterministic)
    reps = list(range(replicates))
    # pre-training first: if its weights turn out unreadable, no IMP directory is left behind
    rewind = dict(zip(reps, run_pretrain(rt, cfg.pretrain, ds, subset, reps)))
    root = prepare_run_dir(imp_dir(rt, cfg), cfg.identity() | {"subset_name": cfg.subset_name})
    with locked(root):
        for level in range(levels + 1):
            todo = [r for r in reps if not is_done(level_dir(root, r, level))]
            if todo:
                train_level(rt, cfg, ds, root, level, todo, rewind)
        write_results(root, cfg)
    return root


def level_dir(root: Path, replicate: int, level: int) -> Path:
    return root / f"replicate_{replicate}" / f"level_{level}"


def level_masks(root: Path, replicate: int, level: int, rewind_state: dict, fraction: float):
    """Level 0: all ones. Level k: prune the weights trained at level k-1 under its mask."""
    if level == 0:
        return full_masks(rewind_state)
    prev = level_dir(root, replicate, level - 1)
    return prune(ckpt.load(prev / "trained.pt"), ckpt.load(prev / "mask.pt"), fraction)


def train_level(rt: Runtime, cfg: ImpConfig, ds: DatasetArrays, root: Path, level: int,
                todo: list[int], rewind: dict[int, dict]) -> None:
    device = rt.torch_device
    pre = cfg.pretrain
    masks = [level_masks(root, r, level, rewind[r], cfg.prune_fraction) for r in todo]
    seeds = [replicate_seeds(pre.seed, r) for r in todo]
    model = new_model(pre.model, ds.num_classes, [0] * len(todo), device)
    load_packed(model, [rewind[r] for r in todo])  # rewind: weights, BN statistics, all of it
    packed_masks = {n: t.to(device) for n, t in pack_state(masks).items()}
    data = device_split(ds, "train", device)  # true labels: noise is for pre-training only
    group_dir = root / f"level_{level}_group_{'_'.join(map(str, todo))}"
    result = run_training(
        rt, model, ds, data, [np.arange(ds.train_size)] * len(todo),
        [StreamSeeds(s["order"], s["augment"]) for s in seeds], pre.batch_size,
        Schedule(cfg.lr, cfg.milestones, pre.gamma), pre.steps, cfg.train_steps, group_dir,
        f"level {level}", masks=packed_masks, momentum=pre.momentum,
        weight_decay=pre.weight_decay)
    test = device_split(ds, "test", device)
    metrics = summary(predict(model, test, amp=rt.use_amp), test.labels)
    for i, (r, state) in enumerate(zip(todo, unpack_state(model))):
        stage = level_dir(root, r, level)
        ckpt.save(stage / "mask.pt", masks[i])
        ckpt.save(stage / "trained.pt", state)
        mark_done(stage, {
            "replicate": r, "level": level,
            "weights_remaining": remaining_fraction(masks[i]),
            "test_acc": metrics["acc"][i], "test_loss": metrics["loss"][i],
            "diverged": result.diverged[i], "loader": rt.loader})
    ckpt.remove(group_dir / "checkpoint.pt")


def write_results(root: Path, cfg: ImpConfig) -> None:
    """results.json: every finished level of every replicate (also those of earlier, longer runs)."""
    rows = [read_json(p) for p in root.glob("replicate_*/level_*/done.json")]
    rows.sort(key=lambda x: (x["replicate"], x["level"]))
    atomic_write_json(root / "results.json", {"config": cfg.identity(),
                                              "subset": cfg.subset_name, "rows": rows})
