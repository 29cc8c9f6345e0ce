"""The code imports in one direction: no module reaches itself through its imports (type-only and deferred
imports included), so each module can be read, tested and changed from the bottom up."""

from __future__ import annotations

import ast

from tests.conftest import REPO

PACKAGES = ("storage", "schemas", "pipeline", "trainers", "jobs")


def module_name(path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in its text (a package import counts as its __init__)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m in known and m != name}


def test_no_module_imports_itself_through_others():
    paths = [p for package in PACKAGES for p in (REPO / package).rglob("*.py")]
    known = {module_name(p) for p in paths}
    graph = {module_name(p): imports(p, module_name(p), known) for p in paths}
    cycles = []

    def visit(node: str, trail: list[str], done: set[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in trail:
                cycles.append(trail[trail.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, [*trail, nxt], done)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], done)
    assert len(graph) > 50 and not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
