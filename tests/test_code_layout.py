"""The package's shape, kept by tests: imports go one way (no cycle, counting imports inside
functions and TYPE_CHECKING blocks), no private name is imported from another module, and
no function grows past 100 lines.  The layers themselves are import-linter's contracts in
pyproject.toml (`lint-imports`, run by the README's test command)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sdcli"
MAX_FUNCTION_LINES = 100


def _modules() -> dict[str, ast.Module]:
    trees = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        trees[name] = ast.parse(path.read_text(), filename=str(path))
    return trees


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the groups of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                groups.append(group)
    return groups


def test_no_import_cycle():
    grimp = pytest.importorskip("grimp")  # import-linter's graph builder (dev extra)
    graph = grimp.build_graph("sdcli")
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert len(edges) > 50  # the whole package was read
    cycles = [sorted(g) for g in _strongly_connected(edges) if len(g) > 1]
    cycles += [[m] for m, imported in edges.items() if m in imported]
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_finder_finds_a_cycle():
    groups = _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert sorted(sorted(g) for g in groups) == [["a", "b", "c"], ["d"]]


def _private_imports(trees: dict[str, ast.Module]) -> list[str]:
    found = []
    for module, tree in trees.items():
        for node in ast.walk(tree):  # every import, inside functions and TYPE_CHECKING blocks too
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name.startswith("_") and not (alias.name.startswith("__") and alias.name.endswith("__")):
                        found.append(f"{module}: from {'.' * node.level}{node.module or ''} import {alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if any(part.startswith("_") and not part.startswith("__") for part in alias.name.split(".")):
                        found.append(f"{module}: import {alias.name}")
    return found


def test_no_private_name_is_imported_from_another_module():
    assert _private_imports(_modules()) == []


def test_the_private_import_check_sees_one():
    tree = ast.parse("def f():\n    from sdcli.x import _hidden\n    from . import _helpers\n")
    assert len(_private_imports({"m": tree})) == 2


def test_no_function_is_longer_than_100_lines():
    long = []
    for module, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert long == []


def test_the_products_are_packages():
    packages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    for name in ("cli", "engine", "runtime", "model", "convert", "batch", "imaging", "schedulers", "bench", "util"):
        assert name in packages
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py"]
