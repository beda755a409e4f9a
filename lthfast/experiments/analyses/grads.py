"""Training dynamics during pre-training: gradient norms, gradient coherence, learning speed.

Replays the pre-training of a replicate (same init, data order and augmentation as ``imp``'s
pre-training stage, so the trajectory is the same) with a gradient hook, and records:

- the norm of every mini-batch gradient (Fig. 8: easy vs random subsets, appendix C.1);
- gradient coherence (appendix B, Fig. 7b): every ``coherence_every`` steps, the gradients of
  ``coherence_batches`` extra batches drawn from the training subset at the current weights, and
  the cosine of each to their mean (BatchNorm statistics and the step's own gradients are
  restored afterwards, so training goes on as if nothing happened). The extra batches have a
  seed domain of their own under ``--seed`` (never an IMP, score or LMC network's seeds);
- learning speed (Fig. 7a): at step 0, every ``eval_every`` steps and after the last update
  (w_{t_r}), accuracy on the whole training set, on the pre-training subset, on the test set and,
  with ``--eval-subset`` / ``--eval-size``, on that subset (Fig. 7a: the all-data network's
  accuracy on the easy 2,048, which it does not train on).

Costs are paid only when asked: the hook runs in ``lthfast grads``, never in ``imp``.

Files (``<stage>`` = ``pretrain_<h>/replicate_<r>/grads_<hash>``; T = t_r pre-training steps):

- ``grad_norms.npy``: float32 (T,): the L2 norm of step s's mini-batch gradient, s = 0 … T−1
  (Fig. 8's histogram)
- ``coherence_steps.npy``: int (S,): the steps s (multiples of ``coherence_every``) where
  coherence was measured, at the weights w_s
- ``coherence.npy``: float32 (S, B): the cosine of each of the B = ``coherence_batches`` batch
  gradients to their mean, per coherence step (Fig. 7b: the mean over B vs step)
- ``speed_steps.npy``: int (E,): steps s where accuracies of w_s were measured (s = 0, every
  ``eval_every``, and T: after the last update)
- ``train_acc.npy``, ``subset_acc.npy``, ``test_acc.npy``, ``eval_subset_acc.npy``: float32
  (E,): accuracy of w_s on the un-augmented training set, on the pre-training subset, on the
  test set, on the ``--eval-subset`` (NaN without one) (Fig. 7a)
- ``eval_subset.npy``: int: the ``--eval-subset`` indices (empty without one)
- ``<pretrain run>/grads_<hash>.json``: t_r, config, means over replicates (``mean_grad_norm``,
  ``mean_coherence``) and per replicate its summary (``final_*`` = accuracies of w_{t_r}) and
  ``path`` (the stage directory holding the arrays)

    lthfast grads --dataset digits --subset random --size 256 --steps 40
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ...data.loader import BatchStream, StreamSeeds, mix_seed
from ...files import atomic_write_json
from ...data.loader import DeviceData
from ...files import config_hash
from ...runs import Run, Stage, to_dict
from ...train.evaluate import accuracy, predict
from ...train.hooks import Hook
from ...train.step import per_model_loss
from ..common import Context
from ..stage import StageInputs, train_stage
from . import ANALYSES, finished

PROBE_SEEDS = 3  # seed domain of the coherence batches (IMP 0, scores 1, LMC children 2)
ARRAYS = ("grad_norms", "coherence", "coherence_steps", "speed_steps", "train_acc",
          "subset_acc", "test_acc", "eval_subset_acc")
# Version 2: probe seeds under --seed in a domain of their own, accuracies of w_s (the last of
# w_{t_r}, after the final update), the eval subset. Hashed so no version-1 branch is reused.
FORMAT = 2


def probe_seeds(seed: int, replicate: int) -> StreamSeeds:
    """The coherence batches' order and augmentation: ``(seed, PROBE_SEEDS, replicate, j)``,
    four parts like a score ensemble's, in a domain no other network uses."""
    return StreamSeeds(mix_seed(seed, PROBE_SEEDS, replicate, 0),
                       mix_seed(seed, PROBE_SEEDS, replicate, 1))


@dataclass(frozen=True)
class GradsConfig:
    coherence_every: int = 10
    coherence_batches: int = 16
    eval_every: int = 100  # 0: no learning-speed points
    eval_subset: Optional[dict] = None  # identity of the --eval-subset (its spec), if any

    @property
    def branch(self) -> str:
        return f"grads_{config_hash(to_dict(self) | {'format': FORMAT})}"


def cosines_to_mean(grads: torch.Tensor) -> torch.Tensor:
    """B×P batch gradients -> the cosine of each to their mean (B)."""
    mean = grads.mean(0, keepdim=True)
    return torch.nn.functional.cosine_similarity(grads, mean, dim=1)


class GradStats(Hook):
    """Per packed model: every step's gradient norm; coherence and accuracies at intervals."""

    wants_gradients = True

    def __init__(self, ctx: Context, cfg: GradsConfig, start: int, end: int,
                 probe: BatchStream, subsets: list[np.ndarray],
                 eval_subsets: Optional[list[np.ndarray]] = None):
        k, device = probe.k, ctx.device
        self.ctx, self.cfg, self.start, self.end, self.probe = ctx, cfg, start, end, probe
        self.subsets = [torch.as_tensor(s, device=device) for s in subsets]
        self.eval_subsets = (None if eval_subsets is None else
                             [torch.as_tensor(s, device=device) for s in eval_subsets])
        self.norms = torch.zeros(end - start, k, device=device)
        self.coherence_steps = [s for s in range(start, end) if s % cfg.coherence_every == 0]
        self.coherence = torch.full((len(self.coherence_steps), k, cfg.coherence_batches),
                                    float("nan"), device=device)
        every = cfg.eval_every
        # w_s at step s's backward (s updates done); the last point, w_end, after training
        self.speed_steps = sorted({s for s in range(start, end) if every and s % every == 0}
                                  | ({end} if every else set()))
        self.speed = torch.full((len(self.speed_steps), 4, k), float("nan"), device=device)

    def after_backward(self, step: int, model: torch.nn.Module) -> None:
        k = self.probe.k
        params = [p for p in model.parameters() if p.grad is not None]
        self.norms[step - self.start] = torch.sqrt(sum(
            p.grad.detach().reshape(k, -1).float().pow(2).sum(1) for p in params))
        if step in self.coherence_steps:
            self.coherence[self.coherence_steps.index(step)] = self._coherence(step, model)
        if step in self.speed_steps:
            self.speed[self.speed_steps.index(step)] = self._accuracies(model)

    def _coherence(self, step: int, model: torch.nn.Module) -> torch.Tensor:
        """K×B cosines of extra batch gradients to their mean, leaving the run untouched."""
        k = self.probe.k
        params = [p for p in model.parameters() if p.grad is not None]
        saved_grads = [p.grad.clone() for p in params]
        saved_buffers = {n: b.clone() for n, b in model.named_buffers()}
        per_batch = []
        for b in range(self.cfg.coherence_batches):
            x, y, _ = self.probe.batch(step * self.cfg.coherence_batches + b)
            for p in params:
                p.grad = None
            per_model_loss(model(x), y).sum().backward()
            per_batch.append(torch.cat([p.grad.reshape(k, -1) for p in params], dim=1))
        for p, g in zip(params, saved_grads):
            p.grad = g
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(saved_buffers[n])
        grads = torch.stack(per_batch, dim=1)  # K×B×P
        return torch.stack([cosines_to_mean(grads[m]) for m in range(k)])

    def finish(self, model: torch.nn.Module) -> None:
        """Accuracies of the trained network w_end (after the last update)."""
        if self.end in self.speed_steps:
            self.speed[self.speed_steps.index(self.end)] = self._accuracies(model)

    def _accuracies(self, model: torch.nn.Module) -> torch.Tensor:
        """4×K: accuracy on all training data, on each model's own subset, on the test set, on
        the eval subset (NaN without one)."""
        train = self.ctx.train_split()
        logits = predict(model, train, amp=False)
        test = self.ctx.test_split()
        correct = (logits.argmax(-1) == train.labels).float()  # K×N
        subset = torch.stack([correct[m, s].mean() for m, s in enumerate(self.subsets)])
        extra = (torch.full_like(subset, float("nan")) if self.eval_subsets is None else
                 torch.stack([correct[m, s].mean() for m, s in enumerate(self.eval_subsets)]))
        return torch.stack([correct.mean(1), subset,
                            accuracy(predict(model, test, amp=False), test.labels), extra])

    def state_dict(self) -> dict:
        return {"norms": self.norms, "coherence": self.coherence, "speed": self.speed}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            getattr(self, name).copy_(value)

    def arrays(self, m: int) -> dict[str, np.ndarray]:
        return {"grad_norms": self.norms[:, m].cpu().numpy(),
                "coherence": self.coherence[:, m].cpu().numpy(),
                "coherence_steps": np.array(self.coherence_steps),
                "speed_steps": np.array(self.speed_steps),
                "train_acc": self.speed[:, 0, m].cpu().numpy(),
                "subset_acc": self.speed[:, 1, m].cpu().numpy(),
                "test_acc": self.speed[:, 2, m].cpu().numpy(),
                "eval_subset_acc": self.speed[:, 3, m].cpu().numpy(),
                "eval_subset": (np.array([], dtype=np.int64) if self.eval_subsets is None
                                else self.eval_subsets[m].cpu().numpy())}


def summarize(arrays: dict[str, np.ndarray]) -> dict:
    """Means of a replicate's arrays (NaN-aware: a diverged replay has NaN norms after it
    diverged; the means are over the finite values, null if there are none)."""
    def mean(a):
        a = np.asarray(a, dtype=float)
        return float(np.mean(a[np.isfinite(a)])) if np.isfinite(a).any() else float("nan")

    out = {"mean_grad_norm": mean(arrays["grad_norms"]),
           "mean_coherence": mean(arrays["coherence"])}
    if len(arrays["speed_steps"]):
        out |= {f"final_{name}": float(arrays[name][-1])
                for name in ("train_acc", "subset_acc", "test_acc", "eval_subset_acc")
                if name in arrays}
    return out


def run(ctx: Context, pre: Run, recipe, data: DeviceData, seeds_of,
        subsets: dict[int, np.ndarray], cfg: GradsConfig, seed: int = 0,
        eval_subsets: Optional[dict[int, np.ndarray]] = None):
    """Replay pre-training of each replicate with the statistics hook; write the summary.

    ``seeds_of(r)`` gives replicate r's (init seed, StreamSeeds) and ``data`` the labels, as
    pre-training used them; ``seed`` the base seed (of the probe batches); ``eval_subsets`` the
    indices of the eval subset per replicate."""
    reps = sorted(subsets)
    stages = [pre.stage(r, None, cfg.branch) for r in reps]

    def prepare(stage: Stage) -> StageInputs:
        init, seeds = seeds_of(stage.replicate)
        return StageInputs(init=init, seeds=seeds, indices=subsets[stage.replicate])

    def make_hooks(k: int) -> list[Hook]:
        todo = [s.replicate for s in stages if not s.is_done()]
        probe = BatchStream(data, [subsets[r] for r in todo],
                            [probe_seeds(seed, r) for r in todo], recipe.batch_size)
        return [GradStats(ctx, cfg, 0, recipe.steps, probe, [subsets[r] for r in todo],
                          None if eval_subsets is None else [eval_subsets[r] for r in todo])]

    def artifacts(model, group_hooks, trained: list[Stage]):
        stats = group_hooks[0]
        stats.finish(model)
        per = [stats.arrays(m) for m in range(len(trained))]
        return {name: [p[name] for p in per] for name in per[0]}

    with pre.lock():
        train_stage(ctx, stages, prepare, recipe, data, label="grads",
                    hooks=make_hooks, artifacts=artifacts)
        return write_summary(pre, cfg, recipe.steps)


def write_summary(pre: Run, cfg: GradsConfig, t_r: int):
    """``<pre>/grads_<hash>.json`` over every replicate replayed so far (also those of an earlier
    run with more ``--replicates``, which a rerun with fewer must not drop)."""
    per = {}
    for stage in finished(pre, None, cfg.branch):
        arrays = {n: np.load(stage.file(f"{n}.npy")) for n in ARRAYS
                  if stage.file(f"{n}.npy").exists()}
        record = stage.record()
        per[str(stage.replicate)] = summarize(arrays) | {
            "path": str(stage.path),
            "diverged": record.diverged}
    finite = lambda key: [p[key] for p in per.values()  # noqa: E731
                          if p[key] is not None and np.isfinite(p[key])]
    mean = lambda key: float(np.mean(finite(key))) if finite(key) else None  # noqa: E731
    return atomic_write_json(pre.file(f"{cfg.branch}.json"), {
        "t_r": t_r, "config": {"coherence_every": cfg.coherence_every,
                               "coherence_batches": cfg.coherence_batches,
                               "eval_every": cfg.eval_every, "eval_subset": cfg.eval_subset},
        "mean_grad_norm": mean("mean_grad_norm"), "mean_coherence": mean("mean_coherence"),
        "diverged": {r: p["diverged"] for r, p in per.items() if p["diverged"]},
        "replicates": per})


ANALYSES.register("grads")(run)
