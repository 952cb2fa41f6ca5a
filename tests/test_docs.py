"""The manual: README.md is the front door and docs/ is a MkDocs site.

The strict MkDocs build catches a broken link or anchor, a missing page and a page left out of
the navigation. The other tests need no MkDocs: the README stays short, keeps the commands CI
runs, and every relative link in the README and in docs/ resolves, as GitHub shows them.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"
README_MAX_LINES = 250

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (links there are not links)."""
    kept, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if not fence:
            kept.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(kept)


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub (and MkDocs, for the headings used here) makes it."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, fence = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"^#{1,6}\s+(.*)$", line)):
            anchors.add(_slug(m.group(1)))
    return anchors


def _broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):          # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: {dest} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    return broken


def _nav_pages(nav) -> list[str]:
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            pages += _nav_pages(value)
        else:
            pages.append(value)
    return pages


def _nav() -> list[str]:
    yaml = pytest.importorskip("yaml", reason="PyYAML (the dev extra) reads mkdocs.yml")
    return _nav_pages(yaml.safe_load(MKDOCS_YML.read_text(encoding="utf-8"))["nav"])


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move the detail into "
        "a page under docs/ and link to it")


def test_readme_keeps_the_commands_ci_runs():
    readme = README.read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for command in ('pip install -e ".[dev]"', "python -m pytest -q"):
        assert command in ci, f".ci/run no longer runs {command!r}"
        assert command in readme, f"README.md lost the command CI runs: {command!r}"


def test_readme_links_resolve():
    broken = _broken_links(README)
    assert not broken, "README.md has broken links:\n" + "\n".join(broken)
    assert any(t.startswith("docs/") for t in LINK.findall(_prose(README.read_text()))), \
        "README.md should link to the pages in docs/"


def test_docs_links_resolve_on_github():
    broken = [f"{page.name}: {b}"
              for page in sorted(DOCS.glob("*.md")) for b in _broken_links(page)]
    assert not broken, "docs/ has broken relative links:\n" + "\n".join(broken)


def test_every_nav_page_exists_and_every_page_is_in_nav():
    nav = _nav()
    missing = [p for p in nav if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that do not exist: {missing}"
    assert len(nav) == len(set(nav)), f"a page is in the nav twice: {nav}"
    orphans = sorted(p.name for p in DOCS.glob("*.md") if p.name not in nav)
    assert not orphans, f"pages under docs/ not in mkdocs.yml's nav: {orphans}"


def test_mkdocs_build_strict(tmp_path):
    for module, extra in (("mkdocs", "mkdocs"), ("material", "mkdocs-material")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{extra} is not installed (pip install -e \".[dev]\" installs it); "
                        "the strict docs build is not checked")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(MKDOCS_YML),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    for page in _nav():
        built = tmp_path / "site" / ("index.html" if page == "index.md"
                                     else Path(page).with_suffix("") / "index.html")
        assert built.is_file(), f"{page} was not built ({built})"
