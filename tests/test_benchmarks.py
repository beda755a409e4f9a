"""The benchmark sections run end to end on tiny sizes and report positive throughputs.

No timing assertions: only that every section measures something and the report renders.
ffcv is left out here (its numba compile takes ~15 s; tests/test_ffcv_loader.py covers it).

    python -m pytest -q tests/test_benchmarks.py
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from benchmarks import end_to_end, gpu, loader, packed, train_step
from benchmarks.__main__ import render, summary


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    import lthfast.data.build

    # arrays only: writing betons (and compiling ffcv) is what makes ffcv slow to test
    monkeypatch.setattr(lthfast.data.build, "ffcv_available", lambda: False)
    return tmp_path / "bench_cache"


def positive(rows, section):
    assert rows and all(r.section == section for r in rows)
    for r in rows:
        if r.note.startswith("not run"):
            continue
        assert r.values and all(v > 0 and math.isfinite(v) for v in r.values), r
        assert r.command.startswith(("python -m benchmarks", "lthfast "))
    return rows


def test_loader_train_step_packed(cache):
    rows = positive(loader.run(loader.LoaderConfig(train=400, batch=64, subset=128, batches=2,
                                                   warmup=1, repeats=2, workers=1),
                               cache=cache, log=lambda _: None), "loader")
    variants = {r.variant for r in rows}
    assert "lthfast BatchStream" in variants
    assert any("DataLoader" in v for v in variants)
    assert any(r.case.endswith("first epoch incl. setup") for r in rows)
    assert any(r.variant == "ffcv Loader" and r.note.startswith("not run") for r in rows)

    cfg = train_step.TrainStepConfig(model="resnet8", batch=16, train=400, warmup=1, steps=1,
                                     repeats=2, workers=1)
    rows = positive(train_step.run(cfg, cache=cache, log=lambda _: None), "train_step")
    assert [r.reference for r in rows] == [True, False, False, False]
    assert "default malloc" in rows[1].variant and "plain PyTorch" in rows[2].variant
    assert rows[3].unit == "GFLOP/s" and rows[3].case != rows[0].case  # roofline: no ratio
    assert "GFLOP/s of model FLOPs" in rows[0].note

    cfg = packed.PackedConfig(model="resnet8", ks=(1, 2), batch=16, train=400, warmup=1,
                              steps=1, repeats=2)
    rows = positive(packed.run(cfg, cache=cache, log=lambda _: None), "packed")
    # K=1: packed, sequential; K=2: both executions (the device's default is the reference)
    assert [(r.case.split(",")[0], r.variant.split(":")[0], r.reference) for r in rows] == [
        ("resnet8 ×1", "packed", True), ("resnet8 ×1", "sequential", False),
        ("resnet8 ×2", "packed", True), ("resnet8 ×2", "packed", False),
        ("resnet8 ×2", "sequential", False)]
    assert "looped (default here)" in rows[2].variant and "grouped" in rows[3].variant

    text = render({"device": "cpu"}, rows, ["packed"], {"packed": 1.0}, quick=True)
    assert "## c. K models at once" in text and "1.00 (ref)" in text
    assert any("packed K=10" in line and "not measured" in line for line in summary(rows))


def test_plain_resnet_matches_lthfast_size():
    from lthfast.models import build

    plain = train_step.PlainResNet(20, 10)
    assert sum(p.numel() for p in plain.parameters()) == build("resnet20", 10).num_params()
    assert plain(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_gpu_section(cache):
    cfg = gpu.GpuConfig(model="resnet8", iterations=3, el2n_iterations=2, el2n_k=2, batch=4,
                        train=200, compile_modes=(False,), log_every=1, imp_levels=2)
    if not torch.cuda.is_available():
        rows = gpu.run(cfg, cache=cache, log=lambda _: None)
        assert len(rows) == 3 and all(r.note == gpu.NOT_RUN and not r.values for r in rows)
    # the measurement itself, forced onto the CPU at tiny size
    rows = positive(gpu.run(cfg, device=torch.device("cpu"), cache=cache, log=lambda _: None,
                            force=True), "gpu")
    loops, imp = rows[:-1], rows[-1]
    assert all(r.extra["fwd_flops"] > 0 for r in loops)
    assert [r.variant for r in loops] == [
        "lthfast loop, compile off, bf16", "lthfast loop, compile off, CUDA graph, bf16",
        "lthfast loop, compile off, NCHW, bf16",
        "lthfast loop, compile off, bf16", "lthfast loop, compile off, CUDA graph, bf16",
        "lthfast loop, compile off, looped, bf16",
        "lthfast loop, compile off, K separate runs, bf16"]
    assert [r.reference for r in loops] == [True, False, False, True, False, False, False]
    assert all(r.note.startswith("not captured") for r in loops if "CUDA graph" in r.variant)
    # the whole IMP run through the API: pre-training, then levels 0..2
    assert imp.case.startswith("IMP 2 levels") and imp.unit == "s" and imp.extra["levels"] == 3


def test_end_to_end(tmp_path):
    import sys

    # a stand-in program keeps this fast (a real CLI run imports ffcv and trains: ~10 s); it
    # checks it gets the fresh --root/--out directories the benchmark adds
    stub = ("import sys; a = sys.argv; "
            "assert a[a.index('--root') + 1] != a[a.index('--out') + 1]; assert '--device' in a")
    cfg = end_to_end.EndToEndConfig(commands=(("scores", "el2n", "--dataset", "digits"),),
                                    repeats=2, build_row=False,
                                    program=(sys.executable, "-c", stub))
    rows = positive(end_to_end.run(cfg, log=lambda _: None), "end_to_end")
    assert rows[0].unit == "s" and len(rows[0].values) == 2
    assert rows[0].case == "lthfast scores el2n --dataset digits"


def test_missed_target_gets_its_reason_on_that_device_only():
    from benchmarks.common import Row

    rows = [Row("packed", "resnet20 ×10, batch 128, cpu", "packed: looped", [50.0], reference=True),
            Row("packed", "resnet20 ×10, batch 128, cpu", "sequential: 10 × k=1", [50.0])]
    cpu = "\n".join(summary(rows, "cpu"))
    assert "| packed K=10 vs sequential | 1.00× | ≥ 1.5× | no |" in cpu
    assert "compute-bound, not launch-bound" in cpu
    assert "compute-bound" not in "\n".join(summary(rows, "cuda"))
    rows[1].values = [20.0]  # met: no excuse printed
    assert "compute-bound" not in "\n".join(summary(rows, "cpu"))


def test_counts_section(cache):
    from benchmarks import counts

    rows = counts.run(counts.CountsConfig(depth=8, batch=8, train=400, ks=(1, 2),
                                          overhead_steps=2, repeats=1), cache=cache,
                      log=lambda _: None)
    by = {(r.case, r.variant): r.median for r in rows}
    outside = [v for (case, variant), v in by.items() if variant == "launches outside the model"]
    assert len(outside) == 4 and all(0 < v <= 20 for v in outside)
    assert all(v == 0 for (case, variant), v in by.items() if variant == "host syncs")
    replayed = [v for (case, variant), v in by.items() if variant.startswith("host launches")]
    assert len(replayed) == 4 and all(0 < v <= 12 for v in replayed)
    draws = [r for r in rows if r.case.startswith("Loader draws")]
    assert len(draws) == 2 and all(r.median > 0 for r in draws)
    overhead = [r for r in rows if r.unit == "ms/step" and r not in draws]
    assert len(overhead) == 2 and all(r.median > 0 for r in overhead)
    assert "f. GPU proxies" in render({}, rows, ["counts"], {"counts": 1.0}, True, {}, "cpu")


def test_gpu_section_variants_by_flag_and_a_deadline(cache):
    cfg = gpu.GpuConfig(model="resnet8", iterations=3, el2n_iterations=2, el2n_k=2, batch=4,
                        train=200, compile_modes=(False,), log_every=1, imp_levels=2,
                        variants=frozenset({"eager", "separate"}))
    rows = gpu.run(cfg, device=torch.device("cpu"), cache=cache, log=lambda _: None, force=True)
    assert [r.variant for r in rows] == ["lthfast loop, compile off, bf16",
                                         "lthfast loop, compile off, bf16",
                                         "lthfast loop, compile off, K separate runs, bf16"]
    late = gpu.run(replace(cfg, variants=None, deadline_s=1e-9), device=torch.device("cpu"),
                   cache=cache, log=lambda _: None, force=True)
    assert len(late) == 8 and all(not r.values and "deadline" in r.note for r in late)


def test_k_separate_runs_are_scored_on_steady_windows_like_the_packed_row(monkeypatch):
    """Two K=1 runs at 100 and 300 images/s steady (their compile and warm-up making the
    totals long): back to back they train 2 models at 2 / (1/100 + 1/300) = 150 images/s."""
    calls = []

    def fake_run(ds, cfg, device, k, iterations, variant, seed=0, reset=True):
        calls.append(reset)
        rate = 100.0 if seed == 0 else 300.0
        return {"total": 60.0, "windows": [rate, rate], "steady": rate, "losses": [1.0],
                "captured": False}

    monkeypatch.setattr(gpu, "train_run", fake_run)
    cfg = gpu.GpuConfig(iterations=10, batch=4)
    r = gpu.variant_run(None, cfg, torch.device("cpu"), 2, 10, gpu.Variant(True, separate=True))
    assert r["steady"] == pytest.approx(150.0) and r["windows"] == pytest.approx([150.0] * 2)
    assert r["total"] == 120.0
    assert calls == [True, False]  # one compile for all K runs, as one process would


def test_final_losses_are_compared_with_the_reference_row():
    assert gpu.compare_loss(2.0, 2.1) == ""
    assert "NOT FINITE" in gpu.compare_loss(float("nan"), 2.0)
    assert "more than 10%" in gpu.compare_loss(2.5, 2.0)


def test_regenerating_the_report_keeps_the_gpu_check_section(tmp_path):
    from benchmarks.__main__ import kept_section

    report = tmp_path / "BENCHMARKS.md"
    assert kept_section(report) == ""
    report.write_text("# Benchmarks\n\n## a. Loader\n\nx\n\n## GPU check\n\nrun it\n\n| A | ok |\n")
    assert kept_section(report) == "\n## GPU check\n\nrun it\n\n| A | ok |\n"
    report.write_text("# B\n\n## GPU check\n\nrun it\n\n## f. Counts\n\ny\n")
    assert kept_section(report) == "\n## GPU check\n\nrun it\n"
