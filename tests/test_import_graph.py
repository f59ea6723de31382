"""The arrows between the top-level packages point one way (docs/DECISIONS.md, "Layout").

Walks the AST of every module of every top-level package (imports inside functions and under
``TYPE_CHECKING`` count: they are dependencies all the same), maps each import to the package it
names, and fails on a package-level cycle and on an import of a package from one below it in the
documented order. The order is read from docs/DECISIONS.md, the one place it is written.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ORDER_LINE = re.compile(r"^Layers, bottom first: (.+)$", re.M)
NOT_PACKAGES = {"tests", "bench"}


def documented_order() -> list[str]:
    match = ORDER_LINE.search((REPO / "docs" / "DECISIONS.md").read_text())
    assert match, 'docs/DECISIONS.md has no "Layers, bottom first: a < b < ..." line'
    return [name.strip(" `") for name in match.group(1).split("<")]


def top_level_packages() -> set[str]:
    return {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file() and p.name not in NOT_PACKAGES}


def module_name(path: Path) -> list[str]:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in the file, relative ones made absolute."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
            else:
                found.append((node.lineno, node.module or ""))
    return found


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importer, imported) package pairs, each with where it happens."""
    ours = top_level_packages()
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for package in sorted(ours):
        for path in sorted((REPO / package).rglob("*.py")):
            for line, name in imported_modules(path):
                target = name.split(".")[0]
                if target in ours and target != package:
                    edges[package, target].append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return edges


def cycles(nodes: set[str], edges: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one package (Tarjan)."""
    graph: dict[str, list[str]] = defaultdict(list)
    for a, b in edges:
        graph[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return found


def test_every_package_has_its_place_in_the_order() -> None:
    order = documented_order()
    assert len(order) == len(set(order)), f"a package twice in the order: {order}"
    assert set(order) == top_level_packages(), (
        "docs/DECISIONS.md's layer order and the repository's top-level packages differ: "
        f"missing {sorted(top_level_packages() - set(order))}, gone {sorted(set(order) - top_level_packages())}")


def test_schemas_imports_nothing_of_ours() -> None:
    assert documented_order()[0] == "schemas"
    assert not [where for (a, _), where in package_edges().items() if a == "schemas"]


def test_no_package_level_cycle() -> None:
    edges = package_edges()
    assert cycles(top_level_packages(), set(edges)) == []


def test_imports_point_down_the_order() -> None:
    rank = {name: i for i, name in enumerate(documented_order())}
    upward = [f"{a} -> {b}: {where}" for (a, b), wheres in sorted(package_edges().items())
              if rank[b] > rank[a] for where in wheres]
    assert upward == [], "imports of a package from one below it:\n" + "\n".join(upward)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a", "b", "c"}, {("a", "b"), ("b", "c"), ("c", "a")}) == [["a", "b", "c"]]
    assert cycles({"a", "b"}, {("a", "b")}) == []
