"""The cells behind a paper table: seeds aggregated into mean ± std, the paper's value, the bold
cell, the cell text, the paper layout, and notes that explain every gap.

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

from qimera_core.config import FIELD_NAMES, PTQ_METHODS, RUN_ONLY_FIELDS

from . import paper, raced, stats
from .load import (
    AnalysisError,
    Results,
    add_labels,
    dedupe_trials,
    in_table,
    setting_sort_key,
)
from .racelog import RaceLog

log = logging.getLogger(__name__)

TOP_MARK = "▲"   # the cell with the best mean; bold = could be the best (stats.ties)
METRICS = {"top1": "final top-1 (%)",
           "best_top1": "best-epoch top-1 (%), epoch chosen on the test set (optimistic; "
                        "not the final accuracy)"}
# Fields that may differ between the seeds of one cell without making it a different cell.
_FREE_FIELDS = {"seed", "teacher_weights", "eval_data", *RUN_ONLY_FIELDS}
COMPARED_FIELDS = sorted(FIELD_NAMES - _FREE_FIELDS)
# Statistics columns of a cell, left out of its `samples` rows.
_STAT_COLUMNS = {"mean", "std", "n", "ci_low", "ci_high", "status", "reason", "gpu_hours",
                 "wall_hours", "mixed", "final_mean", "best_mean", "best_ci_low", "best_ci_high",
                 "text", "bold", "top", "tie_p", "tie_test", "race_out", "paper", "paper_flag",
                 "delta", "delta_final", "paper_in_ci", "metric", "seeds"}


@dataclass
class PaperTable:
    """One rendered table; `frame` is the paper layout, `cells` the numbers behind it, `bold`
    the cells that could be their block's best (stats.ties), `top` the best mean."""

    name: str
    title: str
    frame: pd.DataFrame
    bold: pd.DataFrame
    cells: pd.DataFrame
    metric: str
    notes: list[str] = field(default_factory=list)
    top: pd.DataFrame = field(default_factory=pd.DataFrame)   # the best mean of each block
    # one row per finished run of our cells (cell columns, seed, value, start): analysis.effects
    samples: pd.DataFrame = field(default_factory=pd.DataFrame)
    alpha: float = stats.ALPHA
    race: RaceLog | None = None          # the race that chose its seeds, if it was raced

    def __repr__(self) -> str:
        return f"{self.title}\n{self.frame.to_string()}"


def table_trials(source: Results | pd.DataFrame, name: str) -> pd.DataFrame:
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


def expected_seeds(trials: pd.DataFrame, seeds: int | None) -> int:
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
        return dict(mean=math.nan, std=math.nan, n=0, ci_low=math.nan, ci_high=math.nan,
                    status="not run", reason="not run", gpu_hours=0.0, wall_hours=0.0,
                    mixed="", final_mean=math.nan, best_mean=math.nan, best_ci_low=math.nan,
                    best_ci_high=math.nan, _samples={}, _starts={}, _hashes=frozenset())
    ok = g[(g["status"] == "ok") & g[metric].notna()]
    vals, n = ok[metric].astype(float), len(ok)
    bad = g[g["status"] != "ok"]
    problems = _problems(bad)
    if n >= seeds:
        status, reason = "ok", problems
    elif n:
        status, reason = "partial", f"n={n} of {seeds}" + (f"; {problems}" if problems else "")
    else:
        status = next((s for s in ("error", "diverged", "stopped") if (bad["status"] == s).any()),
                      "no value")
        reason = problems or f"ok rows but {metric} is missing"
    mixed = [f for f in COMPARED_FIELDS if f in ok and ok[f].astype(str).nunique() > 1]
    lo, hi = stats.t_interval(vals.tolist())
    best_lo, best_hi = stats.t_interval(ok["best_top1"].astype(float).tolist())
    return dict(mean=vals.mean() if n else math.nan,
                std=vals.std(ddof=1) if n > 1 else math.nan, n=n, ci_low=lo, ci_high=hi,
                status=status, reason=reason, gpu_hours=g["gpu_seconds"].fillna(0).sum() / 3600,
                wall_hours=g["wall_time_s"].fillna(0).sum() / 3600, mixed=", ".join(mixed),
                # Both, whatever the cell shows: Δ to the paper compares best epoch with best.
                final_mean=ok["top1"].mean() if n else math.nan,
                best_mean=ok["best_top1"].mean() if n else math.nan,
                best_ci_low=best_lo, best_ci_high=best_hi,
                # seed -> value (and start accuracy): the ties and the statistics file use them
                _samples=dict(zip(ok["seed"].astype(int), vals, strict=True)),
                _hashes=frozenset(g["config_hash"]),
                _starts=dict(zip(ok["seed"].astype(int), ok["start_top1"].astype(float),
                                 strict=True)))


def aggregate(keyed: pd.DataFrame, grid: pd.DataFrame, keys: list[str], metric: str,
               seeds: int) -> pd.DataFrame:
    """One row per grid cell: the grid's columns plus the statistics of the matching trials."""
    groups = {k: g for k, g in keyed.groupby(keys, sort=False, dropna=False)}
    stats = [_cell_stats(groups.get(k), metric, seeds)
             for k in grid[keys].itertuples(index=False, name=None)]
    cells = pd.concat([grid.reset_index(drop=True), pd.DataFrame(stats)], axis=1)
    cells["kind"] = cells.get("kind", pd.Series("ours", index=cells.index)).fillna("ours")
    return cells


def add_paper(cells: pd.DataFrame, paper_fn: Callable[[pd.Series], tuple | None]) -> None:
    found = [paper_fn(c) for _, c in cells.iterrows()]
    cells["paper"] = [f[0] if f else math.nan for f in found]
    cells["paper_flag"] = [f[1] if f else "" for f in found]
    # The paper reports the official code's best test epoch, so our cells are compared by their
    # best-epoch mean (`delta`); `delta_final` is the final epoch's, for the record.
    ours = cells["kind"].eq("ours")
    best = cells["best_mean"] if "best_mean" in cells else cells["mean"]
    final = cells["final_mean"] if "final_mean" in cells else cells["mean"]
    cells["delta"] = cells["mean"].where(~ours, best) - cells["paper"]
    cells["delta_final"] = cells["mean"].where(~ours, final) - cells["paper"]
    # Whether the paper's value lies inside our best-epoch 95 % interval (the paper reports the
    # best epoch); empty where either is missing (n = 1 has no interval).
    lo = cells["best_ci_low"] if "best_ci_low" in cells else pd.Series(math.nan, cells.index)
    hi = cells["best_ci_high"] if "best_ci_high" in cells else pd.Series(math.nan, cells.index)
    known = ours & cells["paper"].notna() & lo.notna()
    inside = (cells["paper"] >= lo) & (cells["paper"] <= hi)
    cells["paper_in_ci"] = inside.where(known).map({True: "yes", False: "no"}).fillna("")


def _mark_ties(cells: pd.DataFrame, by: list[str], alpha: float) -> None:
    """Within each `by` group: `top` marks the best mean; `bold` marks every cell that could be
    the best at level `alpha` for the whole group: no other cell is above it by the
    simultaneous bounds of analysis.stats.ties (paired by seed and pooled over the group's
    seed-blocked model, Bonferroni over the ordered pairs). Our cells compete with their seeds,
    the paper's baselines with their reported number."""
    for col, default in (("top", False), ("bold", False), ("tie_p", math.nan),
                         ("tie_test", "")):
        cells[col] = default
    cells["tie_p"] = cells["tie_p"].astype(float)
    eligible = cells["kind"].isin(["ours", "paper"]) & cells["mean"].notna()
    for _, group in cells[eligible].groupby([cells[c] for c in by], sort=False, dropna=False):
        contenders = {i: (c["_samples"] if c["kind"] == "ours" else float(c["mean"]))
                      for i, c in group.iterrows()}
        verdict = stats.ties(contenders, alpha)
        for i, v in verdict.iterrows():
            cells.at[i, "top"], cells.at[i, "bold"] = bool(v["best"]), bool(v["tied"])
            cells.at[i, "tie_p"] = float(v["p"]) if pd.notna(v["p"]) else math.nan
            cells.at[i, "tie_test"] = str(v["test"]) if pd.notna(v["test"]) else ""
    cells["top"], cells["bold"] = cells["top"].astype(bool), cells["bold"].astype(bool)


def _text(c: pd.Series, seeds: int, compare: bool) -> str:
    if c["kind"] == "paper":
        dagger = "†" if c["paper_flag"] == "no_converge" else ""
        source = "quoted" if c["status"] == "quoted" else "paper"
        return f"{c['mean']:.2f}{dagger} ({source})" if not math.isnan(c["mean"]) else "-"
    if math.isnan(c["mean"]):
        return "-"
    if c["kind"] == "derived":
        return f"{c['mean']:+.2f}"
    text = f"{c['mean']:.2f}"
    if c["kind"] == "ours":
        if c["n"] > 1:
            text += f" ± {c['std']:.2f}"
        if c.get("race_out", ""):
            text += f" ({c['race_out']}, n={int(c['n'])})"
        elif c["n"] < seeds:
            text += f" (n={int(c['n'])})"
    if compare and not math.isnan(c["paper"]):
        if c["kind"] == "ours" and c["metric"] == "top1":  # the cell is final, the paper best
            text += (f" [paper {c['paper']:.2f} (best epoch); Δ best-epoch {c['delta']:+.2f}, "
                     f"Δ final {c['delta_final']:+.2f}]")
        else:
            text += f" [paper {c['paper']:.2f}, Δ {c['delta']:+.2f}]"
    return text


def _layout(cells: pd.DataFrame, index: list[str], rename: dict[str, str]
            ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rows = cells[index].drop_duplicates()
    row_index = pd.MultiIndex.from_frame(rows) if len(index) > 1 else pd.Index(rows[index[0]])
    cols = list(dict.fromkeys(cells["column"]))
    out = []
    for values in ("text", "bold", "top"):
        wide = cells.pivot(index=index if len(index) > 1 else index[0], columns="column",
                           values=values)
        wide = wide.reindex(index=row_index, columns=cols)
        wide = wide.fillna("" if values == "text" else False)
        wide.index = wide.index.set_names([rename.get(i, i) for i in index])
        wide.columns.name = rename.get("column", "")
        out.append(wide)
    return out[0], out[1].astype(bool), out[2].astype(bool)


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


def tie_note(cells: pd.DataFrame, alpha: float, race: RaceLog | None = None) -> str:
    """What bold and the mark mean, and how much the table's seeds can tell apart."""
    ours = cells[(cells["kind"] == "ours") & (cells["n"] > 0)]
    level = raced.bold_alpha(race, alpha)
    whole = float(race.settings.get("alpha", stats.ALPHA)) if race else alpha
    at = (f"at {level:.2g}, one more look of the race (so that, with the cells it put out, "
          f"every truly best cell is bold and not put out with probability at least "
          f"{1 - whole:.0%})" if race else
          f"at {alpha:g}, so every truly best cell is bold with probability at least "
          f"{1 - alpha:.0%}")
    text = (f"{TOP_MARK}: best mean. Bold: could be the best of its block: no other cell is "
            f"above it by bounds that hold for all the block's pairs at once (paired by seed, "
            f"and pooled over the block's seed-blocked model; Bonferroni over the ordered "
            f"pairs), {at}; bold is not a claim of equality.")
    if not ours.empty and (ours["n"] < 2).all():
        text += " Every cell has one seed: no test is possible, so no cell is told apart."
    return text


def _notes(cells: pd.DataFrame, trials: pd.DataFrame, index: list[str], rename: dict[str, str],
           metric: str, unrun: list[str], alpha: float = stats.ALPHA,
           race: RaceLog | None = None) -> list[str]:
    notes = data_notes(trials)
    notes.append(tie_note(cells, alpha, race))
    if metric != "top1":
        notes.append(f"Cells are {METRICS[metric]}.")
    if ((cells["kind"] == "paper") & (cells["status"] == "paper")).any():
        notes.append("(paper): a baseline we do not run; the value is the paper's.")
    if (cells["status"] == "quoted").any():
        notes.append("(quoted): a baseline we run, not run in this setting yet; the value is "
                     "the paper's, from another pipeline (docs/baselines.md says whose).")
    gaps = ~cells["status"].isin(["ok", "paper", "quoted"]) & cells["kind"].isin(["ours", "paper"])
    gaps &= ~((cells["status"] == "not run") & (cells["kind"] == "ours"))
    # a cell the race put out has fewer seeds by design; its text says so
    gaps &= ~((cells["status"] == "partial") & (cells.get("race_out", "") != ""))
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


def data_notes(trials: pd.DataFrame) -> list[str]:
    """Say loudly when results are not paper settings or use a shortened schedule."""
    notes = []
    other = sorted(set(trials.loc[~trials["paper_setting"], "dataset"]))
    if other:
        notes.append(f"NOT PAPER RESULTS: {', '.join(other)} data (offline smoke/pipeline "
                     "check); such rows have no paper counterpart.")
    # the generator methods' schedule (a post-training run's epochs are its fine-tuning's)
    gen = trials[~trials["method"].isin(PTQ_METHODS)]
    epochs = sorted({int(e) for e in gen["epochs"]})
    if epochs and epochs != [paper.PAPER_EPOCHS]:
        notes.append(f"Schedule: epochs {epochs} (paper: {paper.PAPER_EPOCHS}); steps per epoch "
                     f"{sorted({int(s) for s in gen['steps_per_epoch']})} (paper: 200).")
    return notes


def make_title(number: str, caption: str, trials: pd.DataFrame, metric: str) -> str:
    title = f"{number}: {caption}. {METRICS[metric][0].upper()}{METRICS[metric][1:]}"
    if not trials["paper_setting"].all():
        title += " — offline digits/smoke data, not paper results"
    return title


def finish(name: str, title: str, trials: pd.DataFrame, cells: pd.DataFrame,
            index: list[str], rename: dict[str, str], bold_by: list[str], metric: str,
            seeds: int, compare: bool, unrun: list[str], alpha: float = stats.ALPHA,
            race: RaceLog | None = None) -> PaperTable:
    if not 0 < alpha < 1:
        raise AnalysisError(f"--alpha must be in (0, 1), got {alpha:g}")
    level = raced.bold_alpha(race, alpha)
    _mark_ties(cells, bold_by, level)
    cells["metric"], cells["seeds"] = metric, seeds
    cells["race_out"] = raced.outcomes(cells, race)
    # A cell the race put out was found worse than that round's best by the same test: not
    # bold, although its few seeds may not show it against the final best.
    cells.loc[cells["race_out"] != "", "bold"] = False
    cells["text"] = [_text(c, seeds, compare) for _, c in cells.iterrows()]
    cells.insert(0, "table", name)
    frame, bold, top = _layout(cells, index, rename)
    notes = _notes(cells, trials, index, rename, metric, unrun, alpha, race)
    notes += raced.notes(cells, race)
    return PaperTable(name=name, title=title, frame=frame, bold=bold, top=top,
                      cells=cells.drop(columns=[c for c in cells if c.startswith("_")]),
                      metric=metric, notes=notes, samples=samples_of(cells), alpha=alpha,
                      race=race)


def samples_of(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run of our cells: the cell's columns, seed, value, start."""
    keep = [c for c in cells.columns if not c.startswith("_") and c not in _STAT_COLUMNS]
    out = []
    for _, c in cells[cells["kind"] == "ours"].iterrows():
        base = {k: c[k] for k in keep}
        for seed, value in c["_samples"].items():
            out.append({**base, "seed": int(seed), "value": float(value),
                        "start": float(c["_starts"].get(seed, math.nan))})
    return pd.DataFrame(out, columns=[*keep, "seed", "value", "start"])


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise AnalysisError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")


def settings_of(trials: pd.DataFrame) -> list[tuple[str, str, str]]:
    keys = set(zip(trials["dataset"], trials["model"], trials["bits"], strict=True))
    return sorted(keys, key=lambda k: setting_sort_key(*k))


def unrun_paper_rows(block: str, present: list[tuple[str, str, str]]) -> list[str]:
    """Settings the paper reports in this block that have no trial here."""
    p = paper.paper_tables()
    p = p[(p["table"] == paper.paper_block(block)) & (p["method"].isin(["Qimera", "GDFQ"]))]
    wanted = dict.fromkeys(zip(p["dataset"], p["model"], p["bits"], strict=True))
    return [" ".join(k) for k in wanted if k not in present]


def paper_rows(block: str) -> pd.DataFrame:
    p = paper.paper_tables()
    return p[p["table"] == paper.paper_block(block)]


def rows_of(df: pd.DataFrame, setting: tuple[str, str, str]) -> pd.DataFrame:
    d, m, b = setting
    return df[(df["dataset"] == d) & (df["model"] == m) & (df["bits"] == b)]


def setting_columns(setting: tuple[str, str, str]) -> dict[str, str]:
    d, m, b = setting
    return dict(setting=f"{d} {m} {b}", dataset=d, model=m, bits=b)
