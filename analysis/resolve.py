"""What a table resolves, in one object: the tied-best set, the axis effects and the paper's
claims with their verdicts; written as `<table>-stats.{csv,md,tex}` and shown on the live page
and by `analysis status`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import effects
from .cells import TOP_MARK, PaperTable
from .render import latex_escape, write_files

CSV_COLUMNS = ["table", "part", "setting", "item", "test", "effect", "ci_low", "ci_high",
               "effect_unit", "p", "verdict", "seeds_per_cell", "seeds_needed", "note"]


@dataclass
class Resolution:
    table: str
    alpha: float
    ties: pd.DataFrame                    # per block: best cell, tied cells, cells in all
    effects: pd.DataFrame                 # analysis.effects.axis_effects
    claims: pd.DataFrame                  # analysis.effects.claims
    options: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Plain sentences: what this table does and does not resolve."""
        out = []
        for _, t in self.ties.iterrows():
            out.append(f"{t['setting']}: best {t['best']} ({t['best_mean']:.2f}); "
                       f"{t['tied']} of {t['cells']} cells could be the best "
                       f"(simultaneous, alpha {self.alpha:g})"
                       + (f"; {t['note']}" if t["note"] else ""))
        for _, e in self.effects.iterrows():
            out.append(f"{e['setting']}: {e['label']}: " + _effect_text(e, self.alpha))
        for _, c in self.claims.iterrows():
            out.append(f"{c['setting']}: \"{c['claim']}\": {_claim_text(c)}")
        return out


def _fmt(v: float, digits: int = 2) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _p(v: float) -> str:
    return "—" if v is None or math.isnan(v) else (f"{v:.2g}" if v >= 1e-4 else f"{v:.1e}")


def _effect_text(e: pd.Series, alpha: float) -> str:
    if e["note"]:
        return e["note"]
    size = (f"{e['effect']:+.2f} [{_fmt(e['ci_low'])}, {_fmt(e['ci_high'])}] {e['effect_unit']}"
            if not math.isnan(e["ci_low"]) else f"{e['effect']:.2f} ({e['effect_unit']})")
    word = "matters" if e["p"] < alpha else "not resolved"
    return f"{word} (p = {_p(e['p'])}); {size}"


def _claim_text(c: pd.Series) -> str:
    text = f"{c['verdict']} (one-sided p = {_p(c['p'])}; effect {_fmt(c['effect'])} " \
           f"[{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}], {c['test']})"
    if c["verdict"] == "unresolved":
        text += f"; about {c['seeds_needed_text']} seeds per cell would resolve it"
    return text


def tie_summary(table: PaperTable) -> pd.DataFrame:
    cells = table.cells[(table.cells["kind"].isin(["ours", "paper"]))
                        & table.cells["mean"].notna()]
    rows = []
    for setting, g in cells.groupby("setting", sort=False):
        top = g[g["top"]]
        label = _cell_label(top.iloc[0]) if len(top) else "—"
        note = "every cell has one seed: nothing can be told apart" \
            if (g.loc[g["kind"] == "ours", "n"] < 2).all() else ""
        rows.append(dict(setting=setting, best=label,
                         best_mean=float(top["mean"].iloc[0]) if len(top) else math.nan,
                         tied=int(g["bold"].sum()), cells=len(g), note=note))
    return pd.DataFrame(rows, columns=["setting", "best", "best_mean", "tied", "cells", "note"])


def _cell_label(c: pd.Series) -> str:
    parts = []
    for col, name in (("mix_classes", "K"), ("mix_prob", "p"), ("dm_layers", "DM"),
                      ("noise_sigma", "σ"), ("method_label", "")):
        if col in c and pd.notna(c[col]) and c[col] != "":
            v = c[col]
            parts.append(f"{name}={v:g}" if name and not isinstance(v, str) else str(v))
    return ", ".join(parts) or str(c.get("column", ""))


def resolve(table: PaperTable, covariate: bool = False, robust: bool = False) -> Resolution:
    return Resolution(
        table=table.name, alpha=table.alpha, ties=tie_summary(table),
        effects=effects.axis_effects(table.samples, table.name, covariate=covariate,
                                     robust=robust) if not table.samples.empty
        else pd.DataFrame(),
        claims=effects.claims(table.samples, table.name, table.alpha, covariate),
        options=dict(covariate=covariate, robust=robust))


def to_frame(r: Resolution) -> pd.DataFrame:
    """The long CSV: one row per tie block, axis and claim."""
    rows = []
    for _, t in r.ties.iterrows():
        rows.append(dict(part="ties", setting=t["setting"], item=f"best: {t['best']}",
                         test="simultaneous bounds over all pairs", effect=t["best_mean"],
                         verdict=f"{t['tied']} of {t['cells']} tied", note=t["note"]))
    for _, e in r.effects.iterrows():
        rows.append(dict(part="axis", setting=e["setting"], item=e["label"], test=e["test"],
                         effect=e["effect"], ci_low=e["ci_low"], ci_high=e["ci_high"],
                         effect_unit=e["effect_unit"], p=e["p"],
                         verdict="" if e["note"] else
                         ("matters" if e["p"] < r.alpha else "not resolved"), note=e["note"]))
    for _, c in r.claims.iterrows():
        rows.append(dict(part="claim", setting=c["setting"], item=c["claim"], test=c["test"],
                         effect=c["effect"], ci_low=c["ci_low"], ci_high=c["ci_high"], p=c["p"],
                         verdict=c["verdict"], seeds_per_cell=c["seeds_per_cell"],
                         seeds_needed=c["seeds_needed"]))
    frame = pd.DataFrame(rows, columns=CSV_COLUMNS[1:])
    frame.insert(0, "table", r.table)
    return frame


def _options(r: Resolution) -> str:
    extra = [w for w, on in (("start accuracy as a covariate", r.options.get("covariate")),
                             ("HC3 robust errors", r.options.get("robust"))) if on]
    return f"alpha {r.alpha:g}; seed as a block" + "".join(f"; {w}" for w in extra)


def to_markdown(r: Resolution) -> str:
    out = [f"**What {r.table} resolves** ({_options(r)})", ""]
    if not r.ties.empty:
        out += ["Tied with the best (bold in the table; the best mean is marked "
                f"{TOP_MARK}):", "", r.ties.to_markdown(index=False), ""]
    if not r.effects.empty:
        e = r.effects.assign(result=[_effect_text(x, r.alpha) for _, x in r.effects.iterrows()])
        out += ["Axis effects:", "",
                e[["setting", "label", "levels", "runs", "result", "test"]]
                .to_markdown(index=False), ""]
    if not r.claims.empty:
        c = r.claims.assign(result=[_claim_text(x) for _, x in r.claims.iterrows()])
        out += ["The paper's claims, tested:", "",
                c[["setting", "claim", "verdict", "result"]].to_markdown(index=False), ""]
    return "\n".join(out) + "\n"


def to_latex(r: Resolution) -> str:
    lines = [r"\begin{table}", r"\centering", r"\small",
             rf"\caption{{{latex_escape(f'What {r.table} resolves ({_options(r)})')}}}",
             rf"\label{{tab:{r.table}-stats}}",
             r"\begin{tabular}{p{0.2\linewidth}p{0.33\linewidth}p{0.4\linewidth}}", r"\toprule",
             r"Setting & Question & Result \\", r"\midrule"]
    for _, t in r.ties.iterrows():
        lines.append(" & ".join(latex_escape(x) for x in (
            t["setting"], f"tied with the best ({t['best']})",
            f"{t['tied']} of {t['cells']} cells")) + r" \\")
    for _, e in r.effects.iterrows():
        lines.append(" & ".join(latex_escape(x) for x in (
            e["setting"], f"does {e['label']} matter?", _effect_text(e, r.alpha))) + r" \\")
    for _, c in r.claims.iterrows():
        lines.append(" & ".join(latex_escape(x) for x in (
            c["setting"], c["claim"], _claim_text(c))) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write(r: Resolution, out_dir: Path, formats: list[str]) -> list[Path]:
    return write_files(out_dir, f"{r.table}-stats", formats,
                       lambda path: to_frame(r).to_csv(path, index=False),
                       lambda: to_markdown(r), lambda: to_latex(r))
