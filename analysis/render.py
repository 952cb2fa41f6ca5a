"""Write a PaperTable as CSV (the numbers, long form), Markdown and LaTeX (booktabs, via Styler)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .cells import TOP_MARK
from .load import AnalysisError
from .tables import PaperTable

log = logging.getLogger(__name__)

FORMATS = ("csv", "md", "tex")
# pdflatex's default input encoding knows none of these in text mode.
_LATEX_UNICODE = {"±": r"$\pm$", "σ": r"$\sigma$", "Δ": r"$\Delta$", "†": r"\textdagger{}",
                  "—": "---", "×": r"$\times$", "λ": r"$\lambda$", "≥": r"$\geq$",
                  "▲": r"$^{\star}$"}
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower().lstrip(".") for f in text.split(",") if f.strip()]
    bad = sorted(set(formats) - set(FORMATS))
    if bad or not formats:
        raise AnalysisError(f"--format takes a comma list of {', '.join(FORMATS)}; got {text!r}")
    return formats


def to_csv(table: PaperTable, path: Path) -> Path:
    """Long form, one row per cell, numbers kept as numbers (mean, std, n, paper, delta, cost)."""
    table.cells.to_csv(path, index=False)
    return path


def _with_bold(table: PaperTable, left: str, right: str, mark: str = f" {TOP_MARK}"
               ) -> pd.DataFrame:
    """Tied cells wrapped in `left`/`right`, the best mean followed by `mark`."""
    frame = table.frame.copy()
    if not table.top.empty:
        frame = frame.where(~table.top, frame + mark)
    return frame.where(~table.bold, left + frame + right)


def _blank_repeats(df: pd.DataFrame, levels: int) -> pd.DataFrame:
    """Show a block label (data set, model) once, on the first row of its block, as papers do."""
    out = df.copy()
    for i in range(levels - 1):
        col = out.columns[i]
        same = pd.Series(True, index=out.index)
        for prev in df.columns[: i + 1]:
            same &= df[prev].eq(df[prev].shift())
        out[col] = out[col].astype(str).where(~same, "")
    return out


def to_markdown(table: PaperTable) -> str:
    body = _with_bold(table, "**", "**")
    levels = body.index.nlevels
    axis = table.frame.columns.name
    if axis and axis != "method":  # e.g. Table 9's columns are values of p
        body.columns = [f"{axis}={c}" for c in body.columns]
    body = _blank_repeats(body.reset_index(), levels)
    body.columns = [str(c) for c in body.columns]
    # disable_numparse: keep the text as written ("+1.11" must not become "1.11")
    lines = [f"**{table.title}**", "", body.to_markdown(index=False, disable_numparse=True)]
    if table.notes:
        lines += ["", *[f"- {n}" for n in table.notes]]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    escaped = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return latex_unicode(escaped)


def latex_unicode(text: str) -> str:
    for ch, repl in _LATEX_UNICODE.items():
        text = text.replace(ch, repl)
    return text


def to_latex(table: PaperTable) -> str:
    """A `table` float with a booktabs tabular; compiles with \\usepackage{booktabs} alone."""
    bold = table.bold.to_numpy()
    frame = _with_bold(table, "", "")               # the best mean's mark, no Markdown bold
    styler = (frame.style
              .format(escape="latex")
              .format_index(escape="latex", axis=0)
              .format_index(escape="latex", axis=1)
              .apply(lambda _: np.where(bold, "textbf:--rwrap;", ""), axis=None))
    tex = styler.to_latex(hrules=True, caption=latex_escape(table.title),
                          label=f"tab:{table.name}", position_float="centering",
                          multirow_align="naive", environment="table",
                          column_format="l" * frame.index.nlevels + "r" * frame.shape[1])
    # Smaller type and padding inside the float only, so wide tables fit a page more often.
    tex = latex_unicode(tex).replace("\\centering\n", "\\centering\n\\small\n"
                                     "\\setlength{\\tabcolsep}{4pt}\n", 1)
    if table.notes:
        notes = "\n".join(rf"\par {latex_escape(n)}" for n in table.notes)
        tex = tex.replace(r"\end{table}",
                          "{\\footnotesize\\raggedright\n" + notes + "\\par}\n\\end{table}")
    return tex


def write_table(table: PaperTable, out_dir: Path, formats: list[str]) -> list[Path]:
    written = write_files(out_dir, table.name, formats, lambda path: to_csv(table, path),
                          lambda: to_markdown(table), lambda: to_latex(table))
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return written


def write_files(out_dir: Path, stem: str, formats: list[str], csv: Callable[[Path], Any],
                md: Callable[[], str], tex: Callable[[], str]) -> list[Path]:
    """`out_dir/stem.{csv,md,tex}` for the chosen formats: `csv` writes its file, `md` and
    `tex` return the text."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        if fmt == "csv":
            csv(path)
        else:
            path.write_text(md() if fmt == "md" else tex(), "utf-8")
        written.append(path)
    return written


def latex_document(tex_files: list[Path]) -> str:
    """A minimal document that inputs the given tables (what the compile test builds)."""
    inputs = "\n".join(rf"\input{{{p.name}}}" for p in tex_files)
    return ("\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n"
            f"\\begin{{document}}\n{inputs}\n\\end{{document}}\n")
