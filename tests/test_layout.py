"""The house's shape: no import cycle among lthfast's modules, results JSON in natural order,
and the linter clean.

The import graph counts every import written in a module, at module level or inside a
function: a function-level import breaks a cycle only at import time, while the modules still
depend on each other both ways (neither can be understood, moved or tested alone), so both
kinds are edges. ``from .pkg import name`` is an edge to ``pkg.name`` where that is a module,
else to ``pkg``.

    python -m pytest -q tests/test_layout.py
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lthfast"


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The lthfast modules ``name`` imports, anywhere in it."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != name:
                found.add(target)
    return found


def cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of the graph ([] if none), by depth-first search."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_import_graph_is_acyclic():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert graph["lthfast.cli"], "the walk found no imports: it is broken, not the house clean"
    assert cycle(graph) == [], " -> ".join(cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) == []


def test_results_json_orders_replicates_as_numbers(tmp_path):
    """Issue #24: summaries listed replicate "10" before "2"."""
    from lthfast.files import atomic_write_json

    path = atomic_write_json(tmp_path / "s.json", {"replicates": {str(r): r for r in (10, 2, 1)},
                                                  "b": 1, "a": 2})
    text = path.read_text()
    assert list(json.loads(text)["replicates"]) == ["1", "2", "10"]
    assert text.index('"a"') < text.index('"b"')


def test_ruff_is_clean():
    """The linter, with the rules and line length of pyproject.toml, over the package, tests,
    benchmarks and scripts."""
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.fail("ruff is not installed in the venv (pip install -e '.[dev]')")
    result = subprocess.run([str(ruff), "check", "lthfast", "tests", "benchmarks", "scripts"],
                            cwd=PACKAGE.parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]
