"""The layers of DESIGN.md 2.1: no import cycle among diffmem's modules, counting the imports inside
functions too (a function-level import hides a cycle from Python, not from the design)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "diffmem")


def package_modules() -> dict[str, str]:
    """{dotted module name: file} of every module under diffmem/ (a package is its __init__.py)."""
    out = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


def _owner(name: str, modules) -> str | None:
    """The module of `name` (a module, or an object in one): its longest prefix that is a module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, dict[str, list[int]]]:
    """{module: {diffmem module it imports: [line, ...]}} from every import statement of the file
    (module level, in functions, in classes); `from diffmem import x` counts as importing diffmem.x
    when x is a module, and relative imports are resolved."""
    modules = package_modules()
    graph = {}
    for mod, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        package = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
        deps: dict[str, list[int]] = {}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t.split(".")[0] == "diffmem":
                    dep = _owner(t, modules)
                    if dep and dep != mod:
                        deps.setdefault(dep, []).append(node.lineno)
        graph[mod] = deps
    return graph


def find_cycle(graph) -> list[str] | None:
    """One cycle [a, b, ..., a] of the graph, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_graph_sees_function_level_and_relative_imports():
    g = {"a": {"b": [1]}, "b": {"c": [5]}, "c": {"a": [9]}, "d": {"a": [2]}}
    assert find_cycle(g) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": [1]}, "b": {}, "c": {"a": [1], "b": [2]}}) is None
    graph = import_graph()
    assert "diffmem.layout" in graph["diffmem.workdir"]           # module level
    assert "diffmem.multihost" in graph["diffmem.lock"]           # inside a function
    assert "diffmem.machines.models" in graph["diffmem.machines"]  # a package's __init__


def test_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    if cycle:
        steps = [f"{a} -> {b} (line {graph[a][b][0]})" for a, b in zip(cycle, cycle[1:])]
        pytest.fail("Import cycle among diffmem's modules: " + "; ".join(steps)
                    + ". Move what both need into a lower layer (DESIGN.md 2.1).")


@pytest.mark.parametrize("module", ["diffmem.layout", "diffmem.lock", "diffmem.errors",
                                    "diffmem.configlib", "diffmem.config_schema"])
def test_low_layers_import_without_jax(module):
    code = f"import sys, {module}; assert 'jax' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
