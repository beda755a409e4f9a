"""The stage runner: the one place that skips finished replicates, packs the rest, trains,
evaluates, saves and marks them done.

Pre-training, an IMP level and a score ensemble are each a few lines over ``train_stage``: they
say which stages (replicates) they want, how to prepare a missing one (``StageInputs``: where it
starts, its seeds, its data, its mask) and what to save beside the weights (``artifacts``).
Every finished stage holds ``weights.pt`` (the trained K=1 state dict), ``mask.pt`` when pruned,
its own ``metrics.jsonl`` and, written last, ``done.json`` (a ``StageRecord``). A packed group's
periodic checkpoint lives in the run's scratch space and is removed once its stages are done.

    python -c "from lthfast.experiments.stage import train_stage; help(train_stage)"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from .. import faults
from ..config import Recipe
from ..data.loader import DeviceData, StreamSeeds
from ..errors import UserError
from ..files import atomic_save_npy, atomic_write_bytes, to_json
from ..models.packed import PackedResNet, load_packed, pack_state, unpack_state
from ..prune.magnitude import Masks, remaining_fraction
from ..runs import RunStore, Stage, StageRecord
from ..train import checkpoint as ckpt
from ..train.evaluate import predict, summary
from ..train.hooks import Hook
from .common import Context, new_model, run_training


@dataclass(frozen=True)
class StageInputs:
    """Everything one missing replicate's stage starts from."""

    init: Union[int, dict]  # an init seed (fresh network) or a K=1 state dict (rewind point)
    seeds: StreamSeeds  # data order and augmentation
    indices: np.ndarray  # the training examples it draws batches from
    mask: Optional[Masks] = None
    early: Optional[tuple[int, np.ndarray]] = None  # (t, indices): the first t steps draw here


# artifacts(trained packed model, hooks, the stages it packs) -> {name: one array per packed
# model}: saved as <stage>/<name>.npy before the stage is marked done
Artifacts = Callable[[PackedResNet, Sequence[Hook], list[Stage]], dict[str, Sequence[np.ndarray]]]


class StepProbe(Hook):
    """The fault-injection seam's view of training (only added when a test asks for it)."""

    def __init__(self, stages: Sequence[Stage]):
        self.names = [s.name for s in stages]
        self.runs = [s.run.name for s in stages]  # stage names repeat across runs
        self.started = False

    def on_batch(self, step, logits, labels, indices) -> None:
        if not self.started:
            self.started = True
            for name, run in zip(self.names, self.runs):
                faults.trace(event="train", stage=name, run=run, group=len(self.names),
                             first_step=step, threads=torch.get_num_threads())
        for name in self.names:
            faults.point("step", stage=name, step=step)


def train_stage(ctx: Context, stages: Sequence[Stage], prepare: Callable[[Stage], StageInputs],
                recipe: Union[Recipe, Sequence[Recipe]], data: DeviceData, start: int = 0,
                label: str = "train", hooks: Callable[[int], Sequence[Hook]] = lambda k: (),
                artifacts: Optional[Artifacts] = None) -> list[StageRecord]:
    """Train every stage of ``stages`` that is not done (as one packed model), then record all.

    ``recipe`` is one recipe for all stages or one per stage (schedules and weight decays may
    differ; model, batch size, momentum and end step may not). ``hooks(k)`` makes the hooks of a
    k-model group. Returns the records of all ``stages``, in order.
    """
    recipes = list(recipe) if isinstance(recipe, (list, tuple)) else [recipe] * len(stages)
    todo = [(s, r) for s, r in zip(stages, recipes) if not s.is_done()]
    if todo:
        _train_group(ctx, [s for s, _ in todo], [r for _, r in todo], prepare, data, start,
                     label, hooks, artifacts)
    return [s.record() for s in stages]


def _same_shape(recipes: Sequence[Recipe]) -> None:
    first = recipes[0]
    for r in recipes[1:]:
        if (r.model, r.batch_size, r.momentum, r.steps) != (
                first.model, first.batch_size, first.momentum, first.steps):
            raise UserError("packed stages must share model, batch size, momentum and steps")


def _train_group(ctx: Context, stages: list[Stage], recipes: list[Recipe],
                 prepare: Callable[[Stage], StageInputs], data: DeviceData, start: int,
                 label: str, make_hooks: Callable[[int], Sequence[Hook]],
                 artifacts: Optional[Artifacts]) -> None:
    _same_shape(recipes)
    inputs = [prepare(s) for s in stages]
    k, device = len(stages), ctx.device
    fresh = all(isinstance(i.init, int) for i in inputs)
    model = new_model(recipes[0].model, ctx.ds.num_classes,
                      [i.init if fresh else 0 for i in inputs], device)
    if not fresh:  # a rewind point: weights, BatchNorm statistics, all of it
        load_packed(model, [i.init for i in inputs])
    masks = None
    if inputs[0].mask is not None:
        masks = {n: t.to(device) for n, t in pack_state([i.mask for i in inputs]).items()}
    hooks = list(make_hooks(k))
    if faults.enabled():
        hooks.append(StepProbe(stages))
    checkpoint = stages[0].run.scratch(stages) / "checkpoint.pt"
    result = None
    early = None
    if inputs[0].early is not None:
        if len({i.early[0] for i in inputs}) != 1:
            raise ValueError("packed stages must switch data at the same step")
        early = (inputs[0].early[0], [i.early[1] for i in inputs])
    if recipes[0].steps > start:
        stages[0].run.open_scratch(stages)
        result = run_training(ctx, model, data, [i.indices for i in inputs],
                              [i.seeds for i in inputs], recipes, start, checkpoint, label,
                              masks=masks, hooks=hooks, early=early)
    test = ctx.test_split()
    metrics = summary(predict(model, test, amp=ctx.rt.use_amp, compile=ctx.rt.use_compile),
                      test.labels)
    extra = artifacts(model, hooks, stages) if artifacts is not None else {}
    for i, (stage, state) in enumerate(zip(stages, unpack_state(model))):
        ckpt.save(stage.file("weights.pt"), state)
        if inputs[i].mask is not None:
            ckpt.save(stage.file("mask.pt"), inputs[i].mask)
        for name, arrays in extra.items():
            atomic_save_npy(stage.file(f"{name}.npy"), np.asarray(arrays[i]))
        log = [] if result is None else [
            {"step": r["step"], "lr": r["lr"][i] if isinstance(r["lr"], list) else r["lr"],
             "loss": r["loss"][i]} for r in result.log]
        atomic_write_bytes(stage.file("metrics.jsonl"),
                           "".join(to_json(r) + "\n" for r in log).encode())
        stage.mark_done(StageRecord(
            replicate=stage.replicate, level=stage.level, branch=stage.branch, start=start,
            end=recipes[i].steps, test_acc=metrics["acc"][i], test_loss=metrics["loss"][i],
            weights_remaining=remaining_fraction(inputs[i].mask) if inputs[i].mask else 1.0,
            diverged=result.diverged[i] if result else None, loader=ctx.rt.loader))
    # this group's scratch, and any left by killed attempts whose stages are now all done
    RunStore(stages[0].run.path.parent).clear_spent_scratch()
