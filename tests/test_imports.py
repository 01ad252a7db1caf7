"""No import cycle inside a code folder: every module's imports (relative ones, absolute
`dncml.*` ones, and those inside functions) read with `ast`, as a graph per folder."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("trainers", "platform", "experiments", "analysis")


def modules_of(folder: str) -> dict[str, Path]:
    """Dotted module name (`dncml.trainers.data.base`) -> file, for every module of the folder
    (a package's `__init__.py` is the package itself)."""
    found = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(("dncml", *parts))] = path
    return found


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `module` imports anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets.add(source)
            targets.update(f"{source}.{alias.name}" for alias in node.names)  # `from . import store`
    edges = set()
    for target in targets:
        # `import dncml.trainers.data.base` also imports its packages; an edge to the deepest known one
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != module:
            edges.add(target)
    return edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle path (first node repeated at the end) for every strongly connected component of
    more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_path(graph, set(component)) for component in components]


def _cycle_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A path through every module of the component that it can walk, back to its start (the
    shortest way from each module to the next unvisited one)."""
    start = min(component)
    path, left = [start], component - {start}
    while True:
        goal = left or {start}
        step = _shortest(graph, component, path[-1], goal)
        path += step[1:]
        left -= set(step)
        if path[-1] == start and not left:
            return path


def _shortest(graph: dict[str, set[str]], within: set[str], source: str, goals: set[str]) -> list[str]:
    """The shortest walk inside `within` from `source` to a module of `goals` (breadth first)."""
    previous: dict[str, str] = {}
    seen, frontier = {source}, [source]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & within):
                if nxt in goals:
                    way = [nxt, node]
                    while way[-1] != source:
                        way.append(previous[way[-1]])
                    return way[::-1]
                if nxt not in seen:
                    seen.add(nxt)
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no path from {source} to {goals} inside {within}")


def import_graph(folder: str) -> dict[str, set[str]]:
    modules = modules_of(folder)
    known = set(modules)
    return {name: imported(name, path, known) for name, path in modules.items()}


def short(module: str, folder: str) -> str:
    return module.removeprefix(f"dncml.{folder}").lstrip(".").replace(".", "/") or folder


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_import_cycle_inside_a_folder(folder):
    found = cycles(import_graph(folder))
    described = [" -> ".join(short(m, folder) for m in cycle) for cycle in found]
    assert not found, f"import cycles inside {folder}/: " + "; ".join(described)


def test_the_graph_sees_relative_absolute_and_function_level_imports(tmp_path):
    """The walker on a tiny package: an absolute `dncml.*` import, a relative one and one inside
    a function each make an edge, and the cycle they close is reported as a path."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("from .b import thing\n")
    (package / "b.py").write_text("def f():\n    import dncml.pkg.c\n")
    (package / "c.py").write_text("from dncml.pkg import a\n")
    (package / "d.py").write_text("import os\nfrom . import a\n")
    known = {f"dncml.pkg.{name}" for name in "abcd"}
    graph = {name: imported(name, package / f"{name.rpartition('.')[2]}.py", known) for name in known}
    assert graph == {
        "dncml.pkg.a": {"dncml.pkg.b"},
        "dncml.pkg.b": {"dncml.pkg.c"},
        "dncml.pkg.c": {"dncml.pkg.a"},
        "dncml.pkg.d": {"dncml.pkg.a"},
    }
    assert cycles(graph) == [["dncml.pkg.a", "dncml.pkg.b", "dncml.pkg.c", "dncml.pkg.a"]]
