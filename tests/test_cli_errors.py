"""Errors before work: every flag is checked before any data is built, any file is written or
any network is trained; each bad value gets one ``error:`` line and exit 2, no traceback.

Each case runs the real entry point in-process in a fresh directory holding ``root/`` (an
empty data root: nothing may be built there) and asserts that afterwards no file exists under
it, nor an ``out/``.

    python -m pytest -q tests/test_cli_errors.py
"""

from __future__ import annotations

import numpy as np
import pytest

IMP = ["imp", "--dataset", "digits", "--root", "root", "--out", "out", "--steps", "5",
       "--train-steps", "20", "--levels", "1", "--batch-size", "32"]


def npz(path) -> str:
    np.savez(path, a=np.arange(3))
    return str(path)


CASES = [
    ("negative-subset-seed", IMP + ["--subset", "random", "--size", "64", "--subset-seed", "-1"],
     "--subset-seed"),
    ("negative-noise-seed", IMP + ["--label-noise", "0.1", "--noise-seed", "-3"], "--noise-seed"),
    ("negative-seed", IMP + ["--seed", "-1"], "--seed"),
    ("subset-negative-seed", ["subset", "random", "--dataset", "digits", "--root", "root",
                              "--size", "8", "--seed", "-1"], "--subset-seed"),  # old name
    ("subset-all-with-size", ["subset", "all", "--dataset", "digits", "--root", "root",
                              "--size", "5"], "--size does not apply"),
    ("subset-random-without-size", ["subset", "random", "--dataset", "digits", "--root", "root"],
     "needs --size"),
    ("synthetic-negative-seed", ["build-beton", "synthetic", "--root", "root", "--source",
                                 "seed=-1"], "seed"),
    ("device-bogus", IMP + ["--device", "bogus"], "not a device"),
    ("device-meta", IMP + ["--device", "meta"], "cpu or cuda"),
    ("device-mps", IMP + ["--device", "mps"], "cpu or cuda"),
    ("subset-file-npz", lambda tmp: IMP + ["--subset-file", npz(tmp / "s.npz")], ".npz"),
    ("scores-npz", lambda tmp: IMP + ["--subset", "easy", "--size", "8", "--scores",
                                      npz(tmp / "s.npz")], ".npz"),
    ("cuda-graph-on-cpu", IMP + ["--device", "cpu", "--cuda-graph"], "--cuda-graph needs a CUDA"),
    ("checkpoint-every-negative", IMP + ["--checkpoint-every", "-5"], "--checkpoint-every"),
    ("all-with-size", IMP + ["--subset", "all", "--size", "5"], "--size does not apply"),
    ("subset-file-and-kind", lambda tmp: IMP + ["--subset-file", str(np.save(
        tmp / "f.npy", np.arange(8)) or tmp / "f.npy"), "--subset", "hard", "--size", "7"],
     "--subset-file names the subset"),
    ("digits-with-source", ["build-beton", "digits", "--root", "root", "--source",
                            "/nonexistent"], "without --source"),
    # the EL2N ensemble would train first and only then find t_r too large
    ("steps-past-schedule-with-easy", IMP + ["--subset", "easy", "--size", "50", "--steps",
                                             "500"], "--steps 500 must be smaller"),
    ("levels-negative", IMP + ["--levels", "-1"], "--levels"),

    ("random-without-size", IMP + ["--subset", "random"], "needs --size"),
    ("scores-for-random", lambda tmp: IMP + ["--subset", "random", "--size", "8", "--scores",
                                             str(np.save(tmp / "sc.npy", np.zeros(1438)) or
                                                 tmp / "sc.npy")], "--scores ranks"),
    # LMC scores spawned at or past T: the children would train nothing (all-zero scores)
    ("lmc-scores-spawn-past-schedule", ["scores", "lmc", "--dataset", "digits", "--root", "root",
                                        "--out", "out", "--steps", "300", "--models", "1"],
     "--steps 300 (the lmc spawn step) must be smaller than the 200 iterations"),
    ("rank-by-lmc-spawn-past-schedule", IMP + ["--subset", "easy", "--size", "50", "--rank-by",
                                               "lmc", "--score-steps", "20"],
     "--score-steps 20 (the lmc spawn step) must be smaller than the 20 iterations"),
    # flags a command does not use: the run would be that of the command without them
    ("el2n-scores-children", ["scores", "el2n", "--dataset", "digits", "--root", "root",
                              "--out", "out", "--children", "4"],
     "scores el2n does not use --children"),
    ("forgetting-scores-pretrain-lr", ["scores", "forgetting", "--dataset", "digits", "--root",
                                       "root", "--out", "out", "--pretrain-lr", "0.1"],
     "scores forgetting does not use --pretrain-lr"),
]


@pytest.mark.parametrize("args,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_flag_fails_before_any_work(args, message, tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "root").mkdir()
    inputs = tmp_path / "in"
    inputs.mkdir()
    args = args(inputs) if callable(args) else args
    code, out, err = run_cli(args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    assert list((tmp_path / "root").rglob("*")) == [], "data was built or written"
    assert not (tmp_path / "out").exists(), "a run directory was created"


def test_failed_build_leaves_no_lock_or_partial_dataset(tmp_path, run_cli):
    for source in ("empty.tar.gz", "random.tar.gz", "folder"):
        path = tmp_path / source
        if source == "folder":
            path.mkdir()
        else:
            path.write_bytes(b"" if source.startswith("empty") else np.random.bytes(4096))
        code, _, err = run_cli(["build-beton", "cifar10", "--root", tmp_path / "root",
                                "--source", path])
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "root" / "cifar10").exists(), source


def test_an_archive_member_too_large_is_refused_before_it_is_read(tmp_path, run_cli):
    """A small .tar.gz declaring a 300 MB member: refused from its header (RSS stays low)."""
    import tarfile
    import tracemalloc

    import lthfast.data.sources.cifar as cifar

    class Zeros:
        def __init__(self, n):
            self.left = n

        def read(self, size=-1):
            size = self.left if size < 0 else min(size, self.left)
            self.left -= size
            return bytes(size)

    archive = tmp_path / "cifar-10-python.tar.gz"
    size = cifar.MAX_MEMBER_BYTES + 2**20
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = size
        tar.addfile(info, Zeros(size))
    assert archive.stat().st_size < 2 * 2**20  # ~1 MB: gzip of zeros
    tracemalloc.start()  # Python allocations: where a read member's bytes would go
    try:
        code, _, err = run_cli(["build-beton", "cifar10", "--root", tmp_path / "root",
                                "--source", archive])
        grown_mb = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert code == 2 and "more than any file of the official" in err, err
    assert grown_mb < 100, f"peak Python allocations {grown_mb:.0f} MB"
    assert not (tmp_path / "root" / "cifar10").exists()


def test_a_batch_larger_than_the_subset_is_warned_about_in_one_line(data_root, tmp_path,
                                                                     run_cli):
    code, out, err = run_cli(["imp", "--dataset", "digits", "--subset", "random", "--size", "20",
                              "--batch-size", "64", "--steps", "2", "--train-steps", "4",
                              "--levels", "0", "--root", data_root, "--out", tmp_path])
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: batch size 64 exceeds the 20 pre-training examples: every "
                        "batch repeats examples"]


@pytest.mark.parametrize("extra,message", [
    (["--size", "100000"], "--size must be between 1 and the train size"),
    (["--size", "1000", "--offset", "1000"], "exceeds the train size"),
    (["--size", "1400", "--class-balanced"], "needs"),
    (["--size", "100", "--rank-by", "forgetting", "--offset", "1400"], "exceeds"),
])
def test_an_easy_subset_that_cannot_be_made_is_refused_before_its_scores_train(
        extra, message, data_root, tmp_path, run_cli):
    """The train size comes from the data, so the data may be read; but no ensemble trains to
    rank a subset that the ranking could never give."""
    args = ["imp", "--dataset", "digits", "--root", data_root, "--out", tmp_path / "out",
            "--subset", "easy", "--steps", "5", "--train-steps", "20", *extra]
    code, out, err = run_cli(args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
