"""Every third-party module the project imports is declared in pyproject.toml, in the extra that
the importing package is installed with.

A module that is only present because some other package happens to pull it in (or because it
was pip-installed by hand into a developer's venv) works here and fails on a clean install:
CI once failed for exactly that (statsmodels). The imports are read with `ast` from every .py
file, late imports inside functions included; import names are mapped to distributions with
`importlib.metadata.packages_distributions()` of the installed environment.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest
from test_layering import PACKAGES, imported_names, modules

tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parents[1]
OWN = {"qimera_core", "sweeps", "analysis", "bench", "tests", "conftest"}
# Which extras each part of the tree is installed with (base dependencies always).
GROUPS = {
    "qimera_core": (),
    "sweeps": ("sweep",),
    "analysis": ("analysis",),
    "bench": ("dev",),
    "tests": ("dev",),
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> tuple[str, list[str]]:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[([^\]]*)\])?", req)
    assert m, req
    extras = [e.strip() for e in (m.group(3) or "").split(",") if e.strip()]
    return _norm(m.group(1)), extras


def declared(extras: tuple[str, ...]) -> set[str]:
    """Distribution names the base dependencies plus `extras` ask for, the project's own
    extras (`qimera-sweeps[stats]`) followed."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    me = _norm(project["name"])
    optional = project.get("optional-dependencies", {})
    out: set[str] = set()
    todo = list(project["dependencies"]) + [r for e in extras for r in optional[e]]
    seen: set[str] = set()
    while todo:
        name, sub = _req_name(todo.pop())
        if name == me:
            for e in sub:
                if e not in seen:
                    seen.add(e)
                    todo += optional[e]
        else:
            out.add(name)
    return out


def _third_party(path: Path) -> set[str]:
    """Top-level names of the modules `path` imports, stdlib and own code left out."""
    # Scripts imported by file name from sys.path (bench/flops.py, tests/test_x.py).
    local = {p.stem for d in ("bench", "tests") for p in (ROOT / d).rglob("*.py")}
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        else:
            continue
        for n in names:
            top = n.split(".")[0]
            if not (top in sys.stdlib_module_names or top in OWN | local or top == "__future__"):
                out.add(top)
    return out


def third_party_imports(part: str) -> dict[str, list[str]]:
    """Top-level import name -> files that import it, over every file of `part` and every
    module of the project's packages those files import, directly or through others (sweeps'
    race imports analysis.stats, which imports statsmodels: the sweep extra must have it)."""
    mods = {m: p for pkg in PACKAGES for m, p in modules(pkg).items()}
    todo = sorted((ROOT / part).rglob("*.py"))
    seen: set[Path] = set()
    out: dict[str, list[str]] = {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for top in _third_party(path):
            out.setdefault(top, []).append(str(path.relative_to(ROOT)))
        name = next((m for m, p in mods.items() if p == path), path.stem)
        for target in imported_names(name, path):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target:
                todo.append(mods[target])
    return out


@pytest.mark.parametrize("part", sorted(GROUPS))
def test_every_import_is_declared(part):
    dists = md.packages_distributions()
    want = declared(GROUPS[part])
    missing = []
    for top, files in sorted(third_party_imports(part).items()):
        owners = {_norm(d) for d in dists.get(top, [])}
        if not owners:
            missing.append(f"{top} (not installed; imported by {files[0]})")
        elif not owners & want:
            missing.append(f"{top} -> {'/'.join(sorted(owners))} (imported by {files[0]})")
    extras = "+".join(GROUPS[part]) or "base"
    assert not missing, (f"{part} imports modules that pyproject.toml's {extras} dependencies "
                         "do not declare; add them there: " + "; ".join(missing))


def test_the_check_sees_a_missing_declaration():
    """The check is not vacuous: statsmodels is imported by the analysis, and by the sweeps
    through it, and is not among the base dependencies."""
    assert "statsmodels" in third_party_imports("analysis")
    assert "analysis/stats.py" in third_party_imports("sweeps")["statsmodels"]
    assert "statsmodels" not in declared(())
    assert "statsmodels" in declared(("analysis",))
    assert "statsmodels" in declared(("sweep",))
