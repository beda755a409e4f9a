"""scripts/gpu_check.py: its CPU smoke run (emulated graphs, aot_eager) and its budget logic.

The smoke run is the GPU check's own code on the CPU at tiny sizes: replay == eager, no syncs,
compile without graph breaks, compile + (emulated) capture through the real loop, every phase's
results in one JSON. The budget logic runs on an injected clock: a phase whose estimate
exceeds what is left is skipped and its extrapolation recorded, and the file is rewritten after
every phase.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def test_the_smoke_run_passes_every_phase_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("LTHFAST_CAPTURE_BACKEND", None)
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    phases = doc["phases"]
    assert list(phases) == list("ABCDEFGHI")
    assert {name: p["status"] for name, p in phases.items()} == dict.fromkeys("ABCDEFGHI", "ok")
    assert doc["passed"] and doc["failures"] == []
    assert doc["meta"]["smoke"] and doc["meta"]["ffcv_imported"] is False
    a = phases["A"]["results"]
    assert a["all_equal"] and len(a["cases"]) == 2
    assert all(c["captured"] and c["steps"] == 7 for c in a["cases"].values())
    assert phases["B"]["results"]["max_syncs_per_step"] == 0
    c = phases["C"]["results"]
    assert 0 < c["graph"]["host_launches"] < c["eager"]["host_launches"] / 5
    d = phases["D"]["results"]
    assert d["backend"] == "aot_eager" and d["graph_breaks"] == 0 and d["bit_equal"]
    assert d["graphs_added_by_capture"] == 0  # compiled in warm-up, not inside the capture
    assert set(phases["E"]["results"]) == {"eager", "graph", "compile", "compile+graph",
                                           "fastest"}
    assert phases["F"]["results"]["speedup"] > 0
    for name in "GH":  # compile and the emulated capture together, in the real loop
        assert phases[name]["results"]["mode"] == "compile+graph"
        assert phases[name]["results"]["captured"]
    assert phases["H"]["results"]["examples"] == 256
    assert doc["goals"]["replay == eager"]["met"] is True
    assert doc["goals"]["0 syncs per step"]["met"] is True


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_phase_that_would_overrun_is_skipped_with_its_extrapolation(tmp_path):
    gc = load_script()
    clock, out = Clock(), tmp_path / "check.json"
    seen = {}

    def timed_phase(name, estimate, takes, result, extrapolation=None):
        def probe(ctx):
            clock.now += 1  # the probe's own time counts
            return {"estimate_s": estimate, "extrapolation": extrapolation or {}}

        def run(ctx):
            seen[name] = json.loads(out.read_text())  # what was on disk when this phase began
            clock.now += takes
            return result
        return gc.Phase(name, f"phase {name}", probe, run)

    phases = [timed_phase("A", 30, 30, {"all_equal": True}),
              timed_phase("G", 80, 80, {"total_s": 1.0}, {"total_s": 95.0, "how": "62,400 × ms"}),
              timed_phase("F", 10, 10, {"speedup": 2.0})]
    check = gc.Check(out, budget_s=100, meta={"smoke": True}, clock=clock, log=lambda _: None)
    assert check.run(phases, ctx=type("Ctx", (), {"phase": ""})()) == 0
    doc = json.loads(out.read_text())
    status = {name: p["status"] for name, p in doc["phases"].items()}
    # 32 s spent by then (probes count): 80 > 68; 10 fits
    assert status == {"A": "ok", "G": "skipped", "F": "ok"}
    g = doc["phases"]["G"]
    assert "results" not in g and g["extrapolation"]["total_s"] == 95.0
    assert g["estimate_s"] == 80 and "68 s of the budget left" in g["reason"]
    assert doc["goals"]["full ResNet-20 schedule ≤ 30 s"] == {
        "value": 95.0, "how": "extrapolated", "met": False}
    assert doc["goals"]["packed K=10 ≥ 1.5× ten K=1 runs"]["met"] is True
    assert seen["F"]["phases"]["G"]["status"] == "skipped"  # written before F began
    assert seen["A"]["phases"] == {}  # ... and the file exists before the first phase
    assert doc["elapsed_s"] == pytest.approx(31 + 1 + 11)


def test_a_failing_or_crashing_phase_is_recorded_and_the_exit_code_is_1(tmp_path):
    gc = load_script()
    out = tmp_path / "check.json"

    class Ctx:
        phase = ""

        def expect(self, ok, why):
            if not ok:
                check.fail(self.phase, why)
            return ok

    def crash(ctx):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    phases = [gc.Phase("A", "mismatch", lambda c: {"estimate_s": 0},
                       lambda c: {"equal": c.expect(False, "replay != eager")}),
              gc.Phase("B", "crash", lambda c: {"estimate_s": 0}, crash),
              gc.Phase("C", "fine", lambda c: {"estimate_s": 0}, lambda c: {"x": 1})]
    check = gc.Check(out, 100, {}, log=lambda _: None)
    assert check.run(phases, Ctx()) == 1
    doc = json.loads(out.read_text())
    assert [p["status"] for p in doc["phases"].values()] == ["failed", "error", "ok"]
    assert doc["failures"] == ["A: replay != eager", "B: RuntimeError: CUDA error: operation not "
                               "permitted when stream is capturing"]
    assert not doc["passed"] and "Traceback" in doc["phases"]["B"]["traceback"]


def test_the_docstring_gives_the_one_device_command():
    text = SCRIPT.read_text()
    assert "run  timeout_s=480  command=" in text
    command = ("PYTHONUNBUFFERED=1 PYTHONPATH=. python3 scripts/gpu_check.py "
               "--out $OUT/gpu_check.json")
    assert f'"{command}"' in text
    assert "ffcv" not in "".join(line for line in text.splitlines()
                                 if line.startswith(("import", "from")))
