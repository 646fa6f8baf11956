"""Every module imports, and no two modules import each other, even indirectly.

The graph is read from the source with ``ast``: every import statement counts, at the top
of a module, under ``if TYPE_CHECKING:`` or inside a function, because a cycle through any
of them is two modules that cannot be understood (or moved) one without the other.
"""

from __future__ import annotations

import ast
import importlib
import os

from twisted.trial.unittest import SynchronousTestCase

import voipmon

PACKAGE = os.path.dirname(os.path.abspath(voipmon.__file__))

def modules() -> dict[str, str]:
    """Every module of the package by dotted name, with its file."""
    found = {}
    root = os.path.dirname(PACKAGE)
    for folder, _dirs, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: str, known: dict[str, str]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its source."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in known:
                    found.add(target)
                elif base in known:
                    found.add(base)
    found.discard(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
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
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


class ImportTests(SynchronousTestCase):
    def test_every_module_imports(self) -> None:
        """Each module of the package imports on its own (the tests' too)."""
        for name in sorted(modules()):
            importlib.import_module(name)

    def test_no_import_cycles(self) -> None:
        """No cycle of imports, counting those under TYPE_CHECKING and inside functions."""
        known = modules()
        graph = {name: imports(name, path, known) for name, path in known.items()}
        self.assertEqual(cycles(graph), [])

    def test_cycles_are_found(self) -> None:
        """The check sees a cycle through a TYPE_CHECKING import and a function's import."""
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        self.assertEqual(cycles(graph), [frozenset({"a", "b", "c"})])
        source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                  "    from voipmon.config import settings\n"
                  "def f():\n    from voipmon.sources import registry\n")
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write(source)
        known = {"voipmon.config": "", "voipmon.config.settings": "", "voipmon.sources": "",
                 "voipmon.sources.registry": ""}
        self.assertEqual(imports("voipmon.x", path, known),
                         {"voipmon.config.settings", "voipmon.sources.registry"})
