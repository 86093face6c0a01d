"""The layering of DESIGN.md, read from the source's import statements (ast, nothing imported):

- `packagers`, `drm` and `storage` import nothing from `engine` (each library stands alone);
- the media engine (`engine` outside `engine/service/`) imports nothing from `engine.service`;
- no import cycles among the modules of the four packages.

Every import statement counts, lazy ones inside functions included. For cycles, imports under
`if TYPE_CHECKING:` do not count (they never run); for the two layering rules they do, since a
type-only dependency on `engine` still ties a library to it. `from a.b import c` is an edge to
`a.b.c` when that is a module, else to `a.b`; importing `a.b.c` is not an edge to `a`'s or
`a.b`'s `__init__` (so a package that re-exports its modules does not make a cycle by itself).
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "packagers", "drm", "storage")
LIBRARIES = ("packagers", "drm", "storage")
SERVICE = "engine.service"

# Modules of the media engine that may import engine.service, with the reason.
SERVICE_IMPORTERS = {
    "engine.cli": "the composition root: vipe serve, vipe worker and vipe tenant start the service",
}


@dataclass(frozen=True)
class Import:
    """One imported module, where the import statement is."""

    source: str  # importing module
    target: str  # imported module (one of ours)
    path: Path
    line: int
    type_checking: bool  # under `if TYPE_CHECKING:`

    def __str__(self) -> str:
        where = f"{self.path.relative_to(ROOT)}:{self.line}"
        hint = " (under TYPE_CHECKING)" if self.type_checking else ""
        return f"{where}: {self.source} -> {self.target}{hint}"


def module_files() -> dict[str, Path]:
    """Every module of the four packages by dotted name (`pkg/__init__.py` is `pkg`)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST, type_checking: bool = False) -> Iterator[tuple[ast.stmt, bool]]:
    """Every import statement anywhere in `tree`, and whether it sits under TYPE_CHECKING."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, type_checking
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _statements_of(child, True)
            for child in node.orelse:
                yield from _statements_of(child, type_checking)
        else:
            yield from _statements(node, type_checking)


def _statements_of(node: ast.stmt, type_checking: bool) -> Iterator[tuple[ast.stmt, bool]]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, type_checking
    else:
        yield from _statements(node, type_checking)


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` statement names (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if path.name != "__init__.py":
        package.pop()
    if node.level > 1:
        package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, node.module] if node.module else package)


def read_imports(modules: dict[str, Path]) -> list[Import]:
    """The imports of our modules that name one of our modules."""
    found = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, type_checking in _statements(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _base(module, path, node)
                for alias in node.names:
                    name = f"{base}.{alias.name}"
                    targets.append(name if name in modules else base)
            for target in dict.fromkeys(targets):
                if target.split(".")[0] in PACKAGES:
                    found.append(Import(module, target, path, node.lineno, type_checking))
    return found


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def import_graph(imports: list[Import]) -> dict[str, dict[str, Import]]:
    """source -> {target: the first import statement making that edge}, TYPE_CHECKING left out."""
    graph: dict[str, dict[str, Import]] = {}
    for imported in imports:
        if not imported.type_checking:
            graph.setdefault(imported.source, {}).setdefault(imported.target, imported)
    return graph


def cycles(graph: dict[str, dict[str, Import]]) -> list[frozenset[str]]:
    """The strongly connected components that hold a cycle (Tarjan), in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the module count (~100)
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, {}):
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found, key=sorted)


def shortest_cycle(graph: dict[str, dict[str, Import]], component: frozenset[str]) -> list[Import]:
    """One shortest cycle through the component's first module, as its import statements."""
    start = min(component)
    previous: dict[str, Import] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target, imported in sorted(graph.get(node, {}).items()):
            if target not in component:
                continue
            if target == start:
                edges = [imported]
                while node != start:
                    edges.append(previous[node])
                    node = previous[node].source
                return edges[::-1]
            if target not in previous:
                previous[target] = imported
                queue.append(target)
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def _describe(graph: dict[str, dict[str, Import]], component: frozenset[str]) -> str:
    lines = [f"cycle among {', '.join(sorted(component))}:"]
    lines += [f"  {edge}" for edge in shortest_cycle(graph, component)]
    return "\n".join(lines)


MODULES = module_files()
IMPORTS = read_imports(MODULES)
GRAPH = import_graph(IMPORTS)


# ------------------------------------------------------------------------------------ the rules


def test_the_reader_sees_the_packages() -> None:
    # guards against a reader that finds nothing and so passes every rule below
    assert {"engine.pipeline.runner", "packagers.cmaf", "drm.cenc", "storage.s3"} <= set(MODULES)
    assert any(i.source == "packagers.cmaf" and i.target == "packagers.mp4" for i in IMPORTS)
    assert any(i.source == "engine.service.api" and i.target.startswith("engine.") for i in IMPORTS)


def test_libraries_import_nothing_from_engine() -> None:
    offending = [
        str(i)
        for i in IMPORTS
        if any(_inside(i.source, library) for library in LIBRARIES) and _inside(i.target, "engine")
    ]
    assert not offending, "packagers, drm and storage must not import engine:\n" + "\n".join(
        offending
    )


def test_media_engine_imports_nothing_from_the_service() -> None:
    offending = [
        str(i)
        for i in IMPORTS
        if _inside(i.source, "engine")
        and not _inside(i.source, SERVICE)
        and i.source not in SERVICE_IMPORTERS
        and _inside(i.target, SERVICE)
    ]
    assert not offending, "the media engine must not import engine.service:\n" + "\n".join(
        offending
    )


def test_no_import_cycles() -> None:
    found = cycles(GRAPH)
    assert not found, "import cycles:\n" + "\n".join(_describe(GRAPH, c) for c in found)


# ------------------------------------------------------------------------- the reader itself


def _graph_of(sources: dict[str, str], tmp_path: Path) -> dict[str, dict[str, Import]]:
    modules = {}
    for name, text in sources.items():
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        modules[name] = path
    return import_graph(read_imports(modules))


def test_reader_rules_on_a_small_graph(tmp_path: Path) -> None:
    graph = _graph_of(
        {
            "engine": "",
            "engine.a": "from engine import b\nimport engine.c.d\n",
            "engine.b": "def f():\n    from engine.a import thing\n",
            "engine.c": "",
            "engine.c.d": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from engine.a import x\n"
                "else:\n    from . import e\n"
            ),
            "engine.c.e": "import os\n",
        },
        tmp_path,
    )
    assert {s: set(t) for s, t in graph.items()} == {
        "engine.a": {"engine.b", "engine.c.d"},  # not engine/__init__ nor engine.c
        "engine.b": {"engine.a"},  # lazy import inside a function
        "engine.c.d": {"engine.c.e"},  # TYPE_CHECKING left out, its else kept
    }
    [component] = cycles(graph)
    assert component == {"engine.a", "engine.b"}
    assert [(e.source, e.target) for e in shortest_cycle(graph, component)] == [
        ("engine.a", "engine.b"),
        ("engine.b", "engine.a"),
    ]
