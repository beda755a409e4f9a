"""Every option of every command, given a hostile value of its type, fails before any work:
exit 2, one ``error:`` line, no traceback, the data root unchanged and no run written.

The table below must name every value-taking option of the CLI (a new option without a hostile
value here fails ``test_every_option_has_a_hostile_value``).

    python -m pytest -q tests/test_hostile_flags.py
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import typer.main

from lthfast.cli import app

# option -> a value of its type that must be refused (the sandbox has a regular file "afile")
HOSTILE = {
    "--dataset": "nosuchset", "--subset": "bogus", "--size": "-3",
    "--subset-file": "missing.npy", "--subset-seed": "-1", "--offset": "-1",
    "--scores": "missing.npy", "--steps": "-1", "--levels": "-1", "--replicates": "0",
    "--label-noise": "1.5", "--noise-seed": "-1", "--rank-by": "bogus", "--score-models": "0",
    "--score-steps": "0", "--el2n-models": "0", "--el2n-steps": "0",  # the last two: old names
    "--model": "resnet7", "--batch-size": "0", "--lr": "0",
    "--pretrain-lr": "-1", "--train-steps": "0", "--loader": "bogus", "--root": "afile/sub",
    "--out": "afile/sub", "--seed": "-1", "--device": "bogus", "--checkpoint-every": "-5",
    "--level": "-1", "--children": "1", "--alphas": "0.5,x", "--coherence-every": "0",
    "--coherence-batches": "1", "--eval-every": "-1", "--warmup": "-1", "--models": "0",
    "--source": "/nonexistent", "--launcher": "bogus", "--partition": " ", "--time-min": "0",
    "--gpus-per-task": "-1", "--cpus-per-task": "0", "--array-parallelism": "0",
    "--workers": "-1", "--x": "bogus", "--y": "bogus", "--prune-fraction": "1",
    "--threads": "0", "--bn": "bogus", "--eval-subset": "bogus", "--eval-size": "0",
}
SWITCHES = {"--shared-subset", "--class-balanced", "--compile", "--deterministic", "--force",
            "--dry-run", "--plots", "--wait", "--smoke", "--pack", "--cuda-graph", "--list"}
# a valid command line per command; each case replaces or adds one option
BASE = {
    "imp": ["imp", "--dataset", "digits", "--steps", "2", "--train-steps", "4", "--levels", "0"],
    "lmc": ["lmc", "--dataset", "digits", "--steps", "2", "--train-steps", "4"],
    "errors": ["errors", "--dataset", "digits", "--steps", "2", "--train-steps", "4"],
    "grads": ["grads", "--dataset", "digits", "--steps", "2", "--train-steps", "4"],
    "warmup": ["warmup", "--dataset", "digits", "--warmup", "2", "--train-steps", "4"],
    "scores": ["scores", "el2n", "--dataset", "digits", "--models", "1", "--steps", "2"],
    "subset": ["subset", "random", "--dataset", "digits", "--size", "8"],
    "build-beton": ["build-beton", "digits"],
}
COMMANDS = typer.main.get_command(app).commands


def options(command: str) -> list[str]:
    return [p.opts[0] for p in COMMANDS[command].params if p.opts[0].startswith("--")]


def test_every_option_has_a_hostile_value():
    for name in COMMANDS:
        missing = set(options(name)) - set(HOSTILE) - SWITCHES
        assert not missing, f"{name}: no hostile value for {sorted(missing)}"


def with_option(args: list[str], option: str, value: str) -> list[str]:
    args = list(args)
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    return args


CASES = [(cmd, opt) for cmd in BASE for opt in options(cmd) if opt not in SWITCHES]


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != ".lock":
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def sandbox(data_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    shutil.copytree(data_root / "digits", base / "root" / "digits")
    (base / "afile").write_text("a regular file\n")
    return base, digest(base / "root")


@pytest.mark.parametrize("command,option", CASES)
def test_hostile_value_fails_before_any_work(command, option, sandbox, monkeypatch, run_cli):
    base, before = sandbox
    monkeypatch.chdir(base)
    args = BASE[command] + (["--root", "root"] if "--root" in options(command) else []) + (
        ["--out", "out"] if "--out" in options(command) else [])
    code, out, err = run_cli(with_option(args, option, HOSTILE[option]))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert "Traceback" not in err and out == ""
    assert digest(base / "root") == before, "the data root changed"
    assert not (base / "out").exists(), "a run directory was written"
