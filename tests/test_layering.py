"""The layers of DESIGN.md, read from the sources: cli -> flows -> tasks -> vegan, and no import cycle.

Every import counts: module level, inside functions, and under ``TYPE_CHECKING``
(a type-only cycle is still two modules that cannot be understood apart).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vegan", "tasks", "flows", "cli")
# What each layer must not import (directly or lazily).
FORBIDDEN = {
    "vegan": ("prefect", "tasks", "flows", "cli"),
    "tasks": ("flows", "cli"),
    "flows": ("cli",),
    "cli": (),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, modules: set[str]) -> set[str]:
    """Absolute names imported by a module (``from a import b`` counts as ``a.b`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in modules else base)
    return found


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    modules = set(sources)
    graph = {}
    for name, path in sources.items():
        targets = set()
        for imported in _imports(name, path, modules):
            # the longest project module that is (a prefix of) the imported name
            parts = imported.split(".")
            for n in range(len(parts), 0, -1):
                candidate = ".".join(parts[:n])
                if candidate in modules:
                    if candidate != name:
                        targets.add(candidate)
                    break
        graph[name] = targets
    return graph


def _all_imports() -> dict[str, set[str]]:
    sources = _sources()
    return {name: _imports(name, path, set(sources)) for name, path in sources.items()}


@pytest.mark.parametrize("layer", PACKAGES)
def test_layer_imports_only_what_is_below_it(layer):
    bad = {
        name: sorted(i for i in imported if i.split(".")[0] in FORBIDDEN[layer])
        for name, imported in _all_imports().items()
        if name.split(".")[0] == layer
    }
    assert not {k: v for k, v in bad.items() if v}, f"{layer}/ imports a layer above it"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_checker_sees_cycles_and_relative_imports(tmp_path):
    """The checker itself: a planted cycle is found, and relative imports resolve."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    mod = tmp_path / "m.py"
    mod.write_text("from . import sibling\nfrom .x import y\nif False:\n    import prefect\n")
    assert _imports("pkg.m", mod, {"pkg.sibling", "pkg.x"}) == {"pkg.sibling", "pkg.x", "prefect"}
