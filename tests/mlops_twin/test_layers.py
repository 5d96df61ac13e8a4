"""DESIGN.md's package map holds: imports point one way, down the table, and never in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the table's order: a package may import only those before it
ORDER = ["twin", "optimizer", "testbed", "loadgen", "calibrate", "lab", "mlops_twin"]


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in ORDER:
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = f
    return out


def _imports(modules: dict[str, Path]) -> dict[str, tuple[set[str], set[str]]]:
    """Per module: (modules imported at module level, modules imported anywhere)."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    out = {}
    for name, f in modules.items():
        tree = ast.parse(f.read_text())
        top, every = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for t in filter(None, map(resolve, targets)):
                if t != name:
                    every.add(t)
                    if node in tree.body:
                        top.add(t)
        out[name] = (top, every)
    return out


def test_no_import_points_up_the_table() -> None:
    edges = _imports(_modules())
    up = [
        (a, b)
        for a, (_, every) in edges.items()
        for b in every
        if ORDER.index(b.split(".")[0]) > ORDER.index(a.split(".")[0])
    ]
    assert up == []


def test_no_module_imports_itself_in_a_circle() -> None:
    edges = {a: every for a, (_, every) in _imports(_modules()).items()}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        assert m not in path, " -> ".join([*path[path.index(m) :], m])
        if m in done:
            return
        for n in sorted(edges.get(m, ())):
            visit(n, [*path, m])
        done.add(m)

    for m in sorted(edges):
        visit(m, [])
