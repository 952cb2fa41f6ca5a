"""The paper's tables from sweep results: one function per table, each returning a PaperTable.

A PaperTable's `frame` is the DataFrame in the paper's layout (cell text "mean ± std", "-" for
a missing cell); `bold` marks the cells the paper would set in bold; `cells` holds the same
cells in long form with the numbers (mean, std, n, paper value, Δ, cost), which is what the
CSV keeps; `notes` explain every gap.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from qimera_core.config import FIELD_NAMES, RUN_ONLY_FIELDS

from . import paper
from .load import (
    PAPER_DATASETS,
    AnalysisError,
    Results,
    add_labels,
    dedupe_trials,
    in_table,
    setting_sort_key,
)

log = logging.getLogger(__name__)

METRICS = {"top1": "final top-1 (%)",
           "best_top1": "best-epoch top-1 (%), epoch chosen on the test set (optimistic; "
                        "not the final accuracy)"}
TABLES = ("main", "table6", "table7", "table8", "table9", "table10")
# Fields that may differ between the seeds of one cell without making it a different cell.
_FREE_FIELDS = {"seed", "teacher_weights", "eval_data", *RUN_ONLY_FIELDS}
_COMPARED_FIELDS = sorted(FIELD_NAMES - _FREE_FIELDS)


@dataclass
class PaperTable:
    """One rendered table; `frame` is the paper layout, `cells` the numbers behind it."""

    name: str
    title: str
    frame: pd.DataFrame
    bold: pd.DataFrame
    cells: pd.DataFrame
    metric: str
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"{self.title}\n{self.frame.to_string()}"


# ---- shared machinery ----------------------------------------------------------------------
def _trials(source: Results | pd.DataFrame, name: str) -> pd.DataFrame:
    df = source.trials if isinstance(source, Results) else source
    if "setting" not in df.columns:  # raw rows (tests, paper_trials): dedupe and label here
        df = add_labels(dedupe_trials(df))
    picked = in_table(df, name)
    if picked.empty:
        present = sorted({t for ts in df.get("tables", df["table"]) for t in
                          (ts if isinstance(ts, frozenset) else [ts])})
        raise AnalysisError(f"no trials for {name} in these results (tables present: "
                            f"{present or 'none'}); run python -m sweeps.{name} first")
    return picked.copy()


def _expected_seeds(trials: pd.DataFrame, seeds: int | None) -> int:
    if seeds is not None:
        if seeds < 1:
            raise AnalysisError(f"--seeds must be >= 1, got {seeds}")
        return seeds
    return max(1, int(trials["seed"].nunique()))


def _problems(bad: pd.DataFrame) -> str:
    """'error (seeds 1, 2): CUDA out of memory; diverged (seed 0)' for a cell's failed rows."""
    parts = []
    groups = sorted(bad.groupby(["status", "error"]), key=lambda kv: kv[1]["seed"].min())
    for (status, msg), g in groups:
        seeds = ", ".join(str(int(s)) for s in sorted(g["seed"]))
        first = str(msg).strip().splitlines()[0][:120] if str(msg).strip() else ""
        word = "seeds" if len(g) > 1 else "seed"
        parts.append(f"{status} ({word} {seeds})" + (f": {first}" if first else ""))
    return "; ".join(parts)


def _cell_stats(g: pd.DataFrame | None, metric: str, seeds: int) -> dict:
    if g is None or g.empty:
        return dict(mean=math.nan, std=math.nan, n=0, status="not run", reason="not run",
                    gpu_hours=0.0, wall_hours=0.0, mixed="")
    ok = g[(g["status"] == "ok") & g[metric].notna()]
    vals, n = ok[metric].astype(float), len(ok)
    bad = g[g["status"] != "ok"]
    problems = _problems(bad)
    if n >= seeds:
        status, reason = "ok", problems
    elif n:
        status, reason = "partial", f"n={n} of {seeds}" + (f"; {problems}" if problems else "")
    else:
        status = "error" if (bad["status"] == "error").any() else (
            "diverged" if len(bad) else "no value")
        reason = problems or f"ok rows but {metric} is missing"
    mixed = [f for f in _COMPARED_FIELDS if f in ok and ok[f].astype(str).nunique() > 1]
    return dict(mean=vals.mean() if n else math.nan,
                std=vals.std(ddof=1) if n > 1 else math.nan, n=n, status=status,
                reason=reason, gpu_hours=g["gpu_seconds"].fillna(0).sum() / 3600,
                wall_hours=g["wall_time_s"].fillna(0).sum() / 3600, mixed=", ".join(mixed))


def _aggregate(keyed: pd.DataFrame, grid: pd.DataFrame, keys: list[str], metric: str,
               seeds: int) -> pd.DataFrame:
    """One row per grid cell: the grid's columns plus the statistics of the matching trials."""
    groups = {k: g for k, g in keyed.groupby(keys, sort=False, dropna=False)}
    stats = [_cell_stats(groups.get(k), metric, seeds)
             for k in grid[keys].itertuples(index=False, name=None)]
    cells = pd.concat([grid.reset_index(drop=True), pd.DataFrame(stats)], axis=1)
    cells["kind"] = cells.get("kind", pd.Series("ours", index=cells.index)).fillna("ours")
    return cells


def _add_paper(cells: pd.DataFrame, paper_fn: Callable[[pd.Series], tuple | None]) -> None:
    found = [paper_fn(c) for _, c in cells.iterrows()]
    cells["paper"] = [f[0] if f else math.nan for f in found]
    cells["paper_flag"] = [f[1] if f else "" for f in found]
    cells["delta"] = cells["mean"] - cells["paper"]


def _mark_bold(cells: pd.DataFrame, by: list[str]) -> None:
    """Bold the best displayed value (2 decimals, ties all bold) within each `by` group."""
    eligible = cells["kind"].isin(["ours", "paper"]) & cells["mean"].notna()
    vals = cells["mean"].where(eligible).round(2)
    best = vals.groupby([cells[c] for c in by], sort=False, dropna=False).transform("max")
    cells["bold"] = (eligible & vals.eq(best)).astype(bool)


def _text(c: pd.Series, seeds: int, compare: bool) -> str:
    if c["kind"] == "paper":
        dagger = "†" if c["paper_flag"] == "no_converge" else ""
        return f"{c['mean']:.2f}{dagger} (paper)" if not math.isnan(c["mean"]) else "-"
    if math.isnan(c["mean"]):
        return "-"
    if c["kind"] == "derived":
        return f"{c['mean']:+.2f}"
    text = f"{c['mean']:.2f}"
    if c["kind"] == "ours":
        if c["n"] > 1:
            text += f" ± {c['std']:.2f}"
        if c["n"] < seeds:
            text += f" (n={int(c['n'])})"
    if compare and not math.isnan(c["paper"]):
        text += f" [paper {c['paper']:.2f}, Δ {c['delta']:+.2f}]"
    return text


def _layout(cells: pd.DataFrame, index: list[str], rename: dict[str, str]
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = cells[index].drop_duplicates()
    row_index = pd.MultiIndex.from_frame(rows) if len(index) > 1 else pd.Index(rows[index[0]])
    cols = list(dict.fromkeys(cells["column"]))
    out = []
    for values in ("text", "bold"):
        wide = cells.pivot(index=index if len(index) > 1 else index[0], columns="column",
                           values=values)
        wide = wide.reindex(index=row_index, columns=cols)
        wide = wide.fillna("" if values == "text" else False)
        wide.index = wide.index.set_names([rename.get(i, i) for i in index])
        wide.columns.name = rename.get("column", "")
        out.append(wide)
    return out[0], out[1].astype(bool)


def _label(c: pd.Series, index: list[str], rename: dict[str, str], column: bool = True) -> str:
    """'CIFAR-100 ResNet-20 4w4a, K=10, p=0.40' or 'CIFAR-10 ResNet-20 5w5a, GDFQ'."""
    words = [str(c[k]) for k in index if isinstance(c[k], str)]
    parts = [" ".join(words)] if words else []
    parts += [f"{rename.get(k, k)}={c[k]:g}" for k in index if not isinstance(c[k], str)]
    if column:
        parts.append(_column_label(c["column"], rename))
    return ", ".join(parts)


def _column_label(value: str, rename: dict[str, str]) -> str:
    name = rename.get("column", "")
    return f"{name}={value}" if name and name != "method" else value


def _not_run_notes(cells: pd.DataFrame, index: list[str], rename: dict[str, str]) -> list[str]:
    """One line per table row: 'K=25: not run' or 'K=2: not run at p=0.25, 0.55'."""
    notes = []
    for _, row in cells.groupby(index, sort=False):
        missing = row[(row["status"] == "not run") & (row["kind"] == "ours")]
        if missing.empty:
            continue
        label = _label(missing.iloc[0], index, rename, column=False)
        if len(missing) == (row["kind"] == "ours").sum():
            notes.append(f"{label}: not run")
        elif rename.get("column", "") in ("", "method"):
            notes.append(f"{label}: {', '.join(missing['column'])} not run")
        else:
            cols = ", ".join(missing["column"])
            notes.append(f"{label}: not run at {_column_label(cols, rename)}")
    return notes


def _notes(cells: pd.DataFrame, trials: pd.DataFrame, index: list[str], rename: dict[str, str],
           metric: str, unrun: list[str]) -> list[str]:
    notes = _data_notes(trials)
    if metric != "top1":
        notes.append(f"Cells are {METRICS[metric]}.")
    if (cells["kind"] == "paper").any():
        notes.append("(paper): a baseline we do not run; the value is the paper's.")
    gaps = ~cells["status"].isin(["ok", "paper"]) & cells["kind"].isin(["ours", "paper"])
    gaps &= ~((cells["status"] == "not run") & (cells["kind"] == "ours"))
    for _, c in cells[gaps].iterrows():
        notes.append(f"{_label(c, index, rename)}: {c['reason']}")
    notes.extend(_not_run_notes(cells, index, rename))
    for _, c in cells[(cells["status"] == "ok") & (cells["reason"] != "")].iterrows():
        notes.append(f"{_label(c, index, rename)}: also {c['reason']}")
    for _, c in cells[cells["mixed"] != ""].iterrows():
        notes.append(f"{_label(c, index, rename)}: seeds differ in {c['mixed']} (pooled anyway)")
    if unrun and trials["paper_setting"].any():  # smoke data is not meant to cover the paper
        notes.append(f"Paper rows not run here: {'; '.join(unrun)}")
    return notes


def _data_notes(trials: pd.DataFrame) -> list[str]:
    """Say loudly when results are not paper settings or use a shortened schedule."""
    notes = []
    other = sorted(set(trials.loc[~trials["paper_setting"], "dataset"]))
    if other:
        notes.append(f"NOT PAPER RESULTS: {', '.join(other)} data (offline smoke/pipeline "
                     "check); such rows have no paper counterpart.")
    epochs = sorted({int(e) for e in trials["epochs"]})
    if epochs != [paper.PAPER_EPOCHS]:
        notes.append(f"Schedule: epochs {epochs} (paper: {paper.PAPER_EPOCHS}); steps per epoch "
                     f"{sorted({int(s) for s in trials['steps_per_epoch']})} (paper: 200).")
    return notes


def _title(number: str, caption: str, trials: pd.DataFrame, metric: str) -> str:
    title = f"{number}: {caption}. {METRICS[metric][0].upper()}{METRICS[metric][1:]}"
    if not trials["paper_setting"].all():
        title += " — offline digits/smoke data, not paper results"
    return title


def _finish(name: str, title: str, trials: pd.DataFrame, cells: pd.DataFrame,
            index: list[str], rename: dict[str, str], bold_by: list[str], metric: str,
            seeds: int, compare: bool, unrun: list[str]) -> PaperTable:
    _mark_bold(cells, bold_by)
    cells["text"] = [_text(c, seeds, compare) for _, c in cells.iterrows()]
    cells.insert(0, "table", name)
    cells["metric"], cells["seeds"] = metric, seeds
    frame, bold = _layout(cells, index, rename)
    notes = _notes(cells, trials, index, rename, metric, unrun)
    return PaperTable(name=name, title=title, frame=frame, bold=bold,
                      cells=cells.drop(columns=[c for c in cells if c.startswith("_")]),
                      metric=metric, notes=notes)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise AnalysisError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")


def _settings(trials: pd.DataFrame) -> list[tuple[str, str, str]]:
    keys = set(zip(trials["dataset"], trials["model"], trials["bits"], strict=True))
    return sorted(keys, key=lambda k: setting_sort_key(*k))


def _unrun(block: str, present: list[tuple[str, str, str]]) -> list[str]:
    """Settings the paper reports in this block that have no trial here."""
    p = paper.paper_tables()
    p = p[(p["table"] == paper.PAPER_BLOCKS[block]) & (p["method"].isin(["Qimera", "GDFQ"]))]
    wanted = dict.fromkeys(zip(p["dataset"], p["model"], p["bits"], strict=True))
    return [" ".join(k) for k in wanted if k not in present]


def _paper_rows(block: str) -> pd.DataFrame:
    p = paper.paper_tables()
    return p[p["table"] == paper.PAPER_BLOCKS[block]]


def _of(df: pd.DataFrame, setting: tuple[str, str, str]) -> pd.DataFrame:
    d, m, b = setting
    return df[(df["dataset"] == d) & (df["model"] == m) & (df["bits"] == b)]


def _setting_cols(setting: tuple[str, str, str]) -> dict[str, str]:
    d, m, b = setting
    return dict(setting=f"{d} {m} {b}", dataset=d, model=m, bits=b)


# ---- the tables ----------------------------------------------------------------------------
def table9(source: Results | pd.DataFrame, *, metric: str = "top1", seeds: int | None = None,
           compare_paper: bool = False) -> PaperTable:
    """Supp. Table 9: accuracy vs K (rows) and p (columns), one block per dataset/model/bits."""
    _check_metric(metric)
    trials = _trials(source, "table9")
    trials["mix_prob"] = trials["mix_prob"].round(6)
    n, settings, theirs = _expected_seeds(trials, seeds), _settings(trials), _paper_rows("table9")
    present = pd.concat([_of(theirs, s) for s in settings])
    ps = sorted(set(trials["mix_prob"]) | set(present["p"].round(6)))
    rows = []
    for s in settings:
        ks = set(_of(trials, s)["mix_classes"].astype(int)) | set(_of(theirs, s)["K"].astype(int))
        rows += [dict(**_setting_cols(s), mix_classes=k, mix_prob=p, column=f"{p:.2f}")
                 for k in sorted(ks) for p in ps]
    cells = _aggregate(trials, pd.DataFrame(rows), ["setting", "mix_classes", "mix_prob"],
                       metric, n)
    _add_paper(cells, lambda c: paper.lookup("table9", c.dataset, c.model, c.bits, "Qimera",
                                             K=c.mix_classes, p=c.mix_prob))
    rename = {"mix_classes": "K", "mix_prob": "p", "column": "p"}
    title = _title("Table 9", "accuracy vs. superposition probability p and classes per "
                   "sample K (Qimera)", trials, metric)
    return _finish("table9", title, trials, cells, ["setting", "mix_classes"], rename,
                   ["setting"], metric, n, compare_paper, _unrun("table9", settings))


def _table8_column(s: tuple[str, str, str]) -> str:
    d, m, b = s  # the paper's columns are just the data set (ResNet-20, 4w4a)
    return d if (m, b) == ("ResNet-20", "4w4a") and d in PAPER_DATASETS else " ".join(s)


def table8(source: Results | pd.DataFrame, *, metric: str = "top1", seeds: int | None = None,
           compare_paper: bool = False) -> PaperTable:
    """Supp. Table 8: accuracy vs number of DM layers (rows), one column per data set."""
    _check_metric(metric)
    trials = _trials(source, "table8")
    n, settings, theirs = _expected_seeds(trials, seeds), _settings(trials), _paper_rows("table8")
    dms = sorted(set(trials["dm_layers"].astype(int)) | set(theirs["dm_layers"].astype(int)))
    rows = [dict(**_setting_cols(s), dm_layers=dm, column=_table8_column(s))
            for dm in dms for s in settings]
    cells = _aggregate(trials, pd.DataFrame(rows), ["setting", "dm_layers"], metric, n)
    _add_paper(cells, lambda c: paper.lookup("table8", c.dataset, c.model, c.bits, "Qimera",
                                             dm_layers=c.dm_layers))
    title = _title("Table 8", "accuracy vs. number of disentanglement-mapping (DM) layers",
                   trials, metric)
    return _finish("table8", title, trials, cells, ["dm_layers"], {"dm_layers": "DM layers"},
                   ["column"], metric, n, compare_paper, _unrun("table8", settings))


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
           compare_paper: bool = False) -> PaperTable:
    """Supp. Table 6: GDFQ at noise scale σ (columns) per data set, model, bits; Qimera beside."""
    _check_metric(metric)
    trials = _trials(source, "table6")
    trials["noise_sigma"] = trials["noise_sigma"].round(6)
    n, settings, theirs = _expected_seeds(trials, seeds), _settings(trials), _paper_rows("table6")
    cols = _table6_columns(trials, theirs)
    rows = [dict(**_setting_cols(s), method_label=m, noise_sigma=sig, column=label)
            for s in settings for m, sig, label in cols]
    cells = _aggregate(trials, pd.DataFrame(rows), ["setting", "method_label", "noise_sigma"],
                       metric, n)

    def lookup(c: pd.Series) -> tuple | None:
        if c.method_label == "GDFQ":
            return paper.lookup("table6", c.dataset, c.model, c.bits, "GDFQ", sigma_z=c.noise_sigma)
        if c.method_label == "Qimera" and c.noise_sigma == 1.0:
            return paper.lookup("table6", c.dataset, c.model, c.bits, "Qimera")
        return None

    _add_paper(cells, lookup)
    title = _title("Table 6", "GDFQ accuracy vs. noise scale σ, with Qimera for reference",
                   trials, metric)
    return _finish("table6", title, trials, cells, ["dataset", "model", "bits"],
                   {"column": "method"}, ["dataset", "model", "bits"], metric, n,
                   compare_paper, _unrun("table6", settings))


def _paper_cells(settings: list, methods: list[str], block: str) -> list[dict]:
    """Baselines we do not run (ZeroQ, ZAQ, DSG): the paper's value, or '-' where it has none."""
    out = []
    for s in settings:
        for m in methods:
            found = paper.lookup(block, *s, m)
            out.append(dict(**_setting_cols(s), method_label=m, column=m, kind="paper",
                            mean=found[0] if found else math.nan, std=math.nan, n=0,
                            status="paper" if found else "not run",
                            reason="" if found else "baseline not run here; no paper value",
                            gpu_hours=0.0, wall_hours=0.0, mixed=""))
    return out


def _teacher_cells(trials: pd.DataFrame, settings: list) -> list[dict]:
    """FP32 column: the teacher's own accuracy, as the trials measured it."""
    out = []
    for s in settings:
        vals = _of(trials, s)["teacher_top1"].dropna()
        out.append(dict(**_setting_cols(s), method_label="FP32", column="FP32", kind="teacher",
                        mean=vals.mean() if len(vals) else math.nan, std=math.nan, n=len(vals),
                        status="ok" if len(vals) else "not run", reason="", gpu_hours=0.0,
                        wall_hours=0.0, mixed=""))
    return out


def _method_table(name: str, source: Results | pd.DataFrame, metric: str, seeds: int | None,
                  compare: bool, ours: list[str], baselines: list[str]) -> tuple:
    """Rows = data set/model/bits, columns = FP32, paper baselines, our methods (in that order)."""
    _check_metric(metric)
    trials = _trials(source, name)
    n, settings = _expected_seeds(trials, seeds), _settings(trials)
    ours = ours + sorted(set(trials["method_label"]) - set(ours))
    grid = pd.DataFrame([dict(**_setting_cols(s), method_label=m, column=m)
                         for s in settings for m in ours])
    mine = _aggregate(trials, grid, ["setting", "method_label"], metric, n)
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
               seeds: int | None = None, compare_paper: bool = False) -> PaperTable:
    """Main results: ZeroQ, ZAQ (paper's values), GDFQ and Qimera per data set, model, bits."""
    trials, n, settings, cells = _method_table("main", source, metric, seeds, compare_paper,
                                               ["GDFQ", "Qimera"], ["ZeroQ", "ZAQ"])
    _add_paper(cells, _method_lookup("main"))
    title = _title("Main results", "data-free quantization accuracy", trials, metric)
    return _finish("main", title, trials, cells, _ROWS, {"column": "method"}, _ROWS, metric, n,
                   compare_paper, _unrun("main", settings))


def table7(source: Results | pd.DataFrame, *, metric: str = "top1", seeds: int | None = None,
           compare_paper: bool = False) -> PaperTable:
    """Supp. Table 7: the main comparison plus Qimera with extracted, frozen embeddings."""
    trials, n, settings, cells = _method_table(
        "table7", source, metric, seeds, compare_paper,
        ["GDFQ", "Qimera", "Extracted Init + Freeze"], ["ZeroQ", "ZAQ"])
    _add_paper(cells, _method_lookup("main"))
    title = _title("Table 7", "extracted embedding init + freeze vs. trained embeddings",
                   trials, metric)
    return _finish("table7", title, trials, cells, _ROWS, {"column": "method"}, _ROWS, metric,
                   n, compare_paper, _unrun("table7", settings))


def table10(source: Results | pd.DataFrame, *, metric: str = "top1", seeds: int | None = None,
            compare_paper: bool = False) -> PaperTable:
    """Supp. Table 10: Qimera vs DSG (DSG's own reported numbers) and Qimera's improvement."""
    trials, n, settings, cells = _method_table("table10", source, metric, seeds, compare_paper,
                                               ["Qimera"], ["DSG"])
    cells = cells[cells["kind"] != "teacher"].reset_index(drop=True)
    _add_paper(cells, _method_lookup("table10"))
    cells = pd.concat([cells, _improvement(cells)], ignore_index=True)
    cells = cells.sort_values("_rank", kind="stable").reset_index(drop=True)
    title = _title("Table 10", "comparison with DSG", trials, metric)
    return _finish("table10", title, trials, cells, _ROWS, {"column": "method"}, _ROWS, metric,
                   n, compare_paper, _unrun("table10", settings))


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
