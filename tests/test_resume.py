"""kill -9 at chosen points (a step of a stage, a done marker, the n-th atomic replace, between a
checkpoint and its checksum) and at random times from outside: the same command resumes from the
last checkpoint, never retrains a finished stage, and with --deterministic ends bit-identical to an
uninterrupted run.

    python -m pytest -q tests/test_resume.py
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from reliability import (SEED, IMP_ARGS, SCORE_ARGS, read_trace, done_files, assert_untouched,
                         trained_stages, assert_same_weights, run_dirs, sha)


def test_imp_resumes_bit_exactly_after_kill9_at_chosen_points(cli, digits_root, rel_tmp,
                                                              imp_reference):
    out = rel_tmp / "imp_kill"
    args = [*IMP_ARGS, "--root", digits_root, "--out", out]
    trace = rel_tmp / "imp_kill.trace"

    # (a) during pre-training, at step 13: the checkpoint of step 10 exists, nothing is done
    cli.killed(args, {"stage": "pretrain/replicate_0", "step": 13}, trace)
    [pre] = out.glob("pretrain_*")
    assert (pre / "scratch" / "group_0" / "checkpoint.pt").exists(), \
        "no periodic checkpoint was written"
    assert not (pre / "replicate_0" / "done.json").exists()
    assert not done_files(out)

    # (b) mid level 1: pre-training resumes at its checkpoint (10), not at 0
    trace.unlink(missing_ok=True)
    cli.killed(args, {"stage": "imp/replicate_0/level_1", "step": 37}, trace)
    first = trained_stages(read_trace(trace))
    assert first == {"pretrain/replicate_0": 10, "imp/replicate_0/level_0": 20,
                     "imp/replicate_0/level_1": 20}, first
    finished = done_files(out)
    assert {str(Path(k).parent) for k in finished if k.endswith("done.json")} == {
        f"{pre.name}/replicate_0", f"{imp_reference['run'].name}/replicate_0/level_0"}

    # (c) near the end: level 2's weights are saved, its done.json is not yet written
    trace.unlink(missing_ok=True)
    cli.killed(args, {"mark_done": "imp/replicate_0/level_2"}, trace)
    first = trained_stages(read_trace(trace))
    assert first == {"imp/replicate_0/level_1": 35, "imp/replicate_0/level_2": 20}, (
        f"finished stages retrained or level 1 not resumed at its checkpoint: {first}")
    assert_untouched(finished, out)
    finished = done_files(out)

    # (d) at the very end, while results.json is being moved into place
    trace.unlink(missing_ok=True)
    cli.killed(args, {"replace": r"results\.json$"}, trace)
    assert trained_stages(read_trace(trace)) == {"imp/replicate_0/level_2": 55}
    assert_untouched(finished, out)
    finished = done_files(out)

    # (e) to completion: nothing left to train
    trace.unlink(missing_ok=True)
    run = cli.ok(args, trace=trace)
    assert trained_stages(read_trace(trace)) == {}
    assert_untouched(finished, out)
    assert run.name == imp_reference["run"].name
    assert (run / "results.json").read_bytes() == imp_reference["results"]
    assert json.loads((run / "results.json").read_bytes()) == json.loads(imp_reference["results"])
    for a, b in zip(run_dirs(imp_reference["out"]), run_dirs(out)):
        assert_same_weights(a, b)
    # stages that finished leave no resumable checkpoints behind
    assert not list(out.rglob("checkpoint.pt"))


def test_imp_resumes_after_kill9_between_checkpoint_and_its_checksum(cli, digits_root, rel_tmp,
                                                                     imp_reference):
    """kill -9 after checkpoint.pt was replaced but before its .sha256 sidecar was: the old
    sidecar no longer matches. A rerun must still finish (restarting or resuming the stage) and
    reproduce the uninterrupted results, not demand manual deletion."""
    out = rel_tmp / "imp_kill_sidecar"
    args = [*IMP_ARGS, "--root", digits_root, "--out", out]
    # the 2nd periodic checkpoint of level 2 (step 30): a sidecar of step 25 already exists
    cli.killed(args, {"replace": r"level_2_group_0/checkpoint\.pt\.sha256$", "nth": 2})
    [torn] = out.glob("imp_*/scratch/level_2_group_0/checkpoint.pt")
    sidecar = torn.with_name("checkpoint.pt.sha256").read_text().strip()
    assert sha(torn) != sidecar, "the kill did not leave a checkpoint newer than its checksum"
    r = cli.run(args)
    assert r.returncode == 0, f"rerun after kill -9 failed:\n{r.stderr[-2000:]}"
    assert "cut off mid-write" in r.stderr, r.stderr[-2000:]
    run = Path(r.stdout.strip().splitlines()[-1])
    assert (run / "results.json").read_bytes() == imp_reference["results"]


def test_imp_resumes_after_external_kill9_at_random_times(cli, digits_root, rel_tmp,
                                                          imp_reference):
    rng = random.Random(SEED)
    out = rel_tmp / "imp_kill_random"
    args = [*IMP_ARGS, "--root", digits_root, "--out", out]
    finished: dict = {}
    delays = []
    for _ in range(2):
        delay = rng.uniform(1.0, 5.0)
        delays.append(round(delay, 2))
        p = cli.popen(args)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
        p.communicate()
        assert p.returncode in (0, -signal.SIGKILL), (delays, p.returncode)
        assert_untouched(finished, out)
        finished = done_files(out)
    run = cli.ok(args)
    assert_untouched(finished, out)
    assert (run / "results.json").read_bytes() == imp_reference["results"], (
        f"seed {SEED}, kill delays {delays}")


def test_scores_resume_bit_exactly_after_kill9(cli, digits_root, rel_tmp, score_reference):
    out = rel_tmp / "scores_kill"
    args = [*SCORE_ARGS, "--root", digits_root, "--out", out]
    trace = rel_tmp / "scores_kill.trace"

    members = {f"el2n/replicate_{m}" for m in range(3)}  # the K=3 ensemble, one packed group
    cli.killed(args, {"stage": "el2n/replicate_0", "step": 23}, trace)
    [root] = out.glob("el2n_*")
    assert (root / "scratch" / "group_0_1_2" / "checkpoint.pt").exists()
    assert not (root / "scores.npy").exists()

    trace.unlink()  # trained to the end; killed while scores.npy is moved into place
    cli.killed(args, {"replace": r"scores\.npy$"}, trace)
    assert trained_stages(read_trace(trace)) == dict.fromkeys(members, 20), (
        "did not resume at step 20")
    assert not (root / "scores.npy").exists() and not (root / "done.json").exists()
    # the members finished before the kill: their stages are done, their checkpoint gone
    assert all((root / f"replicate_{m}" / "done.json").exists() for m in range(3))
    assert not (root / "scratch").exists()

    trace.unlink(missing_ok=True)
    path = cli.ok(args, trace=trace)
    assert trained_stages(read_trace(trace)) == {}, "finished members were trained again"
    assert path.read_bytes() == score_reference["bytes"]
    np.testing.assert_array_equal(np.load(path), np.load(score_reference["path"]))
    assert_same_weights(score_reference["path"].parent, path.parent)

    # finished: a rerun trains nothing and rewrites nothing
    finished = done_files(out)
    assert any(k.endswith("done.json") for k in finished)
    trace.unlink(missing_ok=True)
    assert cli.ok(args, trace=trace) == path
    assert read_trace(trace) == []
    assert_untouched(finished, out)


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_says_so_and_the_rerun_resumes(signum, code, cli, digits_root, rel_tmp,
                                                         imp_reference):
    """Ctrl-C / SIGTERM mid-level: "interrupted; rerun the same command to resume", exit
    128 + signal (never 0), and the rerun ends with the uninterrupted results."""
    import time

    out = rel_tmp / f"imp_signal_{code}"
    args = [*IMP_ARGS, "--root", digits_root, "--out", out]
    trace = rel_tmp / f"signal_{code}.trace"
    proc = cli.popen(args, trace=trace)
    deadline = time.time() + 120

    def level_0_training() -> bool:  # the last line may be half-written: only whole lines count
        lines = trace.read_text().splitlines(keepends=True) if trace.exists() else []
        records = [json.loads(line) for line in lines if line.endswith("\n")]
        return {"event": "train", "stage": "imp/replicate_0/level_0"} in [
            {k: r.get(k) for k in ("event", "stage")} for r in records]

    while not level_0_training():
        assert proc.poll() is None, f"exited {proc.returncode} before level 0 trained:\n" + (
            proc.communicate()[1][-2000:])
        assert time.time() < deadline, "level 0 never started training"
        time.sleep(0.05)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-2000:]
    assert "interrupted; rerun the same command to resume" in stderr
    assert "Traceback" not in stderr and stdout == ""
    run = cli.ok(args)
    assert (run / "results.json").read_bytes() == imp_reference["results"]


def test_a_run_asked_for_more_levels_is_unfinished_until_they_are_done(cli, digits_root,
                                                                         rel_tmp):
    """--levels 1, then --levels 2 killed during level 2: the report must not call the run
    finished (its old results.json said levels 0-1 were all), yet keep levels 0-1."""
    from lthfast.results import imp_rows

    out = rel_tmp / "imp_more_levels"
    args = [*IMP_ARGS, "--root", digits_root, "--out", out]
    fewer = [*args[: args.index("--levels")], "--levels", "1", *args[args.index("--levels") + 2:]]
    run = cli.ok(fewer)
    assert (run / "results.json").exists() and all(r["finished"] for r in imp_rows(out))
    cli.killed(args, {"stage": "imp/replicate_0/level_2", "step": 25})
    rows = imp_rows(out)
    assert not (run / "results.json").exists()
    assert sorted(r["level"] for r in rows) == [0, 1] and not any(r["finished"] for r in rows)
    cli.ok(args)
    assert [r["level"] for r in json.loads((run / "results.json").read_text())["rows"]] == [0, 1, 2]
