"""No import cycles among our modules, and imports point down the layers only.

Every import counts, wherever it stands: at the top, inside a function (a lazy import only
hides a cycle until the first call) and under TYPE_CHECKING (a cycle in the types is one in
the design). The graph is read from the source with `ast`, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("schema", "safety", "activities", "workflows", "starter")


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found["opsconductor." + ".".join(parts)] = path
    return found


def import_graph(found: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (`from pkg import mod` names `pkg.mod`)."""
    graph: dict[str, set[str]] = {name: set() for name in found}
    for name, path in found.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            graph[name].update(t for t in targets if t in found and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_our_modules_import_one_another_without_a_cycle() -> None:
    graph = import_graph(modules())
    edges = sum(len(targets) for targets in graph.values())
    found = cycles(graph)
    print(f"{len(graph)} modules, {edges} imports among them, {len(found)} cycles")
    assert len(graph) > 100 and edges > 300  # the walk really read the package
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_imports_point_down_the_layers_only() -> None:
    graph = import_graph(modules())
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = [(src, dst) for src, targets in graph.items() for dst in targets
              if rank[dst.split(".")[1]] > rank[src.split(".")[1]]]
    assert not upward, f"imports pointing up a layer: {upward}"


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    """The attack on the check itself: a cycle of three, beside an acyclic branch."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
