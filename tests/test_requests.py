"""Requests refuse the fields their command does not use: two requests that differ only in such a
field would be the same run (a warmup with label noise would train on true labels, a sweep's
grid points along that axis would collide). Every field a CLI command has no option for is such
a field, and the CLI never passes one by default.

    python -m pytest -q tests/test_requests.py
"""

from __future__ import annotations

import dataclasses

import pytest

from lthfast import api
from lthfast.errors import UserError

WARMUP = dict(dataset="digits", subset="random", size=100, warmup=5)


@pytest.mark.parametrize("field,value", [("label_noise", 0.1), ("noise_seed", 1),
                                         ("model", "resnet20"), ("pretrain_lr", 0.1),
                                         ("levels", 3)])
def test_warmup_refuses_the_fields_it_does_not_use(field, value):
    plain = api.WarmupRequest(**WARMUP)
    plain.check()
    changed = dataclasses.replace(plain, **{field: value})
    # what made it a bug: the run (its config) is that of the plain request
    assert changed.warmup_config(1438, {}) == plain.warmup_config(1438, {})
    flag = "--" + field.replace("_", "-")
    with pytest.raises(UserError, match=f"^warmup does not use {flag} "):
        changed.check()


@pytest.mark.parametrize("command", ["lmc", "errors", "grads"])
def test_analyses_refuse_levels(command):
    cls = api.REQUESTS[command]
    cls(dataset="digits", steps=5, levels=0).check()  # its default: fine
    with pytest.raises(UserError, match=f"^{command} does not use --levels"):
        cls(dataset="digits", steps=5, levels=4).check()


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


def cli_commands():
    import typer.main

    from lthfast.cli import app

    return typer.main.get_command(app).commands


@pytest.mark.parametrize("command", sorted(api.REQUESTS))
def test_fields_without_a_cli_option_are_unused_and_cli_defaults_pass(command):
    """A field the CLI cannot set must be one the request refuses when set (a sweep file could
    otherwise set it, and --dry-run would print a command the CLI rejects); and what the CLI
    passes by default (``cli.request`` of every option at its default) is accepted."""
    from lthfast import cli

    cls = api.REQUESTS[command]
    params = cli_commands()[command].params
    options = {word.lstrip("-").replace("-", "_") for p in params for word in p.opts}
    fields = {f.name for f in dataclasses.fields(cls)}
    request = cli.request(cls, {p.name: p.default for p in params} |
                          ({"kind": "el2n"} if command == "scores" else {}))
    missing = fields - options - {"kind"}  # scores' kind: the positional argument
    assert missing <= set(request.unused()), missing - set(request.unused())
    request.check_unused()  # the CLI's defaults are the requests' defaults
    for name in fields & options:
        assert getattr(request, name) == getattr(cls(), name), name
