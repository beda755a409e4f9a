"""The README's Python API example runs as written (in a fresh directory) and prints its records.

    python -m pytest -q tests/test_readme.py
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    section = README.read_text().split("## Python API", 1)[1]
    [code] = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [(int(r), int(k)) for r, k, *_ in lines] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1),
                                                        (1, 2)]
    assert [w for _, _, w, _ in lines[:3]] == ["1.00", "0.80", "0.64"]
    assert all(0.0 <= float(acc) <= 1.0 for *_, acc in lines)
    assert len(list((tmp_path / "runs").glob("el2n_*/scores.npy"))) == 1  # computed on demand
