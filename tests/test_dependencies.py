"""Every third-party module the project imports is declared in pyproject.toml, in the extra that
the importing package is installed with.

A module that is only present because some other package happens to pull it in (or because it
was pip-installed by hand into a developer's venv) works here and fails on a clean install:
CI once failed for exactly that (statsmodels). The imports are read with `ast` from every .py
file, late imports inside functions included; import names are mapped to the distributions of
the installed environment as `importlib.metadata.packages_distributions()` of Python 3.11+ does.

It runs on every Python that pyproject.toml allows. Python 3.10 lacks two things it uses:
`tomllib` (there it reads pyproject.toml with the `tomli` backport, which the dev extra
declares for 3.10 only), and a `packages_distributions()` that sees wheels without a
`top_level.txt` (3.10's reads only that file; `distributions()` below infers the rest from the
files each distribution installed, as 3.11+ does).
"""

from __future__ import annotations

import ast
import collections
import importlib.metadata as md
import inspect
import re
import sys
from pathlib import Path

import pytest
from test_layering import PACKAGES, imported_names, modules

if sys.version_info >= (3, 11):
    import tomllib
else:                                   # Python 3.10: the backport, in the dev extra for it
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
OWN = {"qimera_core", "sweeps", "analysis", "bench", "tests", "conftest"}
# Standard library from a later Python than the oldest allowed, imported only there (behind a
# `sys.version_info` check); `sys.stdlib_module_names` of the older one lacks them.
NEWER_STDLIB = {"tomllib"}                 # 3.11
# Modules that import an extra's packages only when a flag asks for them, after checking they
# are installed (--wandb/--mlflow: the trackers extra, not every sweep): their imports are checked
# against that extra, as a part of their own, and not against the part they sit in.
OPTIONAL = {"sweeps/trackers.py": ("trackers",)}
# Which extras each part of the tree is installed with (base dependencies always).
GROUPS = {
    "qimera_core": (),
    "sweeps": ("sweep",),
    "analysis": ("analysis",),
    "bench": ("dev",),
    "tests": ("dev",),
    **OPTIONAL,
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> tuple[str, list[str], bool]:
    """(distribution name, its extras, whether its environment marker holds on this Python)."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[([^\]]*)\])?", req)
    assert m, req
    extras = [e.strip() for e in (m.group(3) or "").split(",") if e.strip()]
    _, _, marker = req.partition(";")
    return _norm(m.group(1)), extras, _marker_holds(marker)


def _marker_holds(marker: str) -> bool:
    """A requirement's environment marker on this Python. Only the kind pyproject.toml uses is
    evaluated, `python_version <op> "X.Y"`; an empty marker holds, any other fails the test."""
    if not marker.strip():
        return True
    m = re.fullmatch(r"""\s*python_version\s*(<=|>=|<|>|==|!=)\s*["'](\d+)\.(\d+)["']\s*""",
                     marker)
    assert m, f"teach tests/test_dependencies.py the marker {marker.strip()!r}"
    here, there = sys.version_info[:2], (int(m.group(2)), int(m.group(3)))
    return {"<": here < there, "<=": here <= there, ">": here > there, ">=": here >= there,
            "==": here == there, "!=": here != there}[m.group(1)]


def declared(extras: tuple[str, ...]) -> dict[str, bool]:
    """Distribution names the base dependencies plus `extras` ask for, the project's own
    extras (`qimera-sweeps[stats]`) followed, each with whether it is asked for on this Python
    (False: only under an environment marker that excludes it, like `tomli` on 3.11+)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    me = _norm(project["name"])
    optional = project.get("optional-dependencies", {})
    out: dict[str, bool] = {}
    todo = list(project["dependencies"]) + [r for e in extras for r in optional[e]]
    seen: set[str] = set()
    while todo:
        name, sub, here = _req_name(todo.pop())
        if name == me:
            for e in sub:
                if e not in seen:
                    seen.add(e)
                    todo += optional[e]
        else:
            out[name] = out.get(name, False) or here
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
            if not (top in sys.stdlib_module_names or top in NEWER_STDLIB | OWN | local
                    or top == "__future__"):
                out.add(top)
    return out


def third_party_imports(part: str) -> dict[str, list[str]]:
    """Top-level import name -> files that import it, over every file of `part` and every
    module of the project's packages those files import, directly or through others (sweeps'
    race imports analysis.stats, which imports statsmodels: the sweep extra must have it)."""
    mods = {m: p for pkg in PACKAGES for m, p in modules(pkg).items()}
    top = ROOT / part
    todo = sorted(top.rglob("*.py")) if top.is_dir() else [top]
    seen: set[Path] = set()
    out: dict[str, list[str]] = {}
    while todo:
        path = todo.pop()
        if path in seen or (path != top and str(path.relative_to(ROOT)) in OPTIONAL):
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


def distributions() -> dict[str, list[str]]:
    """Top-level import name -> the distributions that install it, on any Python: a
    distribution's `top_level.txt` where it has one, else the names inferred from its installed
    files (what `importlib.metadata.packages_distributions()` does from 3.11 on; 3.10's skips
    such wheels, tomli's among them, and would call them not installed)."""
    out: dict[str, list[str]] = collections.defaultdict(list)
    for dist in md.distributions():
        names = (dist.read_text("top_level.txt") or "").split()
        if not names:
            names = {f.parts[0] if len(f.parts) > 1 else inspect.getmodulename(f.name) or f.name
                     for f in dist.files or ()}
        for name in names:
            if "." not in name:                  # not *.dist-info, *.data, *.pth
                out[name].append(dist.metadata["Name"])
    return dict(out)


@pytest.mark.parametrize("part", sorted(GROUPS))
def test_every_import_is_declared(part):
    dists = distributions()
    asked = declared(GROUPS[part])
    want = {name for name, here in asked.items() if here}
    missing = []
    for top, files in sorted(third_party_imports(part).items()):
        owners = {_norm(d) for d in dists.get(top, [])}
        if not owners and asked.get(_norm(top)) is False:
            continue            # declared for other Pythons only, and imported only there
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


def test_the_trackers_are_their_own_extra():
    """--wandb/--mlflow's packages: imported by sweeps/trackers.py only, declared by the
    trackers extra (with the sweep extra it builds on) and by dev, not by the sweep extra."""
    mine = third_party_imports("sweeps/trackers.py")
    assert {"wandb", "mlflow", "ray"} <= set(mine)
    assert not {"wandb", "mlflow"} & set(third_party_imports("sweeps"))
    assert {"wandb", "mlflow-skinny", "ray"} <= set(declared(("trackers",)))
    assert {"wandb", "mlflow-skinny"} <= set(declared(("dev",)))
    assert not {"wandb", "mlflow-skinny"} & set(declared(("sweep",)))


def test_markers_follow_this_python():
    """The 3.10 backport is declared for 3.10 only, and the marker check reads both ways."""
    assert declared(("dev",))["tomli"] is (sys.version_info < (3, 11))
    assert _marker_holds("") and _marker_holds(' python_version >= "3.10"')
    assert not _marker_holds("python_version < '3.10'")
    assert _marker_holds(f'python_version == "{sys.version_info[0]}.{sys.version_info[1]}"')


def test_distributions_agree_with_the_standard_library():
    """Where `packages_distributions()` sees every wheel (3.11+), ours gives the same owners for
    every module the project imports; on 3.10 ours also sees the wheels it misses."""
    ours = distributions()
    theirs = md.packages_distributions()
    imported = {top for part in GROUPS for top in third_party_imports(part)}
    for top in sorted(imported & set(theirs)):
        assert sorted(ours.get(top, [])) == sorted(theirs[top]), top
