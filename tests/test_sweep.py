"""Sweep files: the shipped ones expand to the paper's grids; bad files fail before any run; a
real sweep runs every point, reports a failing one without stopping, and a rerun trains nothing.

    pytest tests/test_sweep.py -q
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest
import torch

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


# each shipped sweep file and the number of runs its grid holds
SHIPPED = {"fig2_3_cifar10.toml": 24, "fig2_baselines_cifar10.toml": 3, "fig2_3_cifar100.toml": 18,
           "fig2_baselines_cifar100.toml": 3, "fig2_3_cinic10.toml": 12,
           "fig2_baselines_cinic10.toml": 4, "fig4_15_label_noise_cifar10.toml": 16,
           "fig12_forgetting_cifar10.toml": 6, "el2n_scores.toml": 3, "demo_digits.toml": 3,
           "fig4_15_noisy_baselines_cifar10.toml": 4, "fig14a_cinic10_tr200.toml": 12,
           "onset_lmc_cifar10.toml": 8, "fig5a_lmc_cifar100.toml": 18,
           "fig5a_lmc_all_cifar100.toml": 3, "fig5b_lmc_cinic10.toml": 12,
           "fig5b_lmc_all_cinic10.toml": 3, "fig6_warmup_easy_cifar10.toml": 18,
           "fig6_warmup_hard_random_cifar10.toml": 36, "fig6_warmup_all_cifar10.toml": 6,
           "fig7_grads_easy_cifar100.toml": 1, "fig7_grads_all_cifar100.toml": 1,
           "fig8_grads_cifar10.toml": 2,
           "fig9_errors_all_cinic10.toml": 4, "fig9_errors_easy_cinic10.toml": 2,
           "fig10_el2n_scores.toml": 2, "fig10_lmc_scores.toml": 6,
           "fig11a_lmc_scores_cifar100.toml": 6, "fig11b_lmc_scores_cinic10.toml": 3,
           "score_zoo_cifar10.toml": 42}
BEYOND_THE_PAPER = {"demo_digits.toml", "score_zoo_cifar10.toml"}  # not run by paper.sh


@pytest.mark.parametrize("name,count", SHIPPED.items())
def test_shipped_sweeps_expand_to_their_grids(name, count, tmp_path, run_cli):
    code, out, err = run_cli(["sweep", SWEEPS / name, "--dry-run", "--out", tmp_path / "o"])
    assert code == 0, err
    commands = [shlex.split(line) for line in out.splitlines()]
    assert len(commands) == count
    assert len({tuple(c) for c in commands}) == count  # every grid point is a different run
    assert all(c[0] == "lthfast" and "--out" in c for c in commands)
    assert not (tmp_path / "o").exists()  # a dry run writes nothing


def test_every_shipped_sweep_is_checked_and_run_by_paper_sh():
    assert {p.name for p in SWEEPS.glob("*.toml")} == set(SHIPPED)
    import re

    listed = set(re.findall(r"[\w.]+\.toml", (SWEEPS / "paper.sh").read_text()))
    assert set(SHIPPED) - BEYOND_THE_PAPER <= listed


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_sweep_file_says_what_it_reproduces(name):
    header = "\n".join(line for line in (SWEEPS / name).read_text().splitlines()
                       if line.startswith("#"))
    assert f"lthfast sweep sweeps/{name}" in header and "# Expected:" in header


BAD_SWEEPS = [
    ("not toml", 'command = "imp"\n[flags\n', "malformed"),
    ("unknown command", 'command = "train"\n', "'command' must be one of"),
    ("unknown flag", 'command = "imp"\n[grid]\nsubset_size = [1, 2]\n', "--subset-size"),
    ("flag of another command", 'command = "imp"\n[flags]\nmodels = 3\n', "--models"),
    ("empty grid list", 'command = "imp"\n[grid]\nsize = []\n', "non-empty list"),
    ("list in flags", 'command = "imp"\n[flags]\nsize = [1, 2]\n', "single value"),
    ("both flags and grid", 'command = "imp"\n[flags]\nsize = 1\n[grid]\nsize = [2]\n',
     "both"),
    ("scores without argument", 'command = "scores"\n', "argument"),
    ("stray key", 'command = "imp"\nrepeat = 3\n', "repeat"),
    ("wrong type in the grid", 'command = "imp"\n[flags]\nsubset = "random"\n'
     '[grid]\nsize = [50, "abc"]\n', "run 2 (subset=random, size=abc): --size takes int"),
    ("argument for imp", 'command = "imp"\nargument = "el2n"\n', "takes no argument"),
    ("string for a switch", 'command = "imp"\n[flags]\ndeterministic = "yes"\n',
     "--deterministic takes bool"),
    ("out in the file", 'command = "imp"\n[flags]\nout = "elsewhere"\n',
     "belongs to the sweep command"),
    ("bad value in a later point", 'command = "imp"\n[grid]\nlevels = [1, -1]\n',
     "run 2 (levels=-1): --levels must be >= 0"),
    ("huge grid", 'command = "imp"\n[grid]\nseed = [%s]\nnoise_seed = [%s]\nlevels = [1, 2, 3]\n'
     % (", ".join(map(str, range(1000))), ", ".join(map(str, range(1000)))), "limit of 100,000"),
    # the argument is every run's kind: a kind axis would collide into identical runs
    ("kind axis beside the argument", 'command = "scores"\nargument = "el2n"\n'
     '[grid]\nkind = ["el2n", "forgetting"]\n', "'kind' cannot be in [flags] or [grid]"),
    ("kind flag beside the argument", 'command = "scores"\nargument = "el2n"\n'
     '[flags]\nkind = "forgetting"\n', "'kind' cannot be in [flags] or [grid]"),
    # fields a command does not use: its points would be one run (and no CLI command)
    ("warmup label noise axis", 'command = "warmup"\n[flags]\ndataset = "digits"\n'
     'subset = "random"\nsize = 100\n[grid]\nlabel_noise = [0.0, 0.1]\n',
     "run 2 (dataset=digits, subset=random, size=100, label_noise=0.1): warmup does not use "
     "--label-noise"),
    ("el2n children", 'command = "scores"\nargument = "el2n"\n[flags]\ndataset = "digits"\n'
     'children = 4\n', "scores el2n does not use --children"),
    ("lmc scores spawned past the schedule", 'command = "scores"\nargument = "lmc"\n'
     '[flags]\ndataset = "digits"\n[grid]\nsteps = [100, 300]\n',
     "run 2 (dataset=digits, steps=300, kind=lmc): --steps 300 (the lmc spawn step)"),
    # runtime flags are checked like request fields, before any run
    ("unknown loader in a later point", 'command = "imp"\n[flags]\ndataset = "digits"\n'
     '[grid]\nloader = ["device", "bogus"]\n',
     "run 2 (dataset=digits, loader=bogus): unknown loader 'bogus'"),
    ("negative checkpoint interval", 'command = "imp"\n[flags]\ncheckpoint_every = -5\n',
     "--checkpoint-every must be >= 0"),
    ("cuda graphs with the ffcv loader", 'command = "imp"\n[flags]\ncuda_graph = true\n'
     'loader = "ffcv"\n', "--cuda-graph needs --loader device"),
]


@pytest.mark.parametrize("text,message", [c[1:] for c in BAD_SWEEPS],
                         ids=[c[0] for c in BAD_SWEEPS])
def test_malformed_sweep_fails_before_any_run(text, message, tmp_path, run_cli):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code, out, err = run_cli(["sweep", path, "--out", tmp_path / "out"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert out == "" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,message", [c[1:] for c in BAD_SWEEPS],
                         ids=[c[0] for c in BAD_SWEEPS])
def test_malformed_sweep_fails_its_dry_run(text, message, tmp_path, run_cli):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code, out, err = run_cli(["sweep", path, "--dry-run"])
    assert code == 2 and err.startswith("error: ") and message in err and out == "", err


@pytest.mark.parametrize("launcher", ["inprocess", "local"])
@pytest.mark.parametrize("dry_run", [False, True])
def test_cuda_graphs_in_a_cpu_sweep_fail_before_any_run(launcher, dry_run, tmp_path, run_cli):
    """The device is the sweep command's: once known, every point's runtime flags are checked
    with it before the first run (or job), not when that point comes."""
    path = tmp_path / "s.toml"
    path.write_text('command = "imp"\n[flags]\ndataset = "digits"\nsubset = "random"\n'
                    'size = 64\nsteps = 2\nlevels = 0\ntrain_steps = 4\n'
                    '[grid]\ncuda_graph = [false, true]\n')
    args = ["sweep", path, "--device", "cpu", "--out", tmp_path / "out", "--launcher", launcher]
    code, out, err = run_cli(args + (["--dry-run"] if dry_run else []))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "run 2 (" in lines[0] and "--cuda-graph needs a CUDA device" in lines[0]
    assert out == "" and not (tmp_path / "out").exists()


def test_runtime_flags_of_a_request_are_checked_with_its_runtime(tmp_path):
    from lthfast import api
    from lthfast.errors import UserError
    from lthfast.experiments.common import Runtime

    point = {"dataset": "digits", "cuda_graph": True}
    _, flags = api.request_from("imp", point)  # the device not known: allowed
    assert flags == {"cuda_graph": True}
    with pytest.raises(UserError, match="--cuda-graph needs a CUDA device"):
        api.request_from("imp", point, Runtime(out=tmp_path, device="cpu"))
    with pytest.raises(UserError, match="--checkpoint-every must be >= 0"):
        api.request_from("imp", {"checkpoint_every": -1})
    rt = api.with_flags(Runtime(out=tmp_path, device="cpu"), {"checkpoint_every": 7})
    assert rt.checkpoint_every == 7 and rt.device == "cpu"


def parse_command_line(line: str):
    """A --dry-run line through the real CLI's parser: (command, its parameters); raises on a
    word the CLI rejects."""
    import typer.main

    from lthfast.cli import app

    words = shlex.split(line)
    assert words[0] == "lthfast"
    command = typer.main.get_command(app).commands[words[1]]
    return words[1], command.make_context(words[1], words[2:]).params


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_dry_run_prints_commands_the_cli_parses_into_the_same_runs(name, run_cli):
    """Every printed command parses with the real typer app, into the request (and runtime
    flags) the sweep itself runs for that point."""
    from lthfast import api, cli
    from lthfast.sweep import load_sweep

    code, out, err = run_cli(["sweep", SWEEPS / name, "--dry-run", "--device", "cpu"])
    assert code == 0, err
    spec = load_sweep(SWEEPS / name)
    lines = out.splitlines()
    assert len(lines) == spec.size
    for line, point in zip(lines, spec.points()):
        command, params = parse_command_line(line)
        assert command == spec.command
        request, flags = api.request_from(command, point)
        assert cli.request(type(request), params) == request, line
        assert {k: params[k] for k in flags} == flags, line


def test_false_switches_are_written_as_the_cli_takes_them(tmp_path, run_cli):
    """A false switch with a --no- form is written so; one without (--shared-subset,
    --deterministic, --cuda-graph: off by default) is left out: the CLI has no --no- for it."""
    path = tmp_path / "s.toml"
    path.write_text('command = "imp"\n[flags]\ndataset = "digits"\nsubset = "random"\n'
                    'size = 64\nshared_subset = false\ndeterministic = false\n'
                    'cuda_graph = false\n[grid]\ncompile = [false, true]\n'
                    'class_balanced = [false, true]\n')
    code, out, err = run_cli(["sweep", path, "--dry-run", "--device", "cpu"])
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 4 and not any("--no-shared" in w or "--no-deterministic" in w
                                       or "--no-cuda" in w for w in lines)
    seen = []
    for line in lines:
        _, params = parse_command_line(line)
        assert params["shared_subset"] is False and params["deterministic"] is False
        seen.append((params["compile"], params["class_balanced"]))
    assert seen == [(False, False), (False, True), (True, False), (True, True)]
    path.write_text('command = "imp"\n[flags]\nshared_subset = true\ndeterministic = true\n')
    code, out, err = run_cli(["sweep", path, "--dry-run", "--device", "cpu"])
    assert code == 0, err
    _, params = parse_command_line(out.strip())
    assert params["shared_subset"] is True and params["deterministic"] is True


def test_missing_sweep_file(tmp_path, run_cli):
    code, _, err = run_cli(["sweep", tmp_path / "nope.toml"])
    assert code == 2 and "does not exist" in err


def test_sweep_runs_every_point_and_reruns_nothing(data_root, tmp_path, run_cli):
    sweep = tmp_path / "s.toml"
    sweep.write_text('command = "imp"\n[flags]\ndataset = "digits"\nsteps = 5\nlevels = 1\n'
                     'train_steps = 15\nbatch_size = 32\nsubset = "random"\n'
                     '[grid]\nsize = [64, 100000, 128]\n')
    args = ["sweep", sweep, "--root", data_root, "--out", tmp_path / "out"]
    code, out, err = run_cli(args)
    # the impossible size is reported, the points after it still run, the exit code says so
    assert code == 2 and "1 of 3 runs failed" in err.splitlines()[-1]
    lines = out.split()
    assert len(lines) == 3 and lines[0] != lines[1]
    summary = json.loads(Path(lines[-1]).read_text())
    assert [r["status"] for r in summary["runs"]] == ["ok", "error", "ok"]
    assert "--size" in summary["runs"][1]["error"]
    for run, record in zip(lines[:2], [summary["runs"][0], summary["runs"][2]]):
        assert record["artifact"] == run
        rows = json.loads((Path(run) / "results.json").read_text())["rows"]
        assert [r["level"] for r in rows] == [0, 1]

    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("done.json")}
    code, out2, err2 = run_cli(args)
    assert code == 2 and out2 == out
    assert "level 0:" not in err2 and "pre-train:" not in err2  # nothing was trained again
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("done.json")} == done


def test_packed_sweep_gives_the_runs_of_an_unpacked_one(data_root, tmp_path, run_cli):
    """--pack: the good points train packed across runs, the bad one fails alone, and the run
    directories hold the same results as a sweep run point by point."""
    sweep = tmp_path / "s.toml"
    sweep.write_text('command = "imp"\n[flags]\ndataset = "digits"\nsteps = 5\nlevels = 1\n'
                     'train_steps = 15\nbatch_size = 32\nsubset = "random"\n'
                     'deterministic = true\n[grid]\nsize = [64, 100000, 128]\n')
    results = {}
    for mode in ("packed", "unpacked"):
        args = ["sweep", sweep, "--root", data_root, "--out", tmp_path / mode]
        code, out, err = run_cli(args + (["--pack"] if mode == "packed" else []))
        assert code == 2 and "1 of 3 runs failed" in err.splitlines()[-1]
        lines = out.split()
        summary = json.loads(Path(lines[-1]).read_text())
        assert [r["status"] for r in summary["runs"]] == ["ok", "error", "ok"]
        results[mode] = [json.loads((Path(run) / "results.json").read_text())["rows"]
                         for run in lines[:2]]
        if mode == "packed":
            assert [r.get("packed") for r in summary["runs"]] == [2, None, 2]
    assert results["packed"] == results["unpacked"]
    code, _, err = run_cli(["sweep", sweep, "--pack", "--workers", "2", "--out", tmp_path / "x"])
    assert code == 2 and "--pack" in err and not (tmp_path / "x").exists()


def test_packed_points_of_one_run_are_one_job(data_root, tmp_path, run_cli):
    """Points that differ only in --levels are one IMP run: packed, it is trained once to the
    most levels and both points report it (as without --pack)."""
    sweep = tmp_path / "s.toml"
    sweep.write_text('command = "imp"\n[flags]\ndataset = "digits"\nsteps = 5\n'
                     'train_steps = 15\nbatch_size = 32\nsubset = "random"\nsize = 64\n'
                     '[grid]\nlevels = [1, 2]\n')
    code, out, err = run_cli(["sweep", sweep, "--pack", "--root", data_root,
                              "--out", tmp_path / "out"])
    assert code == 0, err
    first, second = out.split()[:2]
    assert first == second
    rows = json.loads((Path(first) / "results.json").read_text())["rows"]
    assert [r["level"] for r in rows] == [0, 1, 2]


def test_each_packed_group_trains_under_its_own_torch_settings(data_root, tmp_path,
                                                                  monkeypatch):
    """Preparing a later point sets torch up for it; a group must train under its own flags."""
    import lthfast.experiments.imp as imp
    from lthfast import api
    from lthfast.experiments.common import Runtime

    seen = []
    real = imp.train_stage
    monkeypatch.setattr(imp, "train_stage", lambda *a, **k: (
        seen.append(torch.are_deterministic_algorithms_enabled()), real(*a, **k))[1])
    request = api.ImpRequest(dataset="digits", subset="random", size=64, steps=2, levels=0,
                             train_steps=4, batch_size=16)
    rt = Runtime(root=data_root, out=tmp_path, device="cpu", progress=None)
    strict = api.prepare_imp(request, dataclasses.replace(rt, deterministic=True))
    api.prepare_imp(dataclasses.replace(request, seed=1), rt)  # leaves torch non-deterministic
    api.run_prepared_imps([strict])
    assert seen == [True, True]  # pre-training and level 0
    torch.use_deterministic_algorithms(False)


def test_each_run_starts_from_a_clean_torch_state(tmp_path):
    """A deterministic run must not leave deterministic mode on for the next run of a sweep."""
    import torch

    from lthfast.api import runtime
    from lthfast.experiments.common import setup_torch

    setup_torch(runtime(out=tmp_path, device="cpu", deterministic=True))
    assert torch.are_deterministic_algorithms_enabled()
    setup_torch(runtime(out=tmp_path, device="cpu"))
    assert not torch.are_deterministic_algorithms_enabled()


def test_sweep_records_paths_with_spaces_exactly(data_root, tmp_path, run_cli):
    sweep = tmp_path / "s.toml"
    sweep.write_text('command = "scores"\nargument = "el2n"\n[flags]\ndataset = "digits"\n'
                     'models = 1\nsteps = 2\nbatch_size = 16\n[grid]\nseed = [0]\n')
    out = tmp_path / "my runs"
    code, stdout, err = run_cli(["sweep", sweep, "--root", data_root, "--out", out])
    assert code == 0, err
    summary = json.loads(Path(stdout.splitlines()[-1]).read_text())
    artifact = Path(summary["runs"][0]["artifact"])
    assert artifact.exists() and artifact.parent.parent == out


def test_ctrl_c_stops_a_sweep_and_records_the_run_as_interrupted(data_root, tmp_path):
    """SIGINT during the first run: exit 130 with the resume hint, that run recorded as
    interrupted (not ok), the later runs never started."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sweep = tmp_path / "s.toml"
    sweep.write_text('command = "imp"\n[flags]\ndataset = "digits"\nsteps = 5\nlevels = 1\n'
                     'train_steps = 400\nbatch_size = 32\n[grid]\nseed = [0, 1]\n')
    trace = tmp_path / "trace.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LTHFAST_")}
    env["LTHFAST_TRACE"] = str(trace)
    proc = subprocess.Popen([sys.executable, "-m", "lthfast", "sweep", str(sweep), "--root",
                             str(data_root), "--out", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60  # wait until the first run's level 0 is training
    while time.time() < deadline and not (
            trace.exists() and "imp/replicate_0/level_0" in trace.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; rerun the same command to resume" in err
    [summary] = (tmp_path / "out").glob("sweep_*.json")
    runs = json.loads(summary.read_text())["runs"]
    assert [r["status"] for r in runs] == ["interrupted"]
    assert runs[0]["flags"]["seed"] == 0


def test_submitit_local_launcher_runs_the_grid_and_a_resubmission_trains_nothing(
        data_root, tmp_path, run_cli):
    pytest.importorskip("submitit")
    sweep = tmp_path / "s.toml"
    sweep.write_text('command = "imp"\n[flags]\ndataset = "digits"\nsteps = 2\nlevels = 0\n'
                     'train_steps = 6\nbatch_size = 16\nsubset = "random"\n'
                     '[grid]\nsize = [32, 48]\n')
    args = ["sweep", sweep, "--launcher", "local", "--time-min", "10", "--root", data_root,
            "--out", tmp_path / "out"]
    code, out, err = run_cli(args)
    assert code == 0, err
    lines = out.split()
    summary = json.loads(Path(lines[-1]).read_text())
    assert summary["launcher"] == "local" and [r["status"] for r in summary["runs"]] == ["ok", "ok"]
    assert [r["artifact"] for r in summary["runs"]] == lines[:2]
    assert all((Path(a) / "results.json").exists() for a in lines[:2])
    assert len({r["job"] for r in summary["runs"]}) == 2  # two jobs, really
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("done.json")}
    assert len(done) == 4  # 2 runs x (pre-training + level 0)
    code, out2, err2 = run_cli(args)  # submitted again: every stage is found done
    assert code == 0, err2
    assert out2.split()[:2] == lines[:2]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("done.json")} == done
