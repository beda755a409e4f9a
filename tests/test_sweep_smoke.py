"""Smoke scale: every shipped sweep file keeps its grid at smoke scale and every smoke point
validates; the smoke commands are valid command lines; one figure's smoke sweep runs end to end
(CI's smoke sweep), with per-point wall times in its record and progress with ETA on stderr.

    pytest tests/test_sweep_smoke.py -q
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from lthfast.sweep import smoke
from lthfast.errors import UserError
from lthfast.sweep import load_sweep

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"
FILES = sorted(p.name for p in SWEEPS.glob("*.toml"))


@pytest.mark.parametrize("name", FILES)
def test_smoke_sweep_keeps_the_grid_and_every_point_validates(name):
    full = load_sweep(SWEEPS / name)
    small = smoke.smoke_sweep(full)  # checks every point, like load_sweep
    assert small.scale == "smoke" and small.command == full.command
    assert list(small.grid) == list(full.grid), "an axis was dropped or reordered"
    for axis, values in full.grid.items():
        assert len(small.grid[axis]) == len(values), axis
        # distinct values stay distinct (a dataset axis too: each dataset has its stand-in)
        assert len(set(small.grid[axis])) == len(set(values)), (axis, small.grid[axis])
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            order = sorted(range(len(values)), key=values.__getitem__)
            assert [small.grid[axis][i] for i in order] == sorted(small.grid[axis]), axis
    assert small.size == full.size
    for point, big in zip(small.points(), full.points()):  # tiny: 40 iterations, 1 replicate
        assert point["dataset"] == smoke.stand_in(big.get("dataset", "cifar10"))
        assert point["train_steps"] == smoke.TRAIN_STEPS
        assert point.get("replicates", 1) == 1 and point.get("levels", 0) <= smoke.LEVELS
        assert point.get("steps", 0) < smoke.TRAIN_STEPS
        assert point.get("size", 0) <= smoke.SIZE_MAX
        assert point.get("score_models", 2) <= 2 and point.get("models", 2) <= 2
        assert point.get("warmup", 0) < smoke.TRAIN_STEPS


def test_smoke_file_headers_name_the_smoke_command():
    for name in FILES:
        text = (SWEEPS / name).read_text()
        assert f"lthfast sweep sweeps/{name} --smoke" in text, name


def test_every_flag_has_a_smoke_rule():
    """A new request field must say how it shrinks (or that it stays), else smoke sweeps
    would silently run it at full scale."""
    from lthfast.api import REQUESTS, RUNTIME_FLAGS

    names = {f.name for cls in REQUESTS.values() for f in dataclasses.fields(cls)}
    assert names | set(RUNTIME_FLAGS) <= set(smoke.RULES)


def test_smoke_commands_are_valid_command_lines(tmp_path, run_cli):
    """--smoke --dry-run prints commands the CLI parses (no flag of another command)."""
    import typer.main

    from lthfast.cli import app

    commands = typer.main.get_command(app).commands
    for name in FILES:
        code, out, err = run_cli(["sweep", SWEEPS / name, "--smoke", "--dry-run"])
        assert code == 0, err
        for line in out.splitlines():
            words = shlex.split(line)
            assert words[0] == "lthfast" and "--dataset" in words
            commands[words[1]].make_context(words[1], words[2:])  # raises on a bad flag


def test_each_dataset_has_its_own_small_stand_in_on_digits_schedule():
    """CIFAR-10, CIFAR-100 and CINIC-10 map to three different 8x8 sets of about digits' size
    (so a point costs what a digits point costs) whose presets give the one smoke schedule."""
    from lthfast.config import preset_for
    from lthfast.data.sources.synthetic import SyntheticSpec, variant_name

    assert len(set(smoke.STAND_INS.values())) == len(smoke.STAND_INS) == 3
    assert smoke.STAND_INS["cifar10"] == "digits"
    specs = {d: SyntheticSpec.parse(s.split(":", 1)[1]) for d, s in smoke.STAND_INS.items()
             if d != "cifar10"}
    assert specs["cifar100"].classes > 10 == specs["cinic10"].classes  # more classes, as C100
    for dataset, spec in specs.items():
        name = smoke.STAND_INS[dataset]
        assert name == variant_name(name.split(":", 1)[1])  # canonical: the run's own name
        assert spec.size == 8 and 1_300 <= spec.train <= 1_600 and spec.train > smoke.SIZE_MAX
        assert preset_for(name).model == "resnet8"
    for dataset in smoke.STAND_INS:
        scale = smoke.Scale.of("imp", dataset)
        assert scale.dataset == smoke.STAND_INS[dataset]
        assert scale.schedule == ("resnet8", smoke.TRAIN_STEPS, smoke.T_STAR, smoke.SCORE_STEPS)
    # a dataset axis maps value by value; every value shares the one smoke schedule
    small = smoke.smoke_sweep(load_sweep(SWEEPS / "el2n_scores.toml"))
    assert small.grid["dataset"] == [smoke.STAND_INS[d] for d in ("cifar10", "cifar100",
                                                                  "cinic10")]


def test_two_files_of_two_datasets_stay_two_comparisons_at_smoke_scale(tmp_path):
    """Fig. 2's CIFAR-10 and CINIC-10 baselines run on different stand-ins, so their figure is
    two comparisons (one per source dataset), each with only its own runs."""
    import matplotlib.pyplot as plt

    from lthfast.figures import FIGURES
    from lthfast.results import write_csv

    rows = []
    for name in ("fig2_baselines_cifar10.toml", "fig2_baselines_cinic10.toml"):
        small = smoke.smoke_sweep(load_sweep(SWEEPS / name))
        for i, p in enumerate(small.points()):  # a report row per point and level
            rows += [{"run": f"imp_{name}_{i}", "dataset": p["dataset"], "model": "resnet8",
                      "subset": "all", "t_r": p["steps"], "train_steps": p["train_steps"],
                      "replicate": 0, "level": level, "weights_remaining": 0.8 ** level,
                      "test_acc": 0.9 - 0.01 * level, "diverged": False, "finished": True}
                     for level in range(p["levels"] + 1)]
    write_csv(rows, tmp_path / "imp.csv")
    drawings = FIGURES["best"](tmp_path)
    try:
        # titles are wrapped to the panel: compare without line breaks and spaces
        titles = [d.figure.axes[0].get_title().replace("\n", "").replace(" ", "")
                  for d in drawings]
        assert len(drawings) == 2, titles
        assert [[d for d in ("cifar10", "cinic10") if f":{smoke.STAND_INS[d]},resnet8" in t]
                for t in titles] == [["cifar10"], ["cinic10"]]
        # CIFAR-10's baselines: t_r = 0, t*/2, t*; CINIC-10's also t* = 400 of Fig. 14a
        counts = sorted(len([line for line in d.figure.axes[0].get_lines()
                             if line.get_label() != "dense"]) for d in drawings)
        assert counts == sorted(len(list(load_sweep(SWEEPS / n).points())) for n in (
            "fig2_baselines_cifar10.toml", "fig2_baselines_cinic10.toml"))
    finally:
        for d in drawings:
            plt.close(d.figure)


def test_an_eval_subset_is_ranked_by_the_same_smoke_ensemble_as_the_pre_training_subset():
    """Fig. 7a: the all-data network's accuracy on the easy subset is on the easy network's
    subset, so both rank by one smoke-scale EL2N ensemble (not the preset's 10 networks)."""
    easy, every = (list(smoke.smoke_sweep(load_sweep(SWEEPS / f"fig7_grads_{n}_cifar100.toml"))
                        .points()) for n in ("easy", "all"))
    for p in easy + every:
        assert (p["score_models"], p["score_steps"]) == (2, smoke.SCORE_STEPS), p
    assert {p["eval_size"] for p in every} == {p["size"] for p in easy}


def test_values_collide_upwards_and_map_alike_across_files():
    scale = smoke.Scale.of("lmc", "cifar10")
    # the onset's spawn steps: 50 and 100 round to the same iteration; kept apart, in order
    assert smoke.smoke_axis("steps", [0, 50, 100, 200, 400, 3200], scale) == [0, 1, 2, 3, 4, 32]
    # sizes are not bumped at the paper's spacing: 2048 is the same subset in every file
    imp = smoke.Scale.of("imp", "cifar10")
    assert smoke.smoke_axis("size", [2048], imp) == smoke.smoke_axis(
        "size", [256, 2048, 25600], imp)[1:2]
    assert smoke.Scale.of("imp", "digits").examples(256) == 256  # digits stays as it is


def test_a_file_naming_full_scale_files_has_no_smoke_scale(tmp_path, run_cli):
    sweep = tmp_path / "s.toml"
    np = pytest.importorskip("numpy")
    np.save(tmp_path / "sub.npy", np.arange(10))
    sweep.write_text(f'command = "imp"\n[flags]\nsubset_file = "{tmp_path / "sub.npy"}"\n')
    code, out, err = run_cli(["sweep", sweep, "--smoke", "--dry-run"])
    assert code == 2 and err.count("\n") == 1 and "no smoke scale" in err and out == ""
    with pytest.raises(UserError, match="no smoke scale"):
        smoke.Scale.of("imp", "nosuchset")


def test_a_figure_smoke_sweep_runs_end_to_end_with_timing(data_root, tmp_path, run_cli):
    """CI's smoke sweep: Figs. 4/15's noisy all-data baselines (4 runs of IMP with label noise
    in pre-training, at t*/2 and t*), then the report and the figure drawn from it."""
    out = tmp_path / "out"
    name = "fig4_15_noisy_baselines_cifar10.toml"
    code, stdout, err = run_cli(["sweep", SWEEPS / name, "--smoke", "--root", data_root,
                                 "--out", out, "--device", "cpu"])
    assert code == 0, err
    lines = stdout.split()
    record = json.loads(Path(lines[-1]).read_text())
    assert record["scale"] == "smoke" and record["seconds"] > 0
    runs = record["runs"]
    assert [r["status"] for r in runs] == ["ok"] * 4
    assert [r["flags"]["label_noise"] for r in runs] == [0.1, 0.1, 0.5, 0.5]
    assert all(0 < r["seconds"] <= record["seconds"] for r in runs)  # each point's wall time
    assert [r["artifact"] for r in runs] == lines[:4]
    for run in lines[:4]:
        rows = json.loads((Path(run) / "results.json").read_text())["rows"]
        assert [r["level"] for r in rows] == list(range(smoke.LEVELS + 1))
    # progress on stderr: each point's time, elapsed, and an ETA while points are left
    assert "[sweep 1/4] ok in " in err and "1 of 4 done, elapsed " in err and "ETA " in err
    assert "[sweep 4/4] ok in " in err and "4 of 4 done" in err
    code, report, err = run_cli(["report", "--out", out])
    assert code == 0, err
    code, figure, err = run_cli(["plot", "sparsity", "--out", out])
    assert code == 0, err
    assert all(Path(p).stat().st_size > 0 for p in figure.split())


def test_sweep_clock_says_elapsed_and_eta():
    from lthfast.progress import SweepClock

    now = [100.0]
    clock = SweepClock(4, now=lambda: now[0])
    now[0] += 30
    assert clock.done() == "1 of 4 done, elapsed 30.0 s, ETA 1 min 30 s"
    now[0] += 90
    assert clock.done() == "2 of 4 done, elapsed 2 min 00 s, ETA 2 min 00 s"
    now[0] += 7200
    assert clock.done().endswith("elapsed 2 h 02 min, ETA 40 min 40 s")
    assert clock.done() == "4 of 4 done, elapsed 2 h 02 min"
