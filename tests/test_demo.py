"""The demo's plain-words summary says what its table says (numbers and verdict).

    python -m pytest -q tests/test_demo.py
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from lthfast.demo import REWIND_TO_INIT, SCHEMES, summary

RUNS = {f"imp_{i:012x}": name for i, name in enumerate(SCHEMES)}


def table(final: dict[str, tuple[float, float]]) -> list[dict]:
    """Rows of two replicates and two levels; level 1 accuracies are mean ± delta."""
    rows = []
    for run, name in RUNS.items():
        mean, delta = final[name]
        for replicate, sign in ((0, -1), (1, 1)):
            for level, acc in ((0, 0.9), (1, mean + sign * delta)):
                rows.append({"run": run, "dataset": "digits", "subset": name.split()[0],
                             "subset_size": 256, "t_r": 0 if name == REWIND_TO_INIT else 20,
                             "level": level, "replicate": replicate, "test_acc": acc,
                             "weights_remaining": 0.8 ** level, "diverged": False,
                             "pretrain_acc": 0.5})
    return rows


@pytest.mark.parametrize("easy,random,verdict", [
    (0.95, 0.90, "beat a random 256 by 5.0 points"),
    (0.90, 0.95, "a random 256 beat the 256 easiest examples by 5.0 points"),
    (0.93, 0.925, "cannot separate them"),
])
def test_summary_numbers_and_verdict_follow_the_table(easy, random, verdict):
    final = {"easy": (easy, 0.01), "random": (random, 0.01), "all data": (0.92, 0.01),
             REWIND_TO_INIT: (0.80, 0.01)}
    text = summary(table(final), RUNS)
    for name, (mean, delta) in final.items():
        line = next(line for line in text.splitlines() if line.strip().startswith(name + " ")
                    or line.strip().startswith(name + "  "))
        m, s = map(float, re.findall(r"(\d\.\d{3})", line))
        # the sample std of the two replicates (ddof = 1): mean ± delta gives delta·√2
        assert m == pytest.approx(mean, abs=5e-4)
        assert s == pytest.approx(delta * np.sqrt(2), abs=5e-4)
    assert verdict in text
    assert "fell 1" in text or "fell" in text  # rewind-to-init is 0.80: behind
    assert "At 80% of weights remaining (level 1)" in text
    assert np.isclose(float(re.search(r"easy (\d\.\d\d)", text.splitlines()[-1]).group(1)), 0.5)


def test_summary_says_when_rewinding_to_init_is_enough():
    final = {name: (0.97, 0.01) for name in SCHEMES}
    assert "did as well as rewinding to t_r" in summary(table(final), RUNS)
