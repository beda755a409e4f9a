"""One name per knob (issue #20): the ranking score's knobs are ``--score-models`` /
``--score-steps`` on every command that ranks a subset; their old names (``--el2n-models`` /
``--el2n-steps``, ``el2n_models`` / ``el2n_steps`` in sweep files and the API's plain values)
are hidden aliases (``Opt.aliases``) that mean exactly the same run; ``subset --seed`` is
``--subset-seed``'s.

    python -m pytest -q tests/test_aliases.py
"""

from __future__ import annotations

import typer.main

from lthfast import api, cli
from lthfast.runs import hash_of
from lthfast.sweep import load_sweep

NEW = {"score_models": 3, "score_steps": 7}
OLD = {"el2n_models": 3, "el2n_steps": 7}
EASY = dict(dataset="cifar10", subset="easy", size=1000)


def parsed(command: str, args: list[str]):
    """The request the CLI builds from ``args`` (parsed by the real typer command)."""
    click_command = typer.main.get_command(cli.app).commands[command]
    params = click_command.make_context(command, list(args)).params
    return cli.request(api.REQUESTS[command], params)


def words(values: dict) -> list[str]:
    return [w for k, v in values.items() for w in (f"--{k.replace('_', '-')}", str(v))]


def test_the_old_flags_make_the_same_request_and_runs_as_the_new():
    for command in ("imp", "lmc", "errors", "grads", "warmup"):
        base = ["--dataset", "cifar10", "--subset", "easy", "--size", "1000"]
        new, old = parsed(command, base + words(NEW)), parsed(command, base + words(OLD))
        assert new == old and (new.score_models, new.score_steps) == (3, 7), command
        cfg = new.score_request().config()
        assert hash_of(cfg) == hash_of(old.score_request().config())
    # what the knobs drive: the ranking score's ensemble size and iterations, any score
    ranked = parsed("imp", words(EASY) + ["--rank-by", "forgetting", "--el2n-models", "4"])
    assert ranked.score_request().kind == "forgetting" and ranked.score_request().models == 4


def test_old_plain_values_mean_the_new_and_keep_the_pinned_hash():
    new, _ = api.request_from("imp", EASY | NEW)
    old, _ = api.request_from("imp", EASY | OLD)
    assert new == old
    # tests/test_run_hashes.py pins this one under the new names: the same run
    pinned, _ = api.request_from("imp", EASY | {"el2n_models": 4, "el2n_steps": 300})
    cfg = pinned.score_request().config()
    assert f"{cfg.score}_{hash_of(cfg)}" == "el2n_b6700ba0630b"


def test_old_flags_are_hidden_from_help(run_cli):
    for command in ("imp", "warmup"):
        code, out, err = run_cli([command, "--help"])
        assert code == 0, err
        assert "--score-models" in out and "--score-steps" in out
        assert "el2n-models" not in out and "el2n-steps" not in out
    code, out, _ = run_cli(["subset", "--help"])
    assert "--subset-seed" in out and "--seed " not in out


def test_a_knob_given_by_both_names_is_one_line_error(run_cli, tmp_path):
    code, out, err = run_cli(["imp", *words(EASY), "--score-models", "3", "--el2n-models", "4",
                              "--out", tmp_path / "out"])
    assert code == 2 and out == ""
    assert err.strip() == "error: --score-models given twice (once by its old name " \
                          "--el2n-models)"
    code, _, err = run_cli(["subset", "random", "--dataset", "digits", "--size", "8",
                            "--subset-seed", "2", "--seed", "3", "--root", tmp_path])
    assert code == 2 and "--subset-seed given twice" in err


def test_a_sweep_file_with_the_old_keys_runs_what_it_meant(tmp_path, run_cli):
    old = tmp_path / "old.toml"
    old.write_text('command = "imp"\n[flags]\ndataset = "cifar10"\nsubset = "easy"\n'
                   'el2n_models = 3\n[grid]\nsize = [1000, 2000]\nel2n_steps = [7, 9]\n')
    new = tmp_path / "new.toml"
    new.write_text(old.read_text().replace("el2n_", "score_"))
    points = list(load_sweep(old).points())
    assert points == list(load_sweep(new).points())  # one spelling: same points, same summary
    assert {p["score_steps"] for p in points} == {7, 9} and all("el2n_steps" not in p
                                                                 for p in points)
    request, _ = api.request_from("imp", points[0])
    assert (request.score_models, request.score_steps) == (3, 7)
    code, out, err = run_cli(["sweep", old, "--dry-run", "--device", "cpu"])
    assert code == 0, err
    assert "--score-models 3 --size 1000 --score-steps 7" in out and "el2n-" not in out
    # both spellings of one knob in a file: refused, whichever table holds them
    both = tmp_path / "both.toml"
    both.write_text('command = "imp"\n[flags]\nel2n_models = 3\nscore_models = 3\n')
    code, _, err = run_cli(["sweep", both, "--dry-run"])
    assert code == 2 and "el2n_models and score_models are one flag" in err, err
    both.write_text('command = "imp"\n[flags]\nel2n_models = 3\n[grid]\nscore_models = [3]\n')
    code, _, err = run_cli(["sweep", both, "--dry-run"])
    assert code == 2 and "score_models in both [flags] and [grid]" in err, err


def test_a_smoke_sweep_with_the_old_keys_shrinks_them(tmp_path):
    from lthfast.sweep.smoke import smoke_sweep

    old = tmp_path / "old.toml"
    old.write_text('command = "imp"\n[flags]\ndataset = "cifar10"\nsubset = "easy"\n'
                   'size = 1000\nel2n_models = 10\nel2n_steps = 7800\n')
    [point] = list(smoke_sweep(load_sweep(old)).points())
    assert point["score_models"] == 2 and point["score_steps"] == 12  # CAPS, SCORE_STEPS
