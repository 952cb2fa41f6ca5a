"""The paper's tables from sweep results: one function per table, each returning a PaperTable
(see analysis.cells) whose `frame` is the DataFrame in the paper's layout."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import pandas as pd

from . import paper
from .cells import (
    METRICS,
    PaperTable,
    add_paper,
    aggregate,
    check_metric,
    expected_seeds,
    finish,
    make_title,
    paper_rows,
    rows_of,
    setting_columns,
    settings_of,
    table_trials,
    unrun_paper_rows,
)
from .load import PAPER_DATASETS, AnalysisError, Results, race_of, setting_sort_key
from .stats import ALPHA

log = logging.getLogger(__name__)

TABLES = ("main", "table6", "table7", "table8", "table9", "table10")
__all__ = ["METRICS", "PaperTable", "TABLES", "TABLE_FUNCTIONS", "make_tables",
           "table_name"]


# ---- the tables ----------------------------------------------------------------------------
def table9(source: Results | pd.DataFrame, *, metric: str = "top1", seeds: int | None = None,
           compare_paper: bool = False, alpha: float = ALPHA,
           race: dict | None = None) -> PaperTable:
    """Supp. Table 9: accuracy vs K (rows) and p (columns), one block per dataset/model/bits."""
    check_metric(metric)
    trials = table_trials(source, "table9")
    trials["mix_prob"] = trials["mix_prob"].round(6)
    n, settings, theirs = expected_seeds(trials, seeds), settings_of(trials), paper_rows("table9")
    present = pd.concat([rows_of(theirs, s) for s in settings])
    ps = sorted(set(trials["mix_prob"]) | set(present["p"].round(6)))
    rows = []
    for s in settings:
        ks = set(rows_of(trials, s)["mix_classes"].astype(int))
        ks |= set(rows_of(theirs, s)["K"].astype(int))
        rows += [dict(**setting_columns(s), mix_classes=k, mix_prob=p, column=f"{p:.2f}")
                 for k in sorted(ks) for p in ps]
    cells = aggregate(trials, pd.DataFrame(rows), ["setting", "mix_classes", "mix_prob"],
                       metric, n)
    add_paper(cells, lambda c: paper.lookup("table9", c.dataset, c.model, c.bits, "Qimera",
                                             K=c.mix_classes, p=c.mix_prob))
    rename = {"mix_classes": "K", "mix_prob": "p", "column": "p"}
    title = make_title("Table 9", "accuracy vs. superposition probability p and classes per "
                   "sample K (Qimera)", trials, metric)
    return finish("table9", title, trials, cells, ["setting", "mix_classes"], rename,
                   ["setting"], metric, n, compare_paper, unrun_paper_rows("table9", settings),
                  alpha=alpha, race=race or race_of(source, "table9"))


def _table8_column(s: tuple[str, str, str]) -> str:
    d, m, b = s  # the paper's columns are just the data set (ResNet-20, 4w4a)
    return d if (m, b) == ("ResNet-20", "4w4a") and d in PAPER_DATASETS else " ".join(s)


def table8(source: Results | pd.DataFrame, *, metric: str = "top1", seeds: int | None = None,
           compare_paper: bool = False, alpha: float = ALPHA,
           race: dict | None = None) -> PaperTable:
    """Supp. Table 8: accuracy vs number of DM layers (rows), one column per data set."""
    check_metric(metric)
    trials = table_trials(source, "table8")
    n, settings, theirs = expected_seeds(trials, seeds), settings_of(trials), paper_rows("table8")
    dms = sorted(set(trials["dm_layers"].astype(int)) | set(theirs["dm_layers"].astype(int)))
    rows = [dict(**setting_columns(s), dm_layers=dm, column=_table8_column(s))
            for dm in dms for s in settings]
    cells = aggregate(trials, pd.DataFrame(rows), ["setting", "dm_layers"], metric, n)
    add_paper(cells, lambda c: paper.lookup("table8", c.dataset, c.model, c.bits, "Qimera",
                                             dm_layers=c.dm_layers))
    title = make_title("Table 8", "accuracy vs. number of disentanglement-mapping (DM) layers",
                   trials, metric)
    return finish("table8", title, trials, cells, ["dm_layers"], {"dm_layers": "DM layers"},
                   ["column"], metric, n, compare_paper, unrun_paper_rows("table8", settings),
                  alpha=alpha, race=race or race_of(source, "table8"))


def _table6_columns(trials: pd.DataFrame, theirs: pd.DataFrame) -> list[tuple[str, float, str]]:
    gdfq = trials[trials["method_label"] == "GDFQ"]
    sigmas = sorted(set(gdfq["noise_sigma"]) | set(theirs["sigma_z"].dropna().round(6)))
    cols = [("GDFQ", s, f"σ={s:g}") for s in sigmas]
    others = trials.loc[trials["method_label"] != "GDFQ", ["method_label", "noise_sigma"]]
    others = set(map(tuple, others.to_numpy())) | {("Qimera", 1.0)}
    for m, s in sorted(others, key=lambda x: (x[0] != "Qimera", x[0], x[1])):
        cols.append((m, s, m if s == 1.0 else f"{m} σ={s:g}"))
    return cols


def table6(source: Results | pd.DataFrame, *, metric: str = "top1", seeds: int | None = None,
           compare_paper: bool = False, alpha: float = ALPHA,
           race: dict | None = None) -> PaperTable:
    """Supp. Table 6: GDFQ at noise scale σ (columns) per data set, model, bits; Qimera beside."""
    check_metric(metric)
    trials = table_trials(source, "table6")
    trials["noise_sigma"] = trials["noise_sigma"].round(6)
    n, settings, theirs = expected_seeds(trials, seeds), settings_of(trials), paper_rows("table6")
    cols = _table6_columns(trials, theirs)
    rows = [dict(**setting_columns(s), method_label=m, noise_sigma=sig, column=label)
            for s in settings for m, sig, label in cols]
    cells = aggregate(trials, pd.DataFrame(rows), ["setting", "method_label", "noise_sigma"],
                       metric, n)

    def lookup(c: pd.Series) -> tuple | None:
        if c.method_label == "GDFQ":
            return paper.lookup("table6", c.dataset, c.model, c.bits, "GDFQ", sigma_z=c.noise_sigma)
        if c.method_label == "Qimera" and c.noise_sigma == 1.0:
            return paper.lookup("table6", c.dataset, c.model, c.bits, "Qimera")
        return None

    add_paper(cells, lookup)
    title = make_title("Table 6", "GDFQ accuracy vs. noise scale σ, with Qimera for reference",
                   trials, metric)
    return finish("table6", title, trials, cells, ["dataset", "model", "bits"],
                   {"column": "method"}, ["dataset", "model", "bits"], metric, n,
                   compare_paper, unrun_paper_rows("table6", settings),
                  alpha=alpha, race=race or race_of(source, "table6"))


def _paper_cells(settings: list, methods: list[str], block: str) -> list[dict]:
    """Baselines we do not run (ZeroQ, ZAQ, DSG): the paper's value, or '-' where it has none."""
    out = []
    for s in settings:
        for m in methods:
            found = paper.lookup(block, *s, m)
            out.append(dict(**setting_columns(s), method_label=m, column=m, kind="paper",
                            mean=found[0] if found else math.nan, std=math.nan, n=0,
                            status="paper" if found else "not run",
                            reason="" if found else "baseline not run here; no paper value",
                            gpu_hours=0.0, wall_hours=0.0, mixed=""))
    return out


def _teacher_cells(trials: pd.DataFrame, settings: list) -> list[dict]:
    """FP32 column: the teacher's own accuracy, as the trials measured it."""
    out = []
    for s in settings:
        vals = rows_of(trials, s)["teacher_top1"].dropna()
        out.append(dict(**setting_columns(s), method_label="FP32", column="FP32", kind="teacher",
                        mean=vals.mean() if len(vals) else math.nan, std=math.nan, n=len(vals),
                        status="ok" if len(vals) else "not run", reason="", gpu_hours=0.0,
                        wall_hours=0.0, mixed=""))
    return out


def _method_table(name: str, source: Results | pd.DataFrame, metric: str, seeds: int | None,
                  compare: bool, ours: list[str], baselines: list[str]) -> tuple:
    """Rows = data set/model/bits, columns = FP32, paper baselines, our methods (in that order)."""
    check_metric(metric)
    trials = table_trials(source, name)
    n, settings = expected_seeds(trials, seeds), settings_of(trials)
    ours = ours + sorted(set(trials["method_label"]) - set(ours))
    grid = pd.DataFrame([dict(**setting_columns(s), method_label=m, column=m)
                         for s in settings for m in ours])
    mine = aggregate(trials, grid, ["setting", "method_label"], metric, n)
    block = "table10" if name == "table10" else "main"
    parts = [pd.DataFrame(_teacher_cells(trials, settings)),
             pd.DataFrame(_paper_cells(settings, baselines, block)), mine]
    cells = pd.concat([p for p in parts if not p.empty], ignore_index=True)
    order = {c: i for i, c in enumerate(["FP32", *baselines, *ours])}
    cells["_rank"] = [(setting_sort_key(d, m, b), order[c]) for d, m, b, c in
                      zip(cells["dataset"], cells["model"], cells["bits"], cells["column"],
                          strict=True)]
    cells = cells.sort_values("_rank", kind="stable").reset_index(drop=True)
    return trials, n, settings, cells


def _method_lookup(block: str) -> Callable[[pd.Series], tuple | None]:
    def lookup(c: pd.Series) -> tuple | None:
        d, m, b = c.dataset, c.model, c.bits
        if c.kind == "teacher":
            return paper.lookup("fp32", d, m, "32w32a", "FP32")
        if c.method_label == "Extracted Init + Freeze":
            return paper.lookup("table7", d, m, b, "Qimera", freeze=True)
        return paper.lookup(block, d, m, b, c.method_label)
    return lookup


_ROWS = ["dataset", "model", "bits"]


def main_table(source: Results | pd.DataFrame, *, metric: str = "top1",
               seeds: int | None = None, compare_paper: bool = False, alpha: float = ALPHA,
           race: dict | None = None) -> PaperTable:
    """Main results: ZeroQ, ZAQ (paper's values), GDFQ and Qimera per data set, model, bits."""
    trials, n, settings, cells = _method_table("main", source, metric, seeds, compare_paper,
                                               ["GDFQ", "Qimera"], ["ZeroQ", "ZAQ"])
    add_paper(cells, _method_lookup("main"))
    title = make_title("Main results", "data-free quantization accuracy", trials, metric)
    return finish("main", title, trials, cells, _ROWS, {"column": "method"}, _ROWS, metric, n,
                   compare_paper, unrun_paper_rows("main", settings),
                  alpha=alpha, race=race or race_of(source, "main"))


def table7(source: Results | pd.DataFrame, *, metric: str = "top1", seeds: int | None = None,
           compare_paper: bool = False, alpha: float = ALPHA,
           race: dict | None = None) -> PaperTable:
    """Supp. Table 7: the main comparison plus Qimera with extracted, frozen embeddings."""
    trials, n, settings, cells = _method_table(
        "table7", source, metric, seeds, compare_paper,
        ["GDFQ", "Qimera", "Extracted Init + Freeze"], ["ZeroQ", "ZAQ"])
    add_paper(cells, _method_lookup("main"))
    title = make_title("Table 7", "extracted embedding init + freeze vs. trained embeddings",
                   trials, metric)
    return finish("table7", title, trials, cells, _ROWS, {"column": "method"}, _ROWS, metric,
                   n, compare_paper, unrun_paper_rows("table7", settings),
                  alpha=alpha, race=race or race_of(source, "table7"))


def table10(source: Results | pd.DataFrame, *, metric: str = "top1", seeds: int | None = None,
            compare_paper: bool = False, alpha: float = ALPHA,
           race: dict | None = None) -> PaperTable:
    """Supp. Table 10: Qimera vs DSG (DSG's own reported numbers) and Qimera's improvement."""
    trials, n, settings, cells = _method_table("table10", source, metric, seeds, compare_paper,
                                               ["Qimera"], ["DSG"])
    cells = cells[cells["kind"] != "teacher"].reset_index(drop=True)
    add_paper(cells, _method_lookup("table10"))
    cells = pd.concat([cells, _improvement(cells)], ignore_index=True)
    cells = cells.sort_values("_rank", kind="stable").reset_index(drop=True)
    title = make_title("Table 10", "comparison with DSG", trials, metric)
    return finish("table10", title, trials, cells, _ROWS, {"column": "method"}, _ROWS, metric,
                   n, compare_paper, unrun_paper_rows("table10", settings),
                  alpha=alpha, race=race or race_of(source, "table10"))


def _improvement(cells: pd.DataFrame) -> pd.DataFrame:
    """Qimera (ours) minus DSG (paper), per row: the paper's 'improvement' column."""
    q = cells[cells["column"] == "Qimera"].set_index("setting")
    dsg = cells[cells["column"] == "DSG"].set_index("setting")["mean"]
    out = q.copy()
    out["mean"] = q["mean"] - dsg.reindex(q.index)
    out["kind"], out["column"], out["method_label"] = "derived", "Improvement", "Improvement"
    imp = [paper.lookup("table10", r.dataset, r.model, r.bits, "Qimera") for _, r in q.iterrows()]
    dsg = dsg.reindex(q.index)
    out["paper"] = [f[0] - d if f else math.nan for f, d in zip(imp, dsg, strict=True)]
    out["delta"] = out["mean"] - out["paper"]
    out["_rank"] = [(r[0], 99) for r in q["_rank"]]
    return out.reset_index()


TABLE_FUNCTIONS: dict[str, Callable[..., PaperTable]] = {
    "main": main_table, "table6": table6, "table7": table7, "table8": table8,
    "table9": table9, "table10": table10}


def table_name(arg: str) -> str:
    """'9', 'table9' or 'main' -> the table's name; a clear error for anything else."""
    name = arg.strip().lower()
    name = f"table{name}" if name.isdigit() else name
    if name not in TABLE_FUNCTIONS:
        raise AnalysisError(f"unknown table {arg!r}; choose from {', '.join(TABLES)} "
                            "(or just the number, e.g. 9)")
    return name


def make_tables(results: Results, names: list[str] | None = None, **kwargs) -> list[PaperTable]:
    """Every requested table that has trials (all present ones when `names` is None)."""
    present = set().union(*results.trials["tables"]) if not results.trials.empty else set()
    wanted = names or [t for t in TABLES if t in present]
    skipped = sorted(present - set(TABLE_FUNCTIONS))
    if skipped:
        log.info("trials tagged %s have no paper layout; left out of the tables", skipped)
    return [TABLE_FUNCTIONS[t](results, **kwargs) for t in wanted]
