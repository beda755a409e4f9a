"""The request layer: requests carry only the flags their command uses, every flag's type and
bounds are checked in one place with one message per kind of mistake, rules between flags are
checked before anything runs, and a flag a command ignores by design is refused (two requests
that differ only there would be one run).

    python -m pytest -q tests/test_requests.py
"""

from __future__ import annotations

import dataclasses

import pytest

from lthfast import api
from lthfast.errors import UserError
from lthfast.api import request_from

DIGITS = dict(dataset="digits")
WARMUP = dict(dataset="digits", subset="random", size=100, warmup=5)


@pytest.mark.parametrize("field", ["label_noise", "noise_seed", "model", "pretrain_lr", "levels",
                                   "steps"])
def test_warmup_carries_no_flag_it_does_not_use(field):
    assert field not in {f.name for f in dataclasses.fields(api.WarmupRequest)}
    with pytest.raises(UserError, match=f"^warmup does not use --{field.replace('_', '-')} "):
        request_from("warmup", WARMUP | {field: 1})


@pytest.mark.parametrize("command", ["lmc", "errors", "grads"])
def test_analyses_carry_no_levels(command):
    assert "levels" not in {f.name for f in dataclasses.fields(api.REQUESTS[command])}
    request_from(command, DIGITS | {"steps": 5})
    with pytest.raises(UserError, match=f"^{command} does not use --levels"):
        request_from(command, DIGITS | {"steps": 5, "levels": 4})


@pytest.mark.parametrize("kind", ["el2n", "forgetting"])
def test_ensemble_scores_refuse_the_lmc_only_fields(kind):
    base = api.ScoreRequest(dataset="digits", kind=kind)
    base.check()
    for field, value in (("children", 4), ("pretrain_lr", 0.1)):
        changed = dataclasses.replace(base, **{field: value})
        assert changed.config() == base.config()  # ignored: the same run
        with pytest.raises(UserError, match=f"^scores {kind} does not use "
                                            f"--{field.replace('_', '-')}"):
            changed.check()
    lmc = api.ScoreRequest(dataset="digits", kind="lmc", children=4, pretrain_lr=0.1)
    lmc.check()  # lmc uses both
    assert lmc.config() != dataclasses.replace(lmc, children=3, pretrain_lr=None).config()


def test_imp_with_pretrain_lr_ranks_by_the_same_el2n_scores():
    """imp uses --pretrain-lr for its own pre-training; the EL2N scores it derives do not, so
    they are the scores of the same request without it (and the request is accepted)."""
    easy = api.ImpRequest(dataset="digits", subset="easy", size=100, pretrain_lr=0.05)
    easy.check()
    assert easy.score_request().pretrain_lr is None
    plain = dataclasses.replace(easy, pretrain_lr=None)
    assert easy.score_request().config() == plain.score_request().config()
    by_lmc = dataclasses.replace(easy, rank_by="lmc")
    by_lmc.check()
    assert by_lmc.score_request().pretrain_lr == 0.05  # the lmc scores' parent uses it


@pytest.mark.parametrize("make,message", [
    # wrong types from Python: refused when the request is made, never deep in a loader
    (lambda: api.ImpRequest(steps=2.0), "--steps takes int"),
    (lambda: api.ImpRequest(size="200"), "--size takes int"),
    (lambda: api.LmcRequest(children="3"), "--children takes int"),
    (lambda: api.LmcRequest(alphas=(0.25, 0.5)), "--alphas takes str"),
    (lambda: api.ImpRequest(levels=None), "--levels takes int"),
    (lambda: api.ImpRequest(shared_subset=1), "--shared-subset takes bool"),
    (lambda: request_from("predict", {}), "unknown command 'predict'"),
    (lambda: api.imp_many([api.LmcRequest(dataset="digits")], None), "imp_many takes imp"),
    # one generic message per bound, naming the flag the user typed
    (lambda: request_from("warmup", {"dataset": "digits", "train_steps": -5}),
     "--train-steps must be >= 1, got -5"),
    (lambda: request_from("imp", {"train-steps": 5}), "use train_steps"),
    (lambda: request_from("imp", {"lr": float("inf")}), "--lr must be a finite number, got inf"),
    (lambda: request_from("errors", {"pretrain_lr": float("inf")}),
     "--pretrain-lr must be a finite"),
    (lambda: request_from("warmup", {"dataset": "cifar10", "lr": float("inf")}), "--lr must be"),
    (lambda: request_from("warmup", {"dataset": "digits", "warmup": 1}), "--warmup 1 is no warmup"),
    (lambda: request_from("imp", {"label_noise": 1.5}), "--label-noise must be <= 1"),
    (lambda: request_from("lmc", {"children": 1}), "--children must be >= 2, got 1"),
    # flags an analysis ignores by design: refused (else two requests would share one run)
    (lambda: request_from("grads", {"lr": 0.1}), "grads does not use --lr"),
    (lambda: request_from("errors", {"dataset": "digits", "lr": 0.1}),
     "errors does not use --lr without --level"),
])
def test_every_mistake_is_one_user_error(make, message):
    with pytest.raises(UserError, match=None) as caught:
        make()
    assert message in str(caught.value), str(caught.value)


def test_python_values_are_typed_like_the_cli():
    """An int where a float is meant is that float, a str where a path is meant that path:
    one run, one hash, from Python, a sweep file or the CLI."""
    request = api.ImpRequest(lr=1, subset_file="x.npy")
    assert isinstance(request.lr, float) and request.lr == 1.0
    assert request.subset_file.__class__.__name__.endswith("Path")


@pytest.mark.parametrize("command,flags,level", [
    ("errors", {"steps": 5}, 100_000), ("lmc", {"steps": 5}, 400), ("imp", {}, 100)])
def test_levels_beyond_where_the_weights_run_out_are_refused(command, flags, level):
    """Level k keeps 0.8^k of the prunable weights: past the level that leaves less than one
    weight in the network's smallest prunable layer there is nothing left to train."""
    name = "levels" if command == "imp" else "level"
    with pytest.raises(UserError, match=f"--{name}"):
        request_from(command, DIGITS | flags | {name: level})
    request_from(command, DIGITS | flags | {name: 12})  # the paper's last level: fine


def test_help_of_every_training_command_comes_from_its_request():
    """The CLI is built from the requests: each command has an option per flag of its request
    and of the runtime, and says per command what a shared flag means there."""
    import typer.main

    from lthfast.cli import app
    from lthfast.options import opts
    from lthfast.runtime import options as runtime_options

    commands = typer.main.get_command(app).commands
    for name, cls in api.REQUESTS.items():
        params = {p.name: p for p in commands[name].params}
        for option in opts(cls) + runtime_options():
            assert params[option.name].help == option.opt.help, (name, option.name)
    helps = {name: {p.name: p.help for p in commands[name].params} for name in commands}
    assert "warmup" in helps["warmup"]["subset"] and "pre-training" not in helps["warmup"]["subset"]
    assert "pre-training only" in helps["imp"]["label_noise"]
    assert "pre-training" not in helps["scores"]["label_noise"]
    assert "lr" not in helps["grads"] and "label_noise" not in helps["warmup"]
    assert "--lr" in commands["grads"].help  # and the command's help says why


@pytest.mark.parametrize("args,message", [
    (["lmc", "--children", "100000"], "for one training stage"),
    (["lmc", "--children", "1" + "0" * 21], "for one training stage"),
    (["warmup", "--replicates", "100000"], "for one training stage"),
    (["lmc", "--batch-size", "1000000000"], "for one training stage"),
    (["lmc", "--train-steps", "1000000000000"], "for one training stage"),
    (["grads", "--coherence-batches", "1000000000"], "--coherence-batches must be <="),
    (["errors", "--level", "100000"], "--level 100000 leaves less than one"),
    (["lmc", "--lr", "inf"], "--lr must be a finite number"),
    (["errors", "--pretrain-lr", "inf"], "--pretrain-lr must be a finite number"),
    (["warmup", "--lr", "inf"], "--lr must be a finite number"),
])
def test_what_cannot_fit_is_refused_before_any_work(args, message, tmp_path, run_cli):
    """Issue #24: huge values crashed or hung after writing files; now one line, exit 2."""
    code, out, err = run_cli(args + ["--dataset", "digits", "--device", "cpu", "--root",
                                     tmp_path / "root", "--out", tmp_path / "out"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "out").exists() and not (tmp_path / "root").exists()


def test_memory_estimate_grows_with_what_is_packed():
    from lthfast.memory import stage_bytes

    one = stage_bytes("resnet20", 32, 128, 1, 1000)
    assert stage_bytes("resnet20", 32, 128, 4, 1000) > 3 * one
    assert stage_bytes("resnet20", 32, 256, 1, 1000) > one
    assert stage_bytes("resnet20", 8, 128, 1, 1000) < one  # digits' 8x8 images
    assert 100e6 < one < 1e9  # ~2.7 MB of saved activations per example in fp32


def test_duplicate_grid_points_are_refused(tmp_path):
    from lthfast.sweep import load_sweep

    path = tmp_path / "s.toml"
    path.write_text('command = "imp"\n[flags]\ndataset = "digits"\nsubset = "random"\n'
                    '[grid]\nsize = [64, 128, 64]\n')
    with pytest.raises(UserError, match="grid entry 'size' lists 64 twice"):
        load_sweep(path)
    path.write_text('command = "imp"\n[flags]\ndataset = "digits"\n[grid]\nseed = [1, 2]\n')
    assert load_sweep(path).size == 2


def test_one_table_names_each_command_its_request_and_runner():
    """Issue #20: a command is one entry of ``api.COMMANDS`` (its request and its runner); the
    CLI and the ``REQUESTS`` / ``RUNNERS`` views read it, and a second registration is refused."""
    import typer.main

    from lthfast.cli import app

    assert list(api.COMMANDS) == ["imp", "scores", "lmc", "errors", "grads", "warmup"]
    for name, entry in api.COMMANDS.items():
        assert entry.request.COMMAND == name and api.REQUESTS[name] is entry.request
        assert api.RUNNERS[name] is entry
    assert api.COMMANDS["lmc"].run is api.lmc and api.COMMANDS["imp"].run is api.imp
    assert set(api.COMMANDS) <= set(typer.main.get_command(app).commands)
    with pytest.raises(ValueError, match="registered twice"):
        api.command(api.LmcRequest)(lambda req, rt: None)


def test_a_command_registered_once_is_known_to_requests_sweeps_and_their_runs(monkeypatch,
                                                                               tmp_path):
    """A new command is its request and one registration: plain values, sweep files and a
    sweep point's run find it with nothing else to edit."""
    from lthfast.experiments.common import Runtime
    from lthfast.requests import COMMON, check_common, compose
    from lthfast.sweep import load_sweep
    from lthfast.sweep.records import run_point

    fake = compose("FakeRequest", "fake", "a fake analysis", [COMMON], dict(check=check_common))
    ran = []
    monkeypatch.setitem(api.COMMANDS, "fake", api.Command(
        fake, lambda req, rt: ran.append(req) or tmp_path / f"seed{req.seed}"))
    request, _ = request_from("fake", {"dataset": "digits", "seed": 3})
    assert request == fake(dataset="digits", seed=3) and api.REQUESTS["fake"] is fake
    path = tmp_path / "s.toml"
    path.write_text('command = "fake"\n[flags]\ndataset = "digits"\n[grid]\nseed = [1, 2]\n')
    assert load_sweep(path).size == 2
    record = run_point("fake", {"dataset": "digits", "seed": 2}, Runtime(device="cpu"))
    assert record["status"] == "ok" and record["artifact"] == str(tmp_path / "seed2")
    assert ran == [fake(dataset="digits", seed=2)]
    with pytest.raises(UserError, match="^fake does not use --levels"):
        request_from("fake", {"levels": 3})
