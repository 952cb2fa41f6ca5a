"""The paper's tables from sweep results, laid out from each table's spec
(qimera_core.tablespec): one builder per layout, each returning a PaperTable (see
analysis.cells) whose `frame` is the DataFrame in the paper's layout."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator, Mapping

import pandas as pd

from qimera_core import tablespec
from qimera_core.tablespec import TableSpec

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
from .racelog import RaceLog
from .stats import ALPHA

log = logging.getLogger(__name__)

TABLES = ("main", "table6", "table7", "table8", "table9", "table10")   # the paper's
__all__ = ["METRICS", "PaperTable", "TABLES", "TABLE_FUNCTIONS", "make_tables", "build",
           "table_name"]
_ROWS = ["dataset", "model", "bits"]


# ---- one builder per layout ----------------------------------------------------------------
def keyed(spec: TableSpec, trials: pd.DataFrame) -> pd.DataFrame:
    """The trials with their cell-key columns as the table's cells hold them (the live page
    matches trials to cells with this too)."""
    if spec.layout in ("grid", "levels"):
        return trials.assign(**{a.column: levels_of(trials[a.column]) for a in spec.axes})
    if spec.layout == "sigma":
        return trials.assign(noise_sigma=trials["noise_sigma"].round(6))
    return trials


def levels_of(values: pd.Series) -> pd.Series:
    """An axis's levels as the cells key them: whole numbers as int, others rounded to 1e-6
    (0.1 + 0.2 and 0.3 are one level)."""
    v = pd.to_numeric(values, errors="coerce")
    if v.notna().all() and (v == v.round()).all():
        return v.astype(int)
    return v.round(6)


def _paper_axes(spec: TableSpec, c: pd.Series) -> tuple | None:
    """The paper's number of one grid/levels cell, by the axes that have a paper name."""
    if not spec.paper_block:
        return None
    params = {a.paper: getattr(c, a.column) for a in spec.axes if a.paper}
    return paper.lookup(spec.name, c.dataset, c.model, c.bits, spec.paper_method, **params)


def _paper_levels(spec: TableSpec, theirs: pd.DataFrame, axis) -> set:
    if not axis.paper or axis.paper not in theirs or theirs.empty:
        return set()
    return set(levels_of(theirs[axis.paper].dropna()))


def grid(spec: TableSpec, source: Results | pd.DataFrame, *, metric: str = "top1",
         seeds: int | None = None, compare_paper: bool = False, alpha: float = ALPHA,
         race: RaceLog | None = None) -> PaperTable:
    """Rows = the levels of the second axis, columns = the first's, a block per setting
    (Table 9: K x p)."""
    check_metric(metric)
    cols, rows_axis = spec.axes[0], spec.axes[1]
    trials = keyed(spec, table_trials(source, spec.name))
    n, settings = expected_seeds(trials, seeds), settings_of(trials)
    theirs = paper_rows(spec.name)
    present = pd.concat([rows_of(theirs, s) for s in settings])
    levels = sorted(set(trials[cols.column]) | _paper_levels(spec, present, cols))
    rows = []
    for s in settings:
        ks = set(rows_of(trials, s)[rows_axis.column])
        ks |= _paper_levels(spec, rows_of(theirs, s), rows_axis)
        rows += [{**setting_columns(s), rows_axis.column: k, cols.column: p,
                  "column": cols.fmt.format(p)} for k in sorted(ks) for p in levels]
    cells = aggregate(trials, pd.DataFrame(rows), ["setting", rows_axis.column, cols.column],
                      metric, n)
    add_paper(cells, functools.partial(_paper_axes, spec))
    rename = {rows_axis.column: rows_axis.label, cols.column: cols.label, "column": cols.label}
    title = make_title(spec.title, spec.subtitle, trials, metric)
    return finish(spec.name, title, trials, cells, ["setting", rows_axis.column], rename,
                  ["setting"], metric, n, compare_paper, unrun_paper_rows(spec.name, settings),
                  alpha=alpha, race=race or race_of(source, spec.name))


def _levels_column(s: tuple[str, str, str]) -> str:
    d, m, b = s  # the paper's columns are just the data set (ResNet-20, 4w4a)
    return d if (m, b) == ("ResNet-20", "4w4a") and d in PAPER_DATASETS else " ".join(s)


def levels(spec: TableSpec, source: Results | pd.DataFrame, *, metric: str = "top1",
           seeds: int | None = None, compare_paper: bool = False, alpha: float = ALPHA,
           race: RaceLog | None = None) -> PaperTable:
    """Rows = the levels of the one axis, one column per setting (Table 8: DM layers)."""
    check_metric(metric)
    axis = spec.axes[0]
    trials = keyed(spec, table_trials(source, spec.name))
    n, settings = expected_seeds(trials, seeds), settings_of(trials)
    theirs = paper_rows(spec.name)
    values = sorted(set(trials[axis.column]) | _paper_levels(spec, theirs, axis))
    rows = [{**setting_columns(s), axis.column: v, "column": _levels_column(s)}
            for v in values for s in settings]
    cells = aggregate(trials, pd.DataFrame(rows), ["setting", axis.column], metric, n)
    add_paper(cells, functools.partial(_paper_axes, spec))
    title = make_title(spec.title, spec.subtitle, trials, metric)
    return finish(spec.name, title, trials, cells, [axis.column], {axis.column: axis.label},
                  ["column"], metric, n, compare_paper, unrun_paper_rows(spec.name, settings),
                  alpha=alpha, race=race or race_of(source, spec.name))

def _table6_columns(trials: pd.DataFrame, theirs: pd.DataFrame) -> list[tuple[str, float, str]]:
    gdfq = trials[trials["method_label"] == "GDFQ"]
    sigmas = sorted(set(gdfq["noise_sigma"]) | set(theirs["sigma_z"].dropna().round(6)))
    cols = [("GDFQ", s, f"σ={s:g}") for s in sigmas]
    others = trials.loc[trials["method_label"] != "GDFQ", ["method_label", "noise_sigma"]]
    others = set(map(tuple, others.to_numpy())) | {("Qimera", 1.0)}
    for m, s in sorted(others, key=lambda x: (x[0] != "Qimera", x[0], x[1])):
        cols.append((m, s, m if s == 1.0 else f"{m} σ={s:g}"))
    return cols


def sigma(spec: TableSpec, source: Results | pd.DataFrame, *, metric: str = "top1",
          seeds: int | None = None, compare_paper: bool = False, alpha: float = ALPHA,
          race: RaceLog | None = None) -> PaperTable:
    """GDFQ at noise scale σ (columns) per data set, model, bits; the other methods beside
    (Table 6)."""
    check_metric(metric)
    trials = keyed(spec, table_trials(source, spec.name))
    n, settings = expected_seeds(trials, seeds), settings_of(trials)
    theirs = paper_rows(spec.name)
    cols = _table6_columns(trials, theirs)
    rows = [dict(**setting_columns(s), method_label=m, noise_sigma=sig, column=label)
            for s in settings for m, sig, label in cols]
    cells = aggregate(trials, pd.DataFrame(rows), ["setting", "method_label", "noise_sigma"],
                       metric, n)

    def lookup(c: pd.Series) -> tuple | None:
        if c.method_label == "GDFQ":
            return paper.lookup(spec.name, c.dataset, c.model, c.bits, "GDFQ",
                                sigma_z=c.noise_sigma)
        if c.method_label == "Qimera" and c.noise_sigma == 1.0:
            return paper.lookup(spec.name, c.dataset, c.model, c.bits, "Qimera")
        return None

    add_paper(cells, lookup)
    title = make_title(spec.title, spec.subtitle, trials, metric)
    return finish(spec.name, title, trials, cells, _ROWS, {"column": "method"}, _ROWS, metric,
                  n, compare_paper, unrun_paper_rows(spec.name, settings),
                  alpha=alpha, race=race or race_of(source, spec.name))


def _paper_value(spec: TableSpec, setting: tuple[str, str, str], label: str) -> tuple | None:
    """A method column's paper number: the spec's own paper rows first, then those of the
    tables it also shows (Table 7 shows the main table's)."""
    method, params = spec.paper_methods.get(label, (label, {}))
    for table in (spec.name, *spec.paper_also):
        found = paper.lookup(table, *setting, method, **params)
        if found:
            return found
    return None


def _paper_cells(spec: TableSpec, settings: list) -> list[dict]:
    """A spec's quoted-only baselines (`spec.quoted`, never run; no shipped table has one now):
    the paper's value, or '-' where it has none."""
    out = []
    for s in settings:
        for m in spec.quoted:
            found = _paper_value(spec, s, m)
            out.append(dict(**setting_columns(s), method_label=m, column=m, kind="paper",
                            mean=found[0] if found else math.nan, std=math.nan, n=0,
                            status="paper" if found else "not run",
                            reason="" if found else "baseline not run here; no paper value",
                            gpu_hours=0.0, wall_hours=0.0, mixed=""))
    return out


def _quote_unrun(spec: TableSpec, cells: pd.DataFrame) -> pd.DataFrame:
    """A baseline column of ours (spec.quote_unrun) with no run in a setting shows the paper's
    number there, marked quoted; it competes in bold as the paper's baselines do."""
    for i, c in cells.iterrows():
        if c["method_label"] not in spec.quote_unrun or c["n"] > 0:
            continue
        found = _paper_value(spec, (c["dataset"], c["model"], c["bits"]), c["method_label"])
        if found:
            cells.loc[i, ["kind", "mean", "status", "reason"]] = [
                "paper", found[0], "quoted", "not run here; the paper's number is quoted"]
    return cells


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


def methods(spec: TableSpec, source: Results | pd.DataFrame, *, metric: str = "top1",
            seeds: int | None = None, compare_paper: bool = False, alpha: float = ALPHA,
            race: RaceLog | None = None) -> PaperTable:
    """Rows = data set/model/bits, columns = FP32, the quoted baselines, our methods (in that
    order), and an improvement column where the spec asks for one (Table 10)."""
    check_metric(metric)
    trials = table_trials(source, spec.name)
    n, settings = expected_seeds(trials, seeds), settings_of(trials)
    ours = list(spec.methods) + sorted(set(trials["method_label"]) - set(spec.methods))
    grid_ = pd.DataFrame([dict(**setting_columns(s), method_label=m, column=m)
                          for s in settings for m in ours])
    mine = _quote_unrun(spec, aggregate(trials, grid_, ["setting", "method_label"], metric, n))
    parts = [pd.DataFrame(_teacher_cells(trials, settings)) if spec.teacher_column
             else pd.DataFrame(), pd.DataFrame(_paper_cells(spec, settings)), mine]
    cells = pd.concat([p for p in parts if not p.empty], ignore_index=True)
    # the paper's order: FP32, the baselines (ours that may be quoted, then quoted only), ours
    first = [m for m in ours if m in spec.quote_unrun]
    order = {c: i for i, c in enumerate(["FP32", *first, *spec.quoted,
                                         *(m for m in ours if m not in first)])}
    cells["_rank"] = [(setting_sort_key(d, m, b), order[c]) for d, m, b, c in
                      zip(cells["dataset"], cells["model"], cells["bits"], cells["column"],
                          strict=True)]
    cells = cells.sort_values("_rank", kind="stable").reset_index(drop=True)

    def lookup(c: pd.Series) -> tuple | None:
        if c.kind == "teacher":
            return paper.lookup("fp32", c.dataset, c.model, "32w32a", "FP32")
        return _paper_value(spec, (c.dataset, c.model, c.bits), c.method_label)

    add_paper(cells, lookup)
    if spec.improvement_over:
        cells = pd.concat([cells, _improvement(spec, cells)], ignore_index=True)
        cells = cells.sort_values("_rank", kind="stable").reset_index(drop=True)
    title = make_title(spec.title, spec.subtitle, trials, metric)
    return finish(spec.name, title, trials, cells, _ROWS, {"column": "method"}, _ROWS, metric,
                  n, compare_paper, unrun_paper_rows(spec.name, settings),
                  alpha=alpha, race=race or race_of(source, spec.name))


def _improvement(spec: TableSpec, cells: pd.DataFrame) -> pd.DataFrame:
    """Our first method (ours) minus the baseline (paper), per row: the paper's 'improvement'
    column."""
    base, mine = spec.improvement_over, spec.methods[0]
    q = cells[cells["column"] == mine].set_index("setting")
    other = cells[cells["column"] == base].set_index("setting")["mean"]
    out = q.copy()
    out["mean"] = q["mean"] - other.reindex(q.index)
    out["kind"], out["column"], out["method_label"] = "derived", "Improvement", "Improvement"
    imp = [paper.lookup(spec.name, r.dataset, r.model, r.bits, mine) for _, r in q.iterrows()]
    other = other.reindex(q.index)
    out["paper"] = [f[0] - d if f else math.nan for f, d in zip(imp, other, strict=True)]
    out["delta"] = out["mean"] - out["paper"]
    out["_rank"] = [(r[0], 99) for r in q["_rank"]]
    return out.reset_index()


LAYOUT_BUILDERS: dict[str, Callable[..., PaperTable]] = {
    "grid": grid, "levels": levels, "sigma": sigma, "methods": methods}


def build(name: str, source: Results | pd.DataFrame, **kwargs) -> PaperTable:
    """The registered table `name` from `source`, laid out by its spec's layout."""
    spec = tablespec.get(name)
    return LAYOUT_BUILDERS[spec.layout](spec, source, **kwargs)


class _Functions(Mapping[str, Callable[..., PaperTable]]):
    """TABLE_FUNCTIONS["table9"](source, ...): every registered table, as the registry stands
    when asked (a table registered later is in it)."""

    def __getitem__(self, name: str) -> Callable[..., PaperTable]:
        if name not in tablespec.names():
            raise KeyError(name)
        return functools.partial(build, name)

    def __iter__(self) -> Iterator[str]:
        return iter(tablespec.names())

    def __len__(self) -> int:
        return len(tablespec.names())


TABLE_FUNCTIONS: Mapping[str, Callable[..., PaperTable]] = _Functions()


def table_name(arg: str) -> str:
    """'9', 'table9' or 'main' -> the table's name; a clear error for anything else."""
    name = arg.strip().lower()
    name = f"table{name}" if name.isdigit() else name
    if name not in tablespec.names():
        raise AnalysisError(f"unknown table {arg!r}; choose from "
                            f"{', '.join(tablespec.names())} (or just the number, e.g. 9)")
    return name


def make_tables(results: Results, names: list[str] | None = None, **kwargs) -> list[PaperTable]:
    """Every requested table that has trials (all present ones when `names` is None)."""
    present = set().union(*results.trials["tables"]) if not results.trials.empty else set()
    known = tablespec.names()
    wanted = names or [t for t in known if t in present]
    skipped = sorted(present - set(known))
    if skipped:
        log.info("trials tagged %s have no table spec; left out of the tables", skipped)
    return [build(t, results, **kwargs) for t in wanted]
