"""The live page's data: one JSON state of a results directory's paper tables (cells, their
trials, progress, what each table resolves), built from the same PaperTables as `analysis
tables`. `analysis.serve` serves it over HTTP.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from qimera_core import results as schema
from qimera_core import tablespec

from . import resolve
from .cells import data_notes, tie_note
from .load import (
    AnalysisError,
    Results,
    add_labels,
    dedupe_curves,
    dedupe_trials,
    in_table,
    load,
)
from .status import race_lines
from .tables import TABLE_FUNCTIONS, keyed

DEFAULT_PORT = 8470   # analysis serve's port, named in the page's links
CURVE_METRICS = ("top1", "best_top1", "loss_s", "loss_kd", "loss_g", "loss_bns")


# ---- the data behind the page ----------------------------------------------------------------
def _pending(directory: Path, results: Results) -> pd.DataFrame:
    """Plan rows (the trials a sweep set out to run) with no trials row written since the plan
    and no epoch reported yet."""
    plan = schema.read(directory, "plan")
    if plan.empty:
        return plan
    plan = plan.sort_values("finished_at").drop_duplicates(["table", "config_hash"], keep="last")
    done = results.trials.groupby("config_hash")["finished_at"].max() \
        if not results.trials.empty else pd.Series(dtype=object)
    later = [h in done.index and str(done[h]) >= str(t)
             for h, t in zip(plan["config_hash"], plan["finished_at"], strict=True)]
    running = set(results.running["config_hash"]) if not results.running.empty else set()
    plan = plan[~pd.Series(later, index=plan.index) & ~plan["config_hash"].isin(running)]
    plan = add_labels(plan)
    plan["tables"] = [frozenset([t]) for t in plan["table"]]
    return plan


def _nothing_yet(directory: Path) -> Results:
    """The Results of a directory that holds a sweep's plan but no reported epoch yet."""
    empty = add_labels(dedupe_trials(schema.to_frame([])))
    curves = add_labels(dedupe_curves(schema.to_frame([])))
    return Results(directory=directory, trials=empty, curves=curves, running=curves)


def _all_trials(results: Results, pending: pd.DataFrame) -> pd.DataFrame:
    """Finished, running and pending trials in one labelled frame (status says which)."""
    parts = [results.trials, results.running.assign(status="running"), pending]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return results.trials
    return pd.concat(parts, ignore_index=True)


def num(v: Any) -> float | None:
    """A JSON-safe number: NaN becomes null."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else round(f, 4)


def _key(values: tuple) -> tuple:
    return tuple(round(v, 6) if isinstance(v, float) else v for v in values)


def _row_label(c: pd.Series, keys: list[str], names: dict[str, str]) -> str:
    words = [str(c[k]) for k in keys if isinstance(c[k], str)]
    return ", ".join([" ".join(words)] * bool(words)
                     + [f"{names.get(k, k)}={c[k]:g}" for k in keys if not isinstance(c[k], str)])


def _why(g: pd.DataFrame | None) -> str:
    """'error (seed 0): RuntimeError: CUDA out of memory; diverged (seed 1)': the last line of
    a traceback names the exception, where its first says only when the failure happened."""
    if g is None:
        return ""
    parts = []
    for r in g[g["status"].isin(["error", "diverged", "stopped"])].sort_values("seed").itertuples():
        lines = [x.strip() for x in str(r.error).splitlines() if x.strip()]
        parts.append(f"{r.status} (seed {int(r.seed)})" + (f": {lines[-1][:200]}" if lines else ""))
    return "; ".join(parts)


def _cell_state(kind: str, counts: dict[str, int]) -> str:
    """finished | running | pending | error | diverged | stopped | not run | paper."""
    if kind != "ours":
        return "paper" if kind == "paper" else kind
    if counts.get("running"):
        return "running"
    if counts.get("pending"):
        return "pending"
    if counts.get("ok"):
        return "finished"
    for s in ("error", "diverged", "stopped"):
        if counts.get(s):
            return s
    return "not run"


def _table_state(name: str, everything: pd.DataFrame, results: Results) -> dict | None:
    """One table: its cells (state, final and best-epoch numbers, paper, Δ) in paper layout."""
    mine = in_table(everything, name)
    if mine.empty:
        return None
    fn = TABLE_FUNCTIONS[name]
    race = results.races.get(name)
    final = fn(mine, metric="top1", compare_paper=True, race=race)
    best = fn(mine, metric="best_top1", compare_paper=True, race=race).cells
    cells = final.cells
    spec = tablespec.get(name)
    cell_keys, row_keys = spec.cell_keys, spec.row_keys
    mine = keyed(spec, mine)
    groups = {_key(k): g for k, g in mine.groupby(cell_keys, sort=False, dropna=False)}
    axis_names = {a.column: a.label for a in spec.axes}
    out = []
    for i, c in cells.iterrows():
        g = groups.get(_key(tuple(c[k] for k in cell_keys))) if c["kind"] == "ours" else None
        counts = g["status"].value_counts().to_dict() if g is not None else {}
        live = g[g["status"] == "running"] if g is not None else pd.DataFrame()
        b = best.loc[i]
        out.append({
            "id": int(i), "row": _row_label(c, row_keys, axis_names), "column": str(c["column"]),
            "kind": c["kind"], "state": _cell_state(c["kind"], counts),
            "counts": {k: int(v) for k, v in counts.items()}, "seeds": int(c["seeds"]),
            "mean": num(c["mean"]), "std": num(c["std"]), "n": int(c["n"]),
            "best_mean": num(b["mean"]), "best_std": num(b["std"]),
            "paper": num(c["paper"]), "delta_best": num(b["delta"]),
            "delta_final": num(c["delta"]), "bold_best": bool(b["bold"]),
            # final top-1: the 95 % t-interval, and the tie with the block's best mean
            "ci_low": num(c.get("ci_low")), "ci_high": num(c.get("ci_high")),
            "tied": bool(c["bold"]), "top": bool(c["top"]), "tie_p": num(c["tie_p"]),
            "tie_test": str(c["tie_test"]), "race_out": str(c["race_out"]),
            "reason": _why(g),
            "live": [{"trial_id": r.trial_id, "epoch": num(r.epoch), "epochs": int(r.epochs),
                      "top1": num(r.top1)} for r in live.itertuples()],
            "hashes": sorted(set(g["config_hash"])) if g is not None else [],
        })
    # The notes that are about the data; a note per cell would repeat the cell's hover text,
    # and while trials run, its gaps say "not run" of cells that are only pending.
    notes = data_notes(mine[mine["status"] != "pending"])
    notes.append(tie_note(cells, final.alpha, race))
    resolves = resolve.resolve(final).lines() if not final.samples.empty else []
    if race:
        resolves += [f"race: {line}" for line in race_lines(race)]
    return {"name": name, "title": final.title, "notes": notes, "resolves": resolves,
            "rows": list(dict.fromkeys(c["row"] for c in out)),
            "columns": list(dict.fromkeys(c["column"] for c in out)), "cells": out}


def _progress(everything: pd.DataFrame, results: Results, now: float) -> dict:
    """Counts by state, elapsed time, trials per hour, ETA and GPU-hours (used, projected)."""
    counts = everything["status"].value_counts().to_dict() if not everything.empty else {}
    ended = results.trials
    stamps = pd.to_datetime(pd.concat([everything["finished_at"], results.curves["finished_at"]]),
                            utc=True, errors="coerce").dropna()
    live = bool(counts.get("running") or counts.get("pending"))
    start = stamps.min().timestamp() if len(stamps) else now
    end = now if live else (stamps.max().timestamp() if len(stamps) else now)
    elapsed = max(0.0, end - start)
    # Measured trial times: Tune's wall time across restarts of each ended trial.
    walls = ended["wall_time_s"].dropna() if not ended.empty else pd.Series(dtype=float)
    mean_wall = float(walls.mean()) if len(walls) else math.nan
    running = results.running
    left = float(counts.get("pending", 0))
    if not running.empty:  # the unfinished fraction of each running trial
        left += float((1 - running["epoch"] / running["epochs"]).clip(0, 1).sum())
    parallel = max(1, int(counts.get("running", 0)))
    eta = left * mean_wall / parallel if left and not math.isnan(mean_wall) else (0.0 if not
                                                                                  left else None)
    used = float(ended["gpu_seconds"].fillna(0).sum()) if not ended.empty else 0.0
    used += float(running["gpu_seconds"].fillna(0).sum()) if not running.empty else 0.0
    per_trial = float(ended["gpu_seconds"].fillna(0).mean()) if not ended.empty else math.nan
    projected = used + left * per_trial if not math.isnan(per_trial) else None
    return {"counts": {k: int(v) for k, v in counts.items()}, "total": int(len(everything)),
            "elapsed_s": num(elapsed), "live": live,
            "trials_per_hour": num(len(ended) / (elapsed / 3600)) if elapsed > 0 else None,
            "mean_trial_s": num(mean_wall), "eta_s": num(eta),
            "gpu_hours": num(used / 3600),
            "gpu_hours_projected": num(projected / 3600) if projected is not None else None}


def page_state(directory: Path, storage: str = "") -> dict:
    """Everything the page shows, as one JSON-ready dict."""
    now = time.time()
    try:
        results = load(directory)
    except AnalysisError as e:
        if not directory.is_dir() or not list(directory.glob("plan-*.parquet")):
            return {"results": str(directory), "error": str(e), "tables": [], "live": True,
                    "progress": None, "links": links(storage)}
        results = _nothing_yet(directory)           # a sweep has started: all cells pending
    everything = _all_trials(results, _pending(directory, results))
    names = set().union(*everything["tables"]) if not everything.empty else set()
    tables = [t for t in (_table_state(n, everything, results) for n in tablespec.names()
                         if n in names) if t]
    progress = _progress(everything, results, now)
    return {"results": str(directory), "error": "", "tables": tables, "progress": progress,
            "live": progress["live"], "links": links(storage),
            "updated": pd.Timestamp(now, unit="s", tz="UTC").isoformat()}


def links(storage: str) -> list[dict[str, str]]:
    """The commands that open the other views of a sweep."""
    logdir = storage or "runs/sweeps"
    return [
        {"view": "TensorBoard (Tune's logs; HParams tab)", "command": f"tensorboard --logdir "
         f"{logdir} --host 127.0.0.1", "url": "http://127.0.0.1:6006/"},
        {"view": "Ray dashboard, local sweep", "command": "add --dashboard to the sweep command",
         "url": "http://127.0.0.1:8265/"},
        {"view": "Ray dashboard and this page, on a cluster (one SSH tunnel)",
         "command": f"ray attach cluster/cluster.yaml -p 8265 -p {DEFAULT_PORT}",
         "url": f"http://127.0.0.1:8265/ and http://127.0.0.1:{DEFAULT_PORT}/"},
        {"view": "Ray dashboard only, on a cluster",
         "command": "ray dashboard cluster/cluster.yaml", "url": "http://127.0.0.1:8265/"},
    ]


def cell_trials(directory: Path, hashes: list[str]) -> list[dict]:
    """Per-epoch top-1 and losses of every trial of a cell (by config hash), with its status."""
    results = load(directory)
    curves = results.curves[results.curves["config_hash"].isin(hashes)]
    ended = results.trials.set_index("trial_id") if not results.trials.empty else None
    out = []
    for trial_id, c in curves.sort_values(["seed", "epoch"]).groupby("trial_id", sort=False):
        row = ended.loc[trial_id] if ended is not None and trial_id in ended.index else None
        out.append({"trial_id": trial_id, "seed": int(c["seed"].iloc[0]),
                    "status": str(row["status"]) if row is not None else "running",
                    "error": str(row["error"])[-1500:] if row is not None else "",
                    "epoch": [int(e) for e in c["epoch"]],
                    **{m: [num(v) for v in c[m]] for m in CURVE_METRICS}})
    return out
