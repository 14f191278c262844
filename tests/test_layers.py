"""The package's layering, read from the source with ``ast`` (nothing is imported):

1. no import cycle between the package's modules, imports inside functions included (imports under
   ``if TYPE_CHECKING:`` never run, so they do not count);
2. ``distill/`` (the trainer library) imports neither ``rounds/`` nor ``engines/``;
3. ``tasks/`` imports no engine module;
4. ``cli/`` re-exports nothing the library owns: the ``__all__`` of a cli module lists only names defined in cli.

Rules 2-4 count every import, type-only ones included.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import dynsdpb_selfplay

PACKAGE = "dynsdpb_selfplay"
ROOT = Path(dynsdpb_selfplay.__file__).parent

# Cycles that exist today, each the set of modules of one strongly connected component of the import graph. Fix the
# cycle in its modules, then delete its entry here (the test fails while an entry no longer matches a cycle, so
# that the list only shrinks). None today: the last one (rounds/filtering.py <-> rounds/generation.py through
# correction_turns and solved) went when correction_turns moved to tasks/prompts.py.
KNOWN_CYCLES_TO_REMOVE: set[frozenset[str]] = set()


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module of the package
    line: int
    names: tuple[str, ...]  # the names imported (``from m import a, b``), empty for ``import m``
    scope: str  # "module" or the enclosing function, e.g. "filter_self_training"
    type_only: bool  # under ``if TYPE_CHECKING:``

    def __str__(self) -> str:
        where = self.scope if self.scope == "module" else f"in {self.scope}()"
        what = f" ({', '.join(self.names)})" if self.names else ""
        type_only = ", TYPE_CHECKING only" if self.type_only else ""
        return f"{_path(self.source)}:{self.line} imports {self.target}{what} [{where}{type_only}]"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _path(module: str) -> str:
    return next(str(p.relative_to(ROOT.parent)) for p, name in MODULES.items() if name == module)


MODULES = {p: _module_name(p) for p in sorted(ROOT.rglob("*.py"))}
NAMES = set(MODULES.values())
PACKAGES = {_module_name(p) for p in MODULES if p.name == "__init__.py"}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _source(module: str, node: ast.ImportFrom) -> str:
    """The absolute name of the module ``from ... import`` reads from, in ``module``."""
    if not node.level:
        return node.module or ""
    # `from . import x` in a package's __init__ is relative to the package itself.
    parts = (module if module in PACKAGES else module.rpartition(".")[0]).split(".")
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


class _Imports(ast.NodeVisitor):
    """Every import statement of one module, at any depth, resolved to the package's modules."""

    def __init__(self, module: str):
        self.module, self.edges = module, []
        self.scopes: list[str] = []
        self.type_only = 0

    def visit_FunctionDef(self, node):
        self.scopes.append(node.name)
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

    def visit_If(self, node: ast.If):
        if _is_type_checking(node.test):
            self.type_only += 1
            for child in node.body:
                self.visit(child)
            self.type_only -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _add(self, node: ast.stmt, target: str, names: tuple[str, ...] = ()) -> None:
        if target in NAMES:
            scope = ".".join(self.scopes) or "module"
            self.edges.append(Edge(self.module, target, node.lineno, names, scope, self.type_only > 0))

    def visit_Import(self, node: ast.Import):
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom):
        source = _source(self.module, node)
        if not (source == PACKAGE or source.startswith(PACKAGE + ".")):
            return
        plain = []
        for alias in node.names:
            if f"{source}.{alias.name}" in NAMES:  # `from .. import models`: the submodule itself
                self._add(node, f"{source}.{alias.name}")
            else:
                plain.append(alias.name)
        if plain:
            self._add(node, source, tuple(plain))


def _edges() -> list[Edge]:
    edges = []
    for path, module in MODULES.items():
        visitor = _Imports(module)
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        edges += visitor.edges
    return edges


EDGES = _edges()


def _cycles(edges: list[Edge]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (or with a self-import), by Tarjan's algorithm."""
    graph: dict[str, set[str]] = {m: set() for m in NAMES}
    for e in edges:
        graph[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:  # the package has ~80 modules: recursion depth is no concern
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _describe(cycle: frozenset[str], edges: list[Edge]) -> str:
    return "\n".join(f"  {e}" for e in edges if e.source in cycle and e.target in cycle)


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_is_read():
    """A parser that found nothing would pass every rule below."""
    pairs = {(e.source, e.target) for e in EDGES}
    assert ("dynsdpb_selfplay.rounds.orchestrator", "dynsdpb_selfplay.rounds.config") in pairs
    assert ("dynsdpb_selfplay.cli.models", "dynsdpb_selfplay.models") in pairs  # `from .. import models`
    assert ("dynsdpb_selfplay.engines", "dynsdpb_selfplay.engines.hf") in pairs  # inside make_engine()
    assert any(e.type_only for e in EDGES)  # engines/progress.py: `if TYPE_CHECKING: from .base import Engine`
    assert len(MODULES) > 50


def test_cycle_finder():
    def edge(a, b):
        return Edge(f"dynsdpb_selfplay.{a}", f"dynsdpb_selfplay.{b}", 1, (), "module", False)

    found = _cycles(
        [
            edge("jsonl", "errors"),
            edge("errors", "memory"),
            edge("memory", "jsonl"),
            edge("stats", "stats"),
            edge("models", "errors"),
        ]
    )
    assert sorted(map(sorted, found)) == [
        ["dynsdpb_selfplay.errors", "dynsdpb_selfplay.jsonl", "dynsdpb_selfplay.memory"],
        ["dynsdpb_selfplay.stats"],
    ]


def test_no_import_cycles():
    cycles = _cycles([e for e in EDGES if not e.type_only])
    new = [c for c in cycles if c not in KNOWN_CYCLES_TO_REMOVE]
    assert not new, "import cycles (break each, e.g. by moving the shared code to the lower module):\n" + "\n".join(
        f"{sorted(c)}:\n{_describe(c, EDGES)}" for c in new
    )


def test_known_cycles_still_exist():
    """So that KNOWN_CYCLES_TO_REMOVE only shrinks: a fixed cycle must leave the list, and cannot come back."""
    cycles = set(_cycles([e for e in EDGES if not e.type_only]))
    stale = [sorted(c) for c in KNOWN_CYCLES_TO_REMOVE if c not in cycles]
    assert not stale, f"no longer a cycle, remove from KNOWN_CYCLES_TO_REMOVE in {__file__}: {stale}"


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("dynsdpb_selfplay.distill", ("dynsdpb_selfplay.rounds", "dynsdpb_selfplay.engines")),
        ("dynsdpb_selfplay.tasks", ("dynsdpb_selfplay.engines",)),
    ],
)
def test_layer_does_not_import(layer, forbidden):
    bad = [e for e in EDGES if _in(e.source, layer) and any(_in(e.target, f) for f in forbidden)]
    assert not bad, f"{layer} must not import {', '.join(forbidden)}:\n" + "\n".join(f"  {e}" for e in bad)


def _all_and_own(module: str, tree: ast.Module) -> tuple[list[tuple[str, int]], set[str]]:
    """The module's ``__all__`` entries (with their line) and the names that belong to cli: those its top level
    defines, and those it imports from another cli module."""
    exported, defined = [], set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and _in(_source(module, node), "dynsdpb_selfplay.cli"):
            defined |= {a.asname or a.name for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {t.id for target in targets for t in ast.walk(target) if isinstance(t, ast.Name)}
            defined |= names
            if "__all__" in names and node.value is not None:
                exported += [
                    (elt.value, elt.lineno) for elt in getattr(node.value, "elts", []) if isinstance(elt, ast.Constant)
                ]
    return exported, defined


def test_cli_reexports_nothing_the_library_owns():
    cli = "dynsdpb_selfplay.cli"
    trees = {m: ast.parse(p.read_text(), filename=str(p)) for p, m in MODULES.items() if _in(m, cli)}
    bad = []
    for module, tree in trees.items():
        exported, own = _all_and_own(module, tree)
        bad += [
            f"  {_path(module)}:{line}: __all__ lists {name!r}, which cli does not define"
            for name, line in exported
            if name not in own
        ]
    assert not bad, "cli re-exports library names (import them from the library module instead):\n" + "\n".join(bad)
