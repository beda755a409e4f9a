"""The run store (``lthfast.runs``): pinned hashes per run kind, the layout, records, file modes.

A pinned hash fails when a config field is renamed or a default changes, which would otherwise
orphan every finished run silently (a rerun would start from nothing in a new directory).

    python -m pytest -q tests/test_runs.py
"""

from __future__ import annotations

import os
import stat

import pytest

from lthfast import api
from lthfast.experiments import scores  # noqa: F401  (registers every score: each a run kind)
from lthfast.data.subsets import SubsetSpec
from lthfast.errors import UserError
from lthfast.files import atomic_write_json
from lthfast.runs import RunStore, StageRecord, hash_of, run_kinds, to_dict

# The Fig. 2 point "CIFAR-10, random 2,048, t_r = 200" and the appendix-A score ensembles.
CIFAR10_RANDOM_2048 = api.ImpRequest(dataset="cifar10", subset="random", size=2048, steps=200)
PINNED = {
    "imp": "3e2478886ebc",
    "pretrain": "168e324e7140",
    "el2n": "aed86b1eb704",
    "forgetting": "1b0d92802e88",
    "lmc": "1a159fed19aa",  # re-pinned on purpose (issue #21): LMC scores gained the BN kind
    "warmup": "19c8cedfdafa",
    # the score zoo (lthfast/experiments/scorers/): their CIFAR-10 defaults
    "grand": "aca8f8c35a7e",
    "aum": "c8f1ec319066",
    "train_loss": "ac1bb22aeb8a",
    "pred_var": "db1392a28efe",
}
SCORE_KINDS = ("el2n", "forgetting", "lmc", "grand", "aum", "train_loss", "pred_var")


def pinned_config(kind: str):
    if kind == "warmup":  # Fig. 6: random 5,120 during a warmup of 100 iterations
        request = api.WarmupRequest(dataset="cifar10", subset="random", size=5120, warmup=100)
        return request.warmup_config(50_000, SubsetSpec(kind="random", size=5120).identity())
    if kind in SCORE_KINDS:
        return api.ScoreRequest(dataset="cifar10", kind=kind).config()
    cfg = CIFAR10_RANDOM_2048.config(SubsetSpec(kind="random", size=2048).identity())
    return cfg if kind == "imp" else cfg.pretrain


def test_every_run_kind_has_a_pinned_hash():
    """Registered scores are run kinds too: each new one is pinned here."""
    assert set(PINNED) == set(run_kinds())


@pytest.mark.parametrize("kind", sorted(PINNED))
def test_config_hash_is_pinned(kind, tmp_path):
    cfg = pinned_config(kind)
    assert hash_of(cfg) == PINNED[kind], (
        f"the {kind} config hash changed: finished runs would be orphaned. If on purpose, say so "
        "in the change and update the pin")
    assert RunStore(tmp_path).run(kind, cfg).path == tmp_path / f"{kind}_{PINNED[kind]}"


def test_a_field_at_its_default_is_left_out_of_the_hash():
    from lthfast.runs import to_dict

    data = to_dict(pinned_config("imp"))
    assert "prune_fraction" not in data and "momentum" not in data["recipe"]
    changed = CIFAR10_RANDOM_2048.config(SubsetSpec(kind="random", size=2048, seed=1).identity())
    assert hash_of(changed) != PINNED["imp"]


def test_stage_layout_scratch_and_names(tmp_path):
    run = RunStore(tmp_path).run("imp", pinned_config("imp"))
    assert run.stage(1, 3).path == run.path / "replicate_1" / "level_3"
    assert run.stage(0, 2, "lmc").path == run.path / "replicate_0" / "level_2" / "lmc"
    assert run.stage(1, 3).name == "imp/replicate_1/level_3"
    stages = [run.stage(0, 2), run.stage(3, 2)]
    assert run.scratch(stages) == run.path / "scratch" / "level_2_group_0_3"
    pre = RunStore(tmp_path).run("pretrain", pinned_config("pretrain"))
    assert pre.scratch([pre.stage(0)]) == pre.path / "scratch" / "group_0"
    with pytest.raises(ValueError):
        RunStore(tmp_path).run("nosuchkind", {})


def test_records_are_typed_ordered_and_skip_branches(tmp_path):
    run = RunStore(tmp_path).run("imp", pinned_config("imp")).create()
    for replicate, level in [(1, 0), (0, 1), (0, 0)]:
        run.stage(replicate, level).mark_done(StageRecord(
            replicate=replicate, level=level, start=200, end=62400, test_acc=0.5, test_loss=1.0))
    run.stage(0, 0, "lmc").mark_done(StageRecord(replicate=0, level=0, branch="lmc", start=0,
                                                 end=0, test_acc=None, test_loss=None))
    records = run.records()
    assert [(r.replicate, r.level) for r in records] == [(0, 0), (0, 1), (1, 0)]
    assert all(isinstance(r, StageRecord) and r.branch is None for r in records)
    assert run.stage(0, 0, "lmc").record().branch == "lmc"
    atomic_write_json(run.stage(2, 0).file("done.json"), [])  # hand-edited nonsense
    with pytest.raises(UserError, match="not a stage record"):
        run.records()


def test_a_directory_holding_another_config_is_refused(tmp_path):
    run = RunStore(tmp_path).run("imp", pinned_config("imp")).create()
    atomic_write_json(run.path / "config.json", {"something": "else"})
    with pytest.raises(UserError, match="different config"):
        RunStore(tmp_path).run("imp", pinned_config("imp")).create()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_honour_the_umask(tmp_path, umask, mode):
    """Colleagues on a shared cluster read each other's results (mkstemp alone gives 0600)."""
    old = os.umask(umask)
    try:
        run = RunStore(tmp_path).run("pretrain", pinned_config("pretrain")).create()
    finally:
        os.umask(old)
    for name in ("config.json", "env.json"):
        assert stat.S_IMODE((run.path / name).stat().st_mode) == mode


def test_spent_scratch_is_cleared_wherever_its_stages_live(tmp_path):
    """A packing group killed mid-way leaves a checkpoint; once every stage it trained is done
    (trained later in other groups), it goes, even when the group spans runs."""
    store = RunStore(tmp_path)
    a = store.run("imp", pinned_config("imp")).create()
    b = store.run("pretrain", pinned_config("pretrain")).create()
    spanning, own = [a.stage(0, 1), b.stage(0)], [a.stage(1, 1)]
    for stages in (spanning, own):
        (a.open_scratch(stages) / "checkpoint.pt").write_bytes(b"partial")
    legacy = a.path / "scratch" / "group_9"  # no stages.json: written by an older lthfast
    legacy.mkdir()

    def done(stage):
        stage.mark_done(StageRecord(replicate=stage.replicate, level=stage.level, start=0,
                                    end=1, test_acc=0.5, test_loss=1.0))

    done(a.stage(0, 1))
    store.clear_spent_scratch()
    assert a.scratch(spanning).exists() and a.scratch(own).exists()  # b's stage is not done
    done(b.stage(0))
    store.clear_spent_scratch()
    assert not a.scratch(spanning).exists() and a.scratch(own).exists()
    done(a.stage(1, 1))
    store.clear_spent_scratch()
    assert not a.scratch(own).exists() and legacy.exists()


def test_an_integer_in_a_float_field_hashes_as_the_float():
    """``lr=1`` from Python and ``--lr 1`` from the CLI (1.0) are one run."""
    from lthfast.config import Recipe

    def recipe(lr):
        return Recipe(model="resnet20", batch_size=128, lr=lr, milestones=(10,), steps=20)

    assert hash_of(recipe(1)) == hash_of(recipe(1.0)) != hash_of(recipe(2.0))
    assert isinstance(to_dict(recipe(1))["lr"], float)
    assert to_dict(recipe(1))["batch_size"] == 128  # int fields stay ints
