"""What a table resolves, in one object: the tied-best set, the axis effects and the paper's
claims with their verdicts; written as `<table>-stats.{csv,md,tex}` and shown on the live page
and by `analysis status`.

For a raced table (a race log given) the axis tests and the claims' verdicts come from the
round-0 rows, the one fixed design a race has; the estimate on every raced row is shown beside
them, labelled after selection (analysis.effects says why)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import effects
from .cells import TOP_MARK, PaperTable
from .racelog import RaceLog
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
    return f"{word} (p = {_p(e['p'])}); {size}" + _selected_text(e)


def _selected(x: pd.Series) -> bool:
    v = x.get("selected_effect", math.nan)
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _selected_text(x: pd.Series) -> str:
    """The estimate on every raced row, labelled after selection; '' when not raced."""
    if not _selected(x):
        return ""
    if "selected_runs" in x:            # an axis: same size measure as the round-0 one
        where = f"all {int(x['selected_runs'])} raced runs"
    else:                               # a claim: its own test text names the rows
        where = x["selected_test"].removesuffix(", after selection")
    size = f"{x['selected_effect']:+.2f}"
    if not math.isnan(x["selected_ci_low"]):
        size += f" [{_fmt(x['selected_ci_low'])}, {_fmt(x['selected_ci_high'])}]"
    return f"; after selection ({where}; an estimate, not a test): {size}"


def _claim_text(c: pd.Series) -> str:
    text = f"{c['verdict']} (one-sided p = {_p(c['p'])}; effect {_fmt(c['effect'])} " \
           f"[{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}], {c['test']})"
    if c["verdict"] == "unresolved":
        text += f"; about {c['seeds_needed_text']} seeds per cell would resolve it"
    return text + _selected_text(c)


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


def round0_seeds(race: RaceLog | None) -> int | None:
    """n0, the seeds every cell got in round 0, from a race log; None when there is no race."""
    n0 = race.settings.get("n0") if race else None
    return int(n0) if n0 is not None else None


def resolve(table: PaperTable, covariate: bool = False, robust: bool = False) -> Resolution:
    """What `table` resolves; a raced table (its `race`) is tested on its round-0 rows (see
    the module doc)."""
    n0 = round0_seeds(table.race)
    options = dict(covariate=covariate, robust=robust)
    if n0 is not None:
        options["balanced_seeds"] = n0
    return Resolution(
        table=table.name, alpha=table.alpha, ties=tie_summary(table),
        effects=effects.axis_effects(table.samples, table.name, covariate=covariate,
                                     robust=robust, balanced_seeds=n0)
        if not table.samples.empty else pd.DataFrame(),
        claims=effects.claims(table.samples, table.name, table.alpha, covariate,
                              balanced_seeds=n0),
        options=options)


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
        if _selected(e):
            rows.append(_selected_row("axis", e, e["label"],
                                      f"same size on all {int(e['selected_runs'])} raced runs",
                                      e["effect_unit"]))
    for _, c in r.claims.iterrows():
        rows.append(dict(part="claim", setting=c["setting"], item=c["claim"], test=c["test"],
                         effect=c["effect"], ci_low=c["ci_low"], ci_high=c["ci_high"], p=c["p"],
                         verdict=c["verdict"], seeds_per_cell=c["seeds_per_cell"],
                         seeds_needed=c["seeds_needed"]))
        if _selected(c):
            rows.append(_selected_row("claim", c, c["claim"],
                                      c["selected_test"].removesuffix(", after selection"), ""))
    frame = pd.DataFrame(rows, columns=CSV_COLUMNS[1:])
    frame.insert(0, "table", r.table)
    return frame


def _selected_row(part: str, x: pd.Series, item: str, rows: str, unit: str) -> dict:
    """The raced rows' estimate as its own CSV row, beside the tested one: no p, no verdict."""
    return dict(part=f"{part} after selection", setting=x["setting"], item=item,
                test=f"{rows}, after selection: an estimate, not a test",
                effect=x["selected_effect"], ci_low=x["selected_ci_low"],
                ci_high=x["selected_ci_high"], effect_unit=unit,
                note="the race gave cells seeds because of their values; the test above uses "
                     "the round-0 rows")


def _options(r: Resolution) -> str:
    extra = [w for w, on in (("start accuracy as a covariate", r.options.get("covariate")),
                             ("HC3 robust errors", r.options.get("robust"))) if on]
    n0 = r.options.get("balanced_seeds")
    if n0 is not None:
        extra.append(f"raced: tests on the round-0 rows (seeds 0-{n0 - 1} of every cell), "
                     "estimates on all raced rows shown after selection")
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
