"""The package's modules import each other without cycles (read from every import
statement, also those inside functions)."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "iis"


def _import_graph() -> dict:
    mods = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    names = set(mods) | {"iis._core"}  # the C extension
    graph = {}
    for m, (path, is_pkg) in mods.items():
        pkg = m if is_pkg else m.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = pkg.rsplit(".", node.level - 1)[0] if node.level else ""
                base = ".".join(filter(None, [base, node.module]))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in names else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in names:
                    t = t.rpartition(".")[0]
                # an edge into the top package reads its namespace (``__version__``)
                if t and t not in (m, "iis", "iis._core"):
                    edges.add(t)
        graph[m] = edges
    return graph


def _cycles(graph: dict) -> list:
    """Modules that reach themselves (depth-first search from each)."""
    found = []
    for start in sorted(graph):
        seen, todo = set(), list(graph[start])
        while todo:
            v = todo.pop()
            if v == start:
                found.append(start)
                break
            if v not in seen:
                seen.add(v)
                todo.extend(graph.get(v, ()))
    return found


def test_no_import_cycles():
    graph = _import_graph()
    assert "iis.torch._finetune" in graph and "iis.elements" in graph["iis.torch._finetune"]
    assert _cycles(graph) == []


def test_cycle_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c"]
