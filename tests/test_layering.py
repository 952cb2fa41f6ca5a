"""Layering: no import circles inside qimera_core, sweeps or analysis, and qimera_core stays
below Ray and the sweeps.

The graph is read with `ast` from every .py file, so it counts every `import` and `from`
statement wherever it is: at module level, inside functions (late imports), and under
`if TYPE_CHECKING:`. A late import does not make a circle go away; it only delays it.
`python tests/test_layering.py` prints each package's graph and its circles.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("qimera_core", "sweeps", "analysis")
# What the trainer must never import: it runs without Ray, and the sweeps and the analysis
# are built on it.
CORE_FORBIDDEN = ("ray", "sweeps", "analysis")


def modules(package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `package` (a package's __init__.py is
    the package itself)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_names(name: str, path: Path) -> list[str]:
    """Every module name an import statement anywhere in the file names (absolute, dotted);
    `from X import y` gives X.y (y may be a submodule or a name in X)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = name.split(".")
                if not is_pkg:
                    base_parts.pop()
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # X.y: graph() falls back to X when y is a name, not a submodule.
            out += [base if a.name == "*" else f"{base}.{a.name}" for a in node.names]
    return out


def graph(package: str) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (itself left out)."""
    mods = modules(package)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for target in imported_names(name, path):
            # `import a.b.c` and `from a.b import c` name the deepest module that exists.
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a
    closed path through it, e.g. ['a', 'b', 'a']."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(_path(sorted(comp), edges))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return comps


def _path(comp: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest circle through comp[0] inside the component, for the failure message."""
    start, inside = comp[0], set(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v] & inside):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [*reversed(path), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles(package):
    found = cycles(graph(package))
    assert not found, (f"import circles in {package} (counting late and TYPE_CHECKING "
                       "imports): " + "; ".join(" -> ".join(c) for c in found))


def test_the_graph_sees_late_imports():
    """The reader finds imports inside functions and resolves `from pkg import module`."""
    edges = graph("qimera_core")
    assert "qimera_core.config" in edges["qimera_core"]          # module level, in __init__
    assert "qimera_core.train" in edges["qimera_core"]           # inside __getattr__


def test_cycles_names_each_circle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}}
    assert cycles(edges) == [["a", "b", "c", "a"], ["e", "f", "e"]]


def test_core_imports_no_ray_sweeps_or_analysis():
    bad = []
    for name, path in modules("qimera_core").items():
        for target in imported_names(name, path):
            if target.split(".")[0] in CORE_FORBIDDEN:
                bad.append(f"{name} imports {target}")
    assert not bad, bad


def test_analysis_imports_no_sweeps_and_no_ray():
    """The analysis reads results; what a table is comes from qimera_core.tablespec, so it never
    needs the sweeps (which import it) nor Ray."""
    bad = [f"{name} imports {target}"
           for name, path in modules("analysis").items()
           for target in imported_names(name, path)
           if target.split(".")[0] in ("sweeps", "ray")]
    assert not bad, bad


def test_no_private_name_is_imported_across_modules():
    """`from x import _y` reaches into another module's private parts; what is shared is
    public."""
    bad = []
    for pkg in PACKAGES:
        for name, path in modules(pkg).items():
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    bad += [f"{name}: from {node.module} import {a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, bad


if __name__ == "__main__":
    status = 0
    for pkg in PACKAGES:
        g = graph(pkg)
        print(f"== {pkg}")
        for m in sorted(g):
            print(f"  {m} -> {', '.join(sorted(g[m])) or '-'}")
        for c in cycles(g):
            print("  CIRCLE: " + " -> ".join(c))
            status = 1
    sys.exit(status)
