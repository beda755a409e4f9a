"""The demo at a tiny scale: its summary.json holds what its figure draws and what its words say,
its verdicts follow the numbers, and --seed makes an independent demo.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_demo.py
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from lthfast import api
from lthfast.demo import (REWIND_TO_INIT, SCHEMES, DemoScale, figure, imp_verdict, run_demo,
                          words)

TINY = DemoScale(lmc_model="resnet8", spawn_steps=(0, 2), lmc_replicates=2, lmc_train_steps=6,
                 el2n_models=2, el2n_steps=3, levels=1, imp_replicates=2, size=32, t_r=2,
                 train_steps=6, batch_size=16)


@pytest.fixture(scope="module")
def tiny_demo(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    rt = api.runtime(root=data_root, out=out, device="cpu")
    path = run_demo(rt, 0, TINY, progress=lambda _: None)
    return out, path, json.loads((path.parent / "summary.json").read_text())


def test_summary_holds_what_each_panel_measured(tiny_demo, data_root):
    out, path, summary = tiny_demo
    assert path == out / "demo" / "summary.txt"
    assert {"demo.png", "demo.csv", "summary.json", "summary.txt"} <= \
        {p.name for p in path.parent.iterdir()}
    ins = summary["instability"]
    assert [s["spawn_step"] for s in ins["by_step"]] == [0, 2]
    for s in ins["by_step"]:  # the numbers are those of the lmc summaries it ran
        lmc = json.loads(open(s["summary"]).read())
        values = [100 * lmc["replicates"][r]["error_barrier"] for r in ("0", "1")]
        assert s["error_barrier_pct"]["values"] == pytest.approx(values)
        assert s["error_barrier_pct"]["mean"] == pytest.approx(np.mean(values))
        assert s["error_barrier_pct"]["std"] == pytest.approx(np.std(values, ddof=1))
    noise = summary["noise"]
    scores = np.load(noise["scores"])
    counts = [noise["groups"][g]["counts"] for g in ("corrupted", "clean")]
    assert sum(map(sum, counts)) == len(scores) == 1438
    assert noise["groups"]["corrupted"]["n"] == sum(counts[0])
    assert 0.3 < noise["corrupted_share"] < 0.6  # 50% re-drawn, a tenth back to its own label
    assert noise["gap"] == pytest.approx(noise["groups"]["corrupted"]["mean"]
                                         - noise["groups"]["clean"]["mean"])
    imp = summary["imp"]
    assert imp["order"] == list(SCHEMES) and set(imp["schemes"]) == set(SCHEMES)
    for s in imp["schemes"].values():
        assert s["levels"] == [0, 1] and s["n"] == [2, 2]
        assert s["weights_remaining"] == pytest.approx([1.0, 0.8], abs=0.01)


def test_the_figure_draws_the_summary(tiny_demo):
    _, _, summary = tiny_demo
    fig = figure(summary)
    a1, a2, a3 = fig.axes
    barrier = next(line for line in a1.lines if line.get_gid() == "barrier")
    assert list(barrier.get_xdata()) == [0, 2]
    assert list(a1.get_xticks()) == [0, 2]  # ticked at the spawn steps measured
    assert list(barrier.get_ydata()) == pytest.approx(
        [s["error_barrier_pct"]["mean"] for s in summary["instability"]["by_step"]])
    for name in ("clean", "corrupted"):
        bars = [p for p in a2.patches if p.get_gid() == name]
        assert [b.get_height() for b in bars] == summary["noise"]["groups"][name]["counts"]
    for name, s in summary["imp"]["schemes"].items():
        line = next(line for line in a3.lines if line.get_gid() == name)
        assert list(line.get_ydata()) == pytest.approx(s["mean"])
        assert list(line.get_xdata()) == pytest.approx([100 * w for w in s["weights_remaining"]])
    # weights remaining: a log axis, dense on the left, ticked in plain percentages (no 10^k)
    assert a3.get_xscale() == "log" and a3.get_xlim()[0] > a3.get_xlim()[1]
    fig.canvas.draw()
    ticks = [t.get_text() for t in a3.get_xticklabels()]
    assert ticks == ["100%", "80%"] and not any("10^" in t or "$" in t for t in ticks)


def test_the_words_say_the_summary_numbers(tiny_demo):
    _, path, summary = tiny_demo
    text = path.read_text()
    assert text.strip() == words(summary).strip()
    for s in summary["instability"]["by_step"]:
        v = s["error_barrier_pct"]
        assert f"step {s['spawn_step']}: {v['mean']:.1f} ± {v['std']:.1f}%" in text
    assert f"AUC {summary['noise']['auc']:.3f}" in text
    assert summary["imp"]["verdict"] in text and "sweeps/fig2_3_cifar10.toml" in text


def test_a_rerun_trains_nothing_and_another_seed_is_independent(tiny_demo, data_root):
    out, path, summary = tiny_demo
    before = {p: p.stat().st_mtime_ns for p in out.rglob("weights.pt")}
    rt = api.runtime(root=data_root, out=out, device="cpu")
    assert run_demo(rt, 0, TINY, progress=lambda _: None) == path
    again = json.loads((path.parent / "summary.json").read_text())
    assert again["imp"]["schemes"] == summary["imp"]["schemes"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("weights.pt")} == before
    other = run_demo(rt, 1, TINY, progress=lambda _: None)
    assert other.parent.name == "demo_seed1"
    one = json.loads((other.parent / "summary.json").read_text())
    assert {s["run"] for s in one["imp"]["schemes"].values()}.isdisjoint(
        s["run"] for s in summary["imp"]["schemes"].values())
    assert one["noise"]["scores"] != summary["noise"]["scores"]


def schemes(final: dict[str, tuple[float, float]], n: int = 2) -> dict:
    return {name: {"mean": [0.9, m], "std": [0.0, s], "n": [n, n],
                   "weights_remaining": [1.0, 0.8]} for name, (m, s) in final.items()}


@pytest.mark.parametrize("easy,random,verdict", [
    (0.95, 0.90, "beat a random 256 by 5.0 points"),
    (0.90, 0.95, "a random 256 beat the 256 easiest examples by 5.0 points"),
    (0.93, 0.925, "cannot separate them"),
])
def test_imp_verdict_follows_the_numbers(easy, random, verdict):
    final = {"easy": (easy, 0.01), "random": (random, 0.01), "all data": (0.92, 0.01),
             REWIND_TO_INIT: (0.80, 0.01)}
    v = imp_verdict(schemes(final), 256)
    assert verdict in v["verdict"] and v["level"] == 1
    assert v["separated"] == (easy - random > 0.01)
    assert re.search(r"fell 1\d\.\d points", v["rewind"])  # 0.80 vs the best


def test_imp_verdict_without_spread_gives_none():
    final = {name: (0.97, 0.0) for name in SCHEMES} | {"easy": (0.99, 0.0)}
    v = imp_verdict(schemes(final, n=1), 256)
    assert "no verdict" in v["verdict"] and not v["separated"]
    final = {name: (0.97, 0.01) for name in SCHEMES}
    assert "did as well as rewinding to t_r" in imp_verdict(schemes(final), 256)["rewind"]
