"""engine/ is pure and deterministic: no clock, randomness, I/O, threads or floats.

Parsed, not imported: every `import` in engine/*.py must be of an allowed module,
and no float literal or `float(...)` call may appear. The edges (app/) own time,
ids from randomness, files and sockets; see docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "engine"
ALLOWED = {
    "__future__", "bisect", "collections", "collections.abc", "dataclasses", "decimal", "enum",
    "fractions", "hashlib", "heapq", "itertools", "json", "operator", "types", "typing",
    "sortedcontainers", "orjson", "engine",
}  # fmt: skip
SOURCES = sorted(ENGINE.glob("*.py"))


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_only_pure_imports(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    bad = [
        f"{path.name}:{line} imports {name}"
        for line, name in _imports(tree)
        if name not in ALLOWED and name.split(".")[0] != "engine"
    ]
    assert bad == []


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_no_floats(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    bad = [
        f"{path.name}:{node.lineno}"
        for node in ast.walk(tree)
        if (isinstance(node, ast.Constant) and isinstance(node.value, float))
        or (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "float")
    ]  # fmt: skip
    assert bad == []


def test_the_guard_sees_a_violation(tmp_path: Path) -> None:
    """The checks above can fail: a clock import and a float are found."""
    tree = ast.parse("import time\nfrom os import path\nx = 0.5\n")
    assert [name for _, name in _imports(tree)] == ["time", "os"]
    assert any(isinstance(n, ast.Constant) and n.value == 0.5 for n in ast.walk(tree))
    assert len(SOURCES) >= 14
