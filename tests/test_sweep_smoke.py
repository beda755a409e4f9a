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
        if axis != "dataset":  # distinct values stay distinct (only datasets collapse)
            assert len(set(small.grid[axis])) == len(set(values)), (axis, small.grid[axis])
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            order = sorted(range(len(values)), key=values.__getitem__)
            assert [small.grid[axis][i] for i in order] == sorted(small.grid[axis]), axis
    assert small.size == full.size
    for point in small.points():  # tiny: digits, a 40-iteration schedule, 1 replicate, ...
        assert point["dataset"] == "digits"
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
