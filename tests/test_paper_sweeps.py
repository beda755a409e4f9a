"""The sweep files run the paper's experiments (issue 21, Found 2/3/5/10): datasets, sizes, t_r
grids, score steps, baselines and analyses as the captions and appendices give them, and the
smoke mapping shrinks an LMC score's spawn step like t*.

    python -m pytest -q tests/test_paper_sweeps.py
"""

from __future__ import annotations

from pathlib import Path

from lthfast.sweep import smoke
from lthfast.sweep import load_sweep

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


def points(name: str, small: bool = False) -> list[dict]:
    spec = load_sweep(SWEEPS / name)
    return list((smoke.smoke_sweep(spec) if small else spec).points())


def test_lmc_scores_spawn_where_the_paper_says_and_shrink_like_t_star():
    # Fig. 11a: LMC scores after 1,600 iterations (CIFAR-100, t* = 800); 11b: after 800 (CINIC-10)
    assert {p["score_steps"] for p in points("fig11a_lmc_scores_cifar100.toml")} == {1600}
    assert {p["score_steps"] for p in points("fig11b_lmc_scores_cinic10.toml")} == {800}
    assert all(p["rank_by"] == "lmc" for p in points("fig11a_lmc_scores_cifar100.toml"))
    # at smoke scale a spawn step keeps its fraction of t* (t* -> 4), not of the EL2N steps
    assert {p["score_steps"] for p in points("fig11a_lmc_scores_cifar100.toml", True)} == {8}
    assert {p["score_steps"] for p in points("fig11b_lmc_scores_cinic10.toml", True)} == {4}
    assert {p["steps"] for p in points("fig10_lmc_scores.toml", True)} == {2, 4, 8}


def test_the_el2n_curves_of_fig_11_use_el2n_at_appendix_a_steps():
    """Fig. 11's easy-EL2N curve is fig2_3_*'s: EL2N at the preset's steps (8,000 for CINIC-10),
    never at the LMC spawn step."""
    for name in ("fig2_3_cinic10.toml", "fig2_3_cifar100.toml"):
        assert all("score_steps" not in p for p in points(name))
    sizes = {p["size"] for p in points("fig2_3_cinic10.toml")}
    assert {p["size"] for p in points("fig11b_lmc_scores_cinic10.toml")} <= sizes


def test_warmup_grid_runs_to_3200_with_a_class_balanced_easy_subset():
    grid = [100, 200, 400, 800, 1600, 3200]
    for name in ("fig6_warmup_all_cifar10.toml", "fig6_warmup_easy_cifar10.toml",
                 "fig6_warmup_hard_random_cifar10.toml"):
        assert sorted({p["warmup"] for p in points(name)}) == grid
        assert all(p["replicates"] == 8 for p in points(name))
    assert all(p["subset"] == "easy" and p["class_balanced"]
               for p in points("fig6_warmup_easy_cifar10.toml"))


def test_fig7_is_cifar100_resnet32_1600_steps_easy_2048_vs_all_with_the_easy_accuracy():
    ps = points("fig7_grads_easy_cifar100.toml") + points("fig7_grads_all_cifar100.toml")
    assert {p["subset"] for p in ps} == {"easy", "all"}
    for p in ps:
        assert p["dataset"] == "cifar100" and p["steps"] == 1600
        assert p["coherence_every"] == 10 and p["coherence_batches"] == 16
        assert p["eval_subset"] == "easy" and p["eval_size"] == 2048
    assert [p["size"] for p in ps if p["subset"] == "easy"] == [2048]
    fig8 = points("fig8_grads_cifar10.toml")
    assert {(p["dataset"], p["steps"], p["size"], p["subset"]) for p in fig8} == {
        ("cifar10", 200, 25600, "easy"), ("cifar10", 200, 25600, "random")}


def test_fig9_is_one_cinic10_network_all_400_all_800_easy_400_at_levels_0_and_6():
    ps = points("fig9_errors_all_cinic10.toml") + points("fig9_errors_easy_cinic10.toml")
    assert {(p["subset"], p["steps"], p["level"]) for p in ps} == {
        (s, t, level) for s, t in (("all", 400), ("all", 800), ("easy", 400)) for level in (0, 6)}
    assert all(p["dataset"] == "cinic10" and p["replicates"] == 1 for p in ps)


def test_the_baselines_the_figures_compare_with_exist():
    # Fig. 14a: all data for t*/2 = 200 (and t* = 400, rewind 0) on CINIC-10
    assert {p["steps"] for p in points("fig2_baselines_cinic10.toml")} >= {0, 200, 400, 800}
    # Figs. 4 / 15: noisy all-data pre-training for t*/2 = 200 and t* = 400
    assert {(p["label_noise"], p["steps"]) for p in points(
        "fig4_15_noisy_baselines_cifar10.toml")} == {(n, t) for n in (0.1, 0.5) for t in (200, 400)}
    # Fig. 5: both panels, all data at t*/2 and t*, 3 children
    for name, dataset in (("fig5a_lmc_all_cifar100.toml", "cifar100"),
                          ("fig5b_lmc_all_cinic10.toml", "cinic10")):
        ps = points(name)
        assert {p["steps"] for p in ps} >= {400, 800}
        assert all(p["dataset"] == dataset and p["children"] == 3 for p in ps)


def test_smoke_lmc_runs_keep_the_papers_three_children():
    """imp --rank-by lmc scores with the LMC score's 3 children; a smoke `scores lmc` capped to 2
    was another score run, drawn as a second Fig. 10 panel for one spawn step."""
    from lthfast.requests import SCORE_DEFAULTS

    for name in ("fig10_lmc_scores.toml", "fig5a_lmc_cifar100.toml", "fig5b_lmc_all_cinic10.toml"):
        assert {p.get("children", SCORE_DEFAULTS["children"]) for p in points(name, True)} == {3}
