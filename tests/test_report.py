"""``lthfast report``: the run store -> CSV tables (imp.csv, lmc.csv, ...) -> accuracy-vs-sparsity
plots; a damaged file is named (what was left out, how to repair) and nothing else is dropped.

    pytest tests/test_report.py -q
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import lthfast.cli as cli_module
from lthfast.figures import curves
from lthfast.results import imp_rows, read_csv, write_csv

SMALL = ["imp", "--dataset", "digits", "--steps", "5", "--levels", "2", "--train-steps", "15",
         "--batch-size", "32", "--replicates", "2"]


@pytest.fixture(scope="module")
def two_runs(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    mp = pytest.MonkeyPatch()
    for extra in (["--subset", "all"], ["--subset", "random", "--size", "128"],
                  ["--subset", "all", "--lr", "0.05"]):
        mp.setattr(sys, "argv", ["lthfast", *SMALL, *extra, "--root", str(data_root),
                                 "--out", str(out)])
        cli_module.main()
    mp.undo()
    return out


def test_report_table_holds_every_finished_level(two_runs, run_cli):
    code, stdout, err = run_cli(["report", "--out", two_runs])
    assert code == 0, err
    paths = [Path(line) for line in stdout.split()]
    assert paths[-1] == two_runs / "report" / "imp.csv"
    rows = read_csv(paths[-1])
    assert len(rows) == 3 * 2 * 3  # runs × replicates × levels 0..2
    for results in two_runs.glob("imp_*/results.json"):
        data = json.loads(results.read_text())
        mine = [r for r in rows if r["run"] == results.parent.name]
        assert [(r["replicate"], r["level"], r["test_acc"]) for r in mine] == [
            (r["replicate"], r["level"], r["test_acc"]) for r in data["rows"]]
        assert {r["t_r"] for r in mine} == {5}
    assert {r["subset"] for r in rows} == {"all", "random"}
    assert {r["subset_size"] for r in rows} == {128, None}
    assert {r["lr"] for r in rows} == {0.1, 0.05}
    assert all(r["finished"] for r in rows)
    # pre-training accuracy of each replicate, from the pre-training run's records
    assert all(0 < r["pretrain_acc"] <= 1 for r in rows)

    # lr 0.05 and lr 0.1 are trained otherwise: two comparisons, two figures
    pngs = sorted(p.name for p in paths if p.suffix == ".png")
    assert pngs == ["fig_sparsity_digits_resnet8_0.05.png", "fig_sparsity_digits_resnet8_0.1.png"]
    assert all((two_runs / "report" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_curves_average_true_replicates_only_and_skip_diverged(two_runs, tmp_path):
    """A curve is one run (its whole config but the replicate): two runs that differ only in
    --lr stay two curves with n = 2 each, never one curve with n = 4."""
    rows = read_csv(write_csv(imp_rows(two_runs), tmp_path / "imp.csv"))
    c = curves(rows)
    assert set(c) == {"all data, t_r = 5, lr 0.1", "all data, t_r = 5, lr 0.05",
                      "random 128, t_r = 5, lr 0.1"}
    assert all(list(curve["n"]) == [2, 2, 2] for curve in c.values())
    ref = [r["test_acc"] for r in rows
           if r["subset"] == "all" and r["lr"] == 0.1 and r["level"] == 1]
    assert len(ref) == 2
    assert c["all data, t_r = 5, lr 0.1"]["mean"][1] == pytest.approx(np.mean(ref))
    # the sample std over replicates (ddof = 1), as "mean ± std of 4 replicates" means
    assert c["all data, t_r = 5, lr 0.1"]["std"][1] == pytest.approx(np.std(ref, ddof=1))
    np.testing.assert_allclose(c["all data, t_r = 5, lr 0.1"]["weights"], [1, 0.8, 0.64],
                               atol=1e-3)
    first = rows[0]
    first["diverged"] = True  # a diverged replicate is left out of the mean, not averaged in
    label = [name for name, curve in curves(rows).items() if list(curve["n"]).count(1) == 1]
    assert len(label) == 1


def test_report_shows_finished_levels_of_an_unfinished_run_flagged(two_runs, tmp_path, run_cli):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(two_runs, out)
    [run] = [p for p in out.glob("imp_*") if '"lr": 0.05' in (p / "config.json").read_text()]
    (run / "results.json").unlink()  # as if the process had been killed before the end
    code, stdout, err = run_cli(["report", "--out", out, "--no-plots"])
    assert code == 0, err
    rows = read_csv(Path(stdout.split()[-1]))
    mine = [r for r in rows if r["run"] == run.name]
    assert len(mine) == 6 and not any(r["finished"] for r in mine)
    assert all(r["finished"] for r in rows if r["run"] != run.name)


def test_report_without_runs_is_a_user_error(tmp_path, run_cli):
    code, stdout, err = run_cli(["report", "--out", tmp_path])
    assert code == 2 and stdout == ""
    assert err.startswith("error: no finished IMP, LMC, warmup or analysis runs")
    assert not (tmp_path / "report").exists()


def test_report_joins_barriers_to_schemes_for_fig5(data_root, tmp_path, run_cli):
    """lmc.csv has one row per LMC summary and replicate; schemes.csv puts a scheme's
    pre-training accuracy, mean barrier at w_{t_r} and final accuracy per level side by side."""
    common = ["--dataset", "digits", "--steps", "5", "--train-steps", "15", "--batch-size", "32",
              "--root", data_root, "--out", tmp_path]
    code, out, err = run_cli(["lmc", *common])
    assert code == 0, err
    barrier = json.loads(Path(out.split()[-1]).read_text())["loss_barrier"]
    code, _, err = run_cli(["imp", *common, "--levels", "1"])
    assert code == 0, err
    code, out, err = run_cli(["report", "--out", tmp_path, "--no-plots"])
    assert code == 0, err
    paths = [Path(p) for p in out.split()]
    assert [p.name for p in paths] == ["lmc.csv", "lmc_onset.csv", "barrier_hist.csv",
                                       "schemes.csv", "imp_by_score.csv", "imp.csv"]
    import csv

    [lmc] = list(csv.DictReader(open(paths[0])))
    assert float(lmc["loss_barrier"]) == pytest.approx(barrier) and lmc["spawn_step"] == "5"
    schemes = list(csv.DictReader(open(paths[3])))
    assert [s["level"] for s in schemes] == ["0", "1"]
    assert all(float(s["loss_barrier"]) == pytest.approx(barrier) for s in schemes)
    assert all(0 < float(s["pretrain_acc"]) <= 1 and 0 < float(s["test_acc"]) <= 1
               for s in schemes)


def test_report_has_a_table_per_analysis(data_root, tmp_path, run_cli):
    common = ["--dataset", "digits", "--train-steps", "20", "--batch-size", "32",
              "--root", data_root, "--out", tmp_path]
    for args in (["warmup", "--warmup", "3", "--replicates", "2"],
                 ["errors", "--steps", "5", "--replicates", "2"],
                 ["grads", "--steps", "6", "--coherence-every", "3", "--coherence-batches", "2",
                  "--eval-every", "0"]):
        code, _, err = run_cli([*args, *common])
        assert code == 0, err
    code, out, err = run_cli(["report", "--out", tmp_path, "--no-plots"])
    assert code == 0, err
    import csv

    paths = {Path(p).name: Path(p) for p in out.split()}
    assert set(paths) == {"warmup.csv", "analyses.csv", "grads_steps.csv", "errors_hist.csv"}
    warm = list(csv.DictReader(open(paths["warmup.csv"])))
    assert [(r["replicate"], r["warmup"], r["diverged"]) for r in warm] == [
        ("0", "3", "False"), ("1", "3", "False")]
    rows = list(csv.DictReader(open(paths["analyses.csv"])))
    assert sorted(r["analysis"] for r in rows) == ["errors", "errors", "grads"]
    assert all(float(r["error_mean"]) > 0 for r in rows if r["analysis"] == "errors")
    assert all(float(r["mean_grad_norm"]) > 0 for r in rows if r["analysis"] == "grads")


def test_grads_steps_has_the_eval_subset_accuracy_named_by_its_kind(data_root, tmp_path,
                                                                   run_cli):
    """Fig. 7a's third curve: the accuracy on --eval-subset easy (eval_subset_acc.npy) is the
    series easy_acc; a network without --eval-subset has no such series (its array is NaN)."""
    common = ["--dataset", "digits", "--train-steps", "20", "--batch-size", "32", "--steps", "4",
              "--eval-every", "2", "--coherence-every", "2", "--coherence-batches", "2",
              "--el2n-models", "2", "--el2n-steps", "3", "--root", data_root, "--out", tmp_path]
    for extra in (["--eval-subset", "easy", "--eval-size", "50"], []):
        code, _, err = run_cli(["grads", *extra, *common])
        assert code == 0, err
    code, out, err = run_cli(["report", "--out", tmp_path, "--no-plots"])
    assert code == 0, err
    import csv

    rows = list(csv.DictReader(open(tmp_path / "report" / "grads_steps.csv")))
    series = {}
    for r in rows:
        series.setdefault(r["summary"], set()).add(r["series"])
    assert sorted(sorted(s - {"grad_norm", "coherence"}) for s in series.values()) == [
        ["easy_acc", "subset_acc", "test_acc", "train_acc"],
        ["subset_acc", "test_acc", "train_acc"]]
    easy = [float(r["value"]) for r in rows if r["series"] == "easy_acc"]
    assert [int(r["step"]) for r in rows if r["series"] == "easy_acc"] == [0, 2, 4]
    assert all(0 <= v <= 1 for v in easy)


def test_onset_is_the_first_spawn_step_after_which_the_barrier_stays_under_two_percent():
    from lthfast.results import onset_rows

    def rows(barriers, scheme="all"):
        return [{"dataset": "cifar10", "model": "resnet20", "subset": scheme, "subset_size": "",
                 "rank_by": "", "label_noise": 0.0, "level": "", "spawn_step": t, "replicate": r,
                 "error_barrier": b + (0.001 if r else -0.001)}
                for t, b in barriers.items() for r in (0, 1)]

    # dips under 2% at 100, comes back at 200, stays under from 400: the onset is 400
    table = rows({0: 0.3, 50: 0.1, 100: 0.015, 200: 0.05, 400: 0.01, 800: 0.005})
    table += rows({0: 0.3, 100: 0.05}, scheme="easy")  # never connected
    onset = {r["subset"]: r["onset"] for r in onset_rows(table)}
    assert onset == {"all": 400, "easy": ""}


def test_onset_keeps_lmc_runs_that_differ_in_any_flag_apart():
    """Spawned from schemes that differ only in seed, pre-training lr, class balance, number of
    children or the children's train steps, barriers are separate curves with their own onsets:
    averaged together, the connected scheme's onset at 0 would be lost."""
    from lthfast.results import onset_rows

    base = {"dataset": "cifar10", "model": "resnet20", "subset": "random", "subset_size": 2048,
            "rank_by": "", "class_balanced": "", "seed": 0, "pretrain_lr": 0.4, "lr": 0.1,
            "train_steps": 62400, "label_noise": 0.0, "level": "", "children": 2,
            "alphas": "0.5"}
    variants = [{}, {"seed": 1}, {"pretrain_lr": 0.1}, {"class_balanced": True},
                {"children": 3}, {"train_steps": 31200}]
    table = [base | change | {"spawn_step": t, "replicate": r, "t_r": t,
                              "error_barrier": 0.0 if not change else 0.3}
             for change in variants for t in (0, 100) for r in (0, 1)]
    rows = onset_rows(table)
    assert len(rows) == len(variants)
    onsets = sorted((r["onset"] != "", r["seed"], r["pretrain_lr"], str(r["class_balanced"]),
                     r["children"], r["train_steps"]) for r in rows)
    assert onsets == sorted([(True, 0, 0.4, "", 2, 62400), (False, 1, 0.4, "", 2, 62400),
                             (False, 0, 0.1, "", 2, 62400), (False, 0, 0.4, "True", 2, 62400),
                             (False, 0, 0.4, "", 3, 62400), (False, 0, 0.4, "", 2, 31200)])
    assert [r["onset"] for r in rows if r["onset"] != ""] == [0]


def test_runs_ranked_by_other_scores_are_other_curves():
    """Two easy runs whose EL2N ensembles differ (e.g. --score-models 2 vs 3) rank their subsets
    by other scores: the table keeps them apart (the scores' content hash), and so do curves,
    onsets and barrier matching, which key on these columns."""
    from lthfast.results import config_columns

    def config(scores):
        return {"pretrain": {"dataset": "digits", "recipe": {"steps": 5, "lr": 0.2},
                             "subset": {"kind": "easy", "size": 100, "rank_by": "el2n",
                                        "scores": scores}},
                "recipe": {"model": "resnet8", "lr": 0.1, "steps": 20, "batch_size": 32}}

    a, b = config_columns(config("aaaa")), config_columns(config("bbbb"))
    assert a["scores"] == "aaaa" and b["scores"] == "bbbb"
    assert [k for k in a if a[k] != b[k]] == ["scores"]


def test_a_truncated_done_json_is_named_and_only_its_stage_is_left_out(two_runs, tmp_path,
                                                                       run_cli):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(two_runs, out)
    [run] = [p for p in out.glob("imp_*") if '"lr": 0.05' in (p / "config.json").read_text()]
    done = run / "replicate_0" / "level_1" / "done.json"
    done.write_text(done.read_text()[:20])  # cut mid-write, as a full disk leaves it
    code, stdout, err = run_cli(["report", "--out", out, "--no-plots"])
    assert code == 0, err
    [warning] = err.splitlines()
    assert warning.startswith(f"warning: {done} is damaged (not valid JSON)")
    assert "left out that stage's results (replicate_0/level_1)" in warning
    assert f"delete {done} and rerun the 'lthfast imp' command" in warning
    rows = read_csv(Path(stdout.split()[-1]))
    mine = [(r["replicate"], r["level"]) for r in rows if r["run"] == run.name]
    assert sorted(mine) == [(0, 0), (0, 2), (1, 0), (1, 1), (1, 2)]  # 5 of 6 kept
    assert len(rows) == 3 * 2 * 3 - 1


def test_damaged_lmc_files_are_named_with_their_repair(data_root, tmp_path, run_cli):
    """A truncated per-example barrier array drops only that replicate's histogram; a
    truncated summary is named in the one error line when nothing else is left to report."""
    code, out, err = run_cli(["lmc", "--dataset", "digits", "--steps", "3", "--train-steps", "12",
                              "--batch-size", "32", "--replicates", "2", "--root", data_root,
                              "--out", tmp_path])
    assert code == 0, err
    summary = Path(out.split()[-1])
    [npy] = sorted(tmp_path.glob("pretrain_*/replicate_1/lmc_*/loss_barrier.npy"))
    npy.write_bytes(npy.read_bytes()[:100])
    code, stdout, err = run_cli(["report", "--out", tmp_path, "--no-plots"])
    assert code == 0, err
    [warning] = err.splitlines()
    assert warning.startswith(f"warning: {npy} is damaged")
    assert "the loss barrier histogram of replicate 1" in warning
    assert "rerun the 'lthfast lmc'" in warning
    import csv

    hist = list(csv.DictReader(open(tmp_path / "report" / "barrier_hist.csv")))
    assert {(r["replicate"], r["barrier"]) for r in hist} == {
        ("0", "loss_barrier"), ("0", "error_barrier"), ("1", "error_barrier")}
    assert len(list(csv.DictReader(open(tmp_path / "report" / "lmc.csv")))) == 2

    summary.write_text(summary.read_text()[:50])
    code, stdout, err = run_cli(["report", "--out", tmp_path, "--no-plots"])
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{summary} is damaged (not valid JSON)" in err and "rerun the 'lthfast lmc'" in err


def test_schemes_never_join_barriers_of_children_trained_otherwise():
    """An IMP run trained 40 steps per level meets only the barrier of children trained 40
    steps (not the average with 80-step children); children counts that differ are two rows."""
    from lthfast.results import CONFIG_COLUMNS, scheme_rows

    ident = {c: "" for c in CONFIG_COLUMNS} | {"dataset": "digits", "subset": "all", "t_r": 4,
                                               "lr": 0.1, "train_steps": 40}
    imp = [ident | {"run": "imp_a", "replicate": 0, "level": 1, "test_acc": 0.8,
                    "pretrain_acc": 0.3, "weights_remaining": 0.8, "diverged": False}]
    lmc = [ident | {"run": f"lmc_{steps}_{children}", "spawn_step": 4, "level": "",
                    "children": children, "alphas": "0.5", "replicate": 0, "train_steps": steps,
                    "loss_barrier": barrier, "error_barrier": barrier}
           for steps, children, barrier in ((40, 2, 0.1), (80, 2, 0.9), (40, 3, 0.2))]
    rows = scheme_rows(imp, lmc)
    assert sorted((r["children"], r["loss_barrier"]) for r in rows) == [(2, 0.1), (3, 0.2)]


def test_runs_name_their_files_and_the_report_asks_them(tmp_path):
    """``Run``/``Stage`` own the layout: summaries of an analysis, per-example arrays; the
    report's modules hold no file name of the run layout and glob nothing themselves."""
    import re

    from lthfast.runs import RunStore

    run = RunStore(tmp_path).run("pretrain", {"a": 1})
    run.path.mkdir(parents=True)
    for name in ("lmc_0123456789ab.json", "errors.json", "errors_level_3.json",
                 "grads_0123456789ab.json", "config.json", "errorsx.json"):
        (run.path / name).write_text("{}")
    for r in (10, 2):
        (run.path / f"replicate_{r}").mkdir()
    assert [p.name for p in run.summaries("errors")] == ["errors.json", "errors_level_3.json"]
    assert [p.name for p in run.summaries("lmc")] == ["lmc_0123456789ab.json"]
    assert run.summary("lmc_0123456789ab") == run.path / "lmc_0123456789ab.json"
    assert run.replicates() == [2, 10]
    stage = run.stage(1, 3, "lmc_0123456789ab")
    assert stage.array("loss_barrier") == stage.path / "loss_barrier.npy"
    assert stage.done_file == stage.path / "done.json"
    root = Path(__file__).parent.parent / "lthfast"
    for module in ("results.py", "report.py", "figures.py"):
        text = (root / module).read_text()
        code = re.sub(r'"""[\s\S]*?"""', "", text)  # docstrings may name files
        assert not re.search(r"\.glob\(|\"[^\"\n]*(done|results|config)\.json|\.npy\"|"
                             r"\"replicate_|\"level_", code), module


def test_a_truncated_stage_array_is_one_line_naming_it_and_the_repair(tmp_path):
    """``scores lmc`` reads the children's per-example barriers through ``Stage.load``: a
    truncated ``loss_barrier.npy`` is a ``UserError`` (exit 2), not a numpy traceback."""
    from lthfast.errors import UserError
    from lthfast.runs import RunStore

    stage = RunStore(tmp_path).run("pretrain", {"a": 1}).stage(1, None, "lmc_0123456789ab")
    stage.path.mkdir(parents=True)
    np.save(stage.array("loss_barrier"), np.arange(100, dtype=np.float32))
    assert list(stage.load("loss_barrier")) == list(range(100))
    stage.array("loss_barrier").write_bytes(stage.array("loss_barrier").read_bytes()[:100])
    with pytest.raises(UserError) as err:
        stage.load("loss_barrier")
    message = str(err.value)
    assert len(message.splitlines()) == 1 and str(stage.array("loss_barrier")) in message
    assert f"delete {stage.done_file} and rerun" in message
