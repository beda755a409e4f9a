"""``lthfast plot``: every figure renders a non-empty PNG and PDF from small report tables
(written here in the report's own format), and a missing table is one clear error.

    python -m pytest -q tests/test_figures.py
"""

from __future__ import annotations

import itertools

import pytest

from lthfast.figures import FIGURES
from lthfast.results import (ANALYSIS_COLUMNS, COLUMNS, LMC_COLUMNS, SCHEME_COLUMNS,
                             WARMUP_COLUMNS, write_csv)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("out") / "report"
    d.mkdir()
    imp = []
    for (subset, size, t_r), replicate, level in itertools.product(
            [("easy", 256, 20), ("random", 256, 20), ("easy", 512, 20), ("all", "", 20),
             ("all", "", 0)], [0, 1], range(4)):
        imp.append({"run": f"imp_{subset}{size}{t_r}", "dataset": "digits", "model": "resnet8",
                    "subset": subset, "subset_size": size, "t_r": t_r, "replicate": replicate,
                    "level": level, "weights_remaining": 0.8 ** level,
                    "test_acc": 0.9 - 0.01 * level + 0.01 * replicate, "test_loss": 0.3,
                    "pretrain_acc": 0.5, "diverged": False, "finished": True})
    write_csv(imp, d / "imp.csv")
    lmc = [{"run": "lmc_x", "dataset": "digits", "subset": "all", "subset_size": "",
            "spawn_step": t, "level": "", "replicate": r, "loss_barrier": 0.1 / (t + 1),
            "error_barrier": 0.05 / (t + 1), "linearly_connected": t > 0}
           for t in (0, 10, 40) for r in (0, 1)]
    write_csv(lmc, d / "lmc.csv", LMC_COLUMNS)
    schemes = [{"subset": s, "subset_size": 256, "t_r": 20, "level": 3, "loss_barrier": b,
                "pretrain_acc": 0.5, "test_acc": a} for s, b, a in
               (("easy", 0.01, 0.9), ("random", 0.03, 0.85))]
    write_csv(schemes, d / "schemes.csv", SCHEME_COLUMNS)
    warm = [{"run": "w", "dataset": "digits", "subset": s, "subset_size": 400, "warmup": t,
             "replicate": 0, "test_acc": 0.9, "diverged": t == 0}
            for s in ("easy", "random") for t in (0, 5, 20)]
    write_csv(warm, d / "warmup.csv", WARMUP_COLUMNS)
    analyses = [{"analysis": "grads", "subset": s, "subset_size": 400, "t_r": 40, "level": "",
                 "replicate": 0, "mean_grad_norm": 1.2, "mean_coherence": 0.5,
                 "final_train_acc": 0.8, "final_test_acc": 0.7} for s in ("easy", "random")]
    analyses += [{"analysis": "errors", "subset": "easy", "subset_size": 400, "t_r": 40,
                  "level": level, "replicate": 0, "error_mean": 0.6, "error_q10": 0.1,
                  "error_q50": 0.5, "error_q90": 1.2} for level in ("", 4)]
    write_csv(analyses, d / "analyses.csv", ANALYSIS_COLUMNS)
    assert set(COLUMNS) >= {"run", "subset", "finished"}
    return d


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_figure_renders(name, report, run_cli):
    code, out, err = run_cli(["plot", name, "--out", report.parent])
    assert code == 0, err
    paths = [p for p in out.split()]
    assert paths and {p.rsplit(".", 1)[1] for p in paths} == {"png", "pdf"}
    for p in paths:
        data = open(p, "rb").read()
        assert len(data) > 2000
        assert data[:8] == b"\x89PNG\r\n\x1a\n" or data[:5] == b"%PDF-"


def test_a_missing_table_is_one_clear_error(tmp_path, run_cli):
    code, out, err = run_cli(["plot", "warmup", "--out", tmp_path])
    assert code == 2 and "run 'lthfast report' first" in err and len(err.splitlines()) == 1
    code, out, err = run_cli(["plot", "nosuch", "--out", tmp_path])
    assert code == 2 and "unknown figure" in err
