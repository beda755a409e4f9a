"""Two processes on the same run: one trains, the other waits on the lock, both print the same
finished results, and no stage is trained twice.

    python -m pytest -q tests/test_concurrency.py
"""

from __future__ import annotations

import json
from pathlib import Path


from reliability import IMP_ARGS, read_trace, assert_same_weights


def test_two_processes_on_the_same_run(cli, digits_root, rel_tmp, imp_reference):
    out = rel_tmp / "imp_concurrent"
    args = [*IMP_ARGS, "--root", digits_root, "--out", out]
    trace = rel_tmp / "concurrent.trace"
    procs = [cli.popen(args, trace=trace) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-3000:]
    runs = {stdout.strip().splitlines()[-1] for stdout, _ in results}
    assert len(runs) == 1, runs
    run = Path(runs.pop())
    assert (run / "results.json").read_bytes() == imp_reference["results"]
    events = read_trace(trace)
    assert {r["pid"] for r in events} <= {p.pid for p in procs}
    trained = [r["stage"] for r in events if r["event"] == "train"]
    done = [r["stage"] for r in events if r["event"] == "done"]
    assert sorted(trained) == sorted(set(trained)) == [
        "imp/replicate_0/level_0", "imp/replicate_0/level_1", "imp/replicate_0/level_2",
        "pretrain/replicate_0"]
    assert sorted(done) == sorted(set(done)) == [
        "imp/replicate_0/level_0", "imp/replicate_0/level_1", "imp/replicate_0/level_2",
        "pretrain/replicate_0"]
    for level in range(3):
        metrics = run / "replicate_0" / f"level_{level}" / "metrics.jsonl"
        steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
        assert steps == sorted(set(steps)) and steps[-1] == 60, steps  # one course of training
    assert_same_weights(imp_reference["run"], run)


def test_a_waiting_process_says_for_whom(tmp_path):
    import subprocess
    import sys

    code = ("import sys, time; from pathlib import Path; from lthfast.files import locked\n"
            f"with locked(Path({str(tmp_path)!r})):\n"
            "    print('got', flush=True); time.sleep(2)\n")
    first = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline() == "got\n"  # it holds the lock now
    second = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    out, err = second.communicate(timeout=60)
    first.communicate(timeout=60)
    assert out == "got\n"
    assert err == f"waiting for process {first.pid}, which is working on {tmp_path}\n"
    assert (tmp_path / ".lock").read_text() == ""  # released: no stale holder named
