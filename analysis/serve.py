"""`python -m analysis serve`: a live page of a sweep's paper tables, served on 127.0.0.1.

The page (analysis/static/dashboard.html) polls one JSON endpoint built here from the same
PaperTables as `analysis tables`; Plotly draws the heatmap and the curves from the JavaScript
bundled in the plotly wheel, so nothing loads from the network.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pandas as pd

from qimera_core import results as schema
from qimera_core import tablespec

from . import render, resolve
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

log = logging.getLogger(__name__)

DEFAULT_PORT = 8470
REFRESH_S = 10.0  # a live page's state is rebuilt at least this often
MIN_REBUILD_S = 2.0  # and at most this often (the page polls every 2 s)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
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


def _num(v: Any) -> float | None:
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
            "mean": _num(c["mean"]), "std": _num(c["std"]), "n": int(c["n"]),
            "best_mean": _num(b["mean"]), "best_std": _num(b["std"]),
            "paper": _num(c["paper"]), "delta_best": _num(b["delta"]),
            "delta_final": _num(c["delta"]), "bold_best": bool(b["bold"]),
            # final top-1: the 95 % t-interval, and the tie with the block's best mean
            "ci_low": _num(c.get("ci_low")), "ci_high": _num(c.get("ci_high")),
            "tied": bool(c["bold"]), "top": bool(c["top"]), "tie_p": _num(c["tie_p"]),
            "tie_test": str(c["tie_test"]), "race_out": str(c["race_out"]),
            "reason": _why(g),
            "live": [{"trial_id": r.trial_id, "epoch": _num(r.epoch), "epochs": int(r.epochs),
                      "top1": _num(r.top1)} for r in live.itertuples()],
            "hashes": sorted(set(g["config_hash"])) if g is not None else [],
        })
    # The notes that are about the data; a note per cell would repeat the cell's hover text,
    # and while trials run, its gaps say "not run" of cells that are only pending.
    notes = data_notes(mine[mine["status"] != "pending"])
    notes.append(tie_note(cells, final.alpha))
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
            "elapsed_s": _num(elapsed), "live": live,
            "trials_per_hour": _num(len(ended) / (elapsed / 3600)) if elapsed > 0 else None,
            "mean_trial_s": _num(mean_wall), "eta_s": _num(eta),
            "gpu_hours": _num(used / 3600),
            "gpu_hours_projected": _num(projected / 3600) if projected is not None else None}


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
                    **{m: [_num(v) for v in c[m]] for m in CURVE_METRICS}})
    return out


# ---- HTTP ------------------------------------------------------------------------------------
@functools.cache
def _static(name: str) -> bytes:
    if name == "plotly.min.js":
        from plotly.offline import get_plotlyjs
        return get_plotlyjs().encode("utf-8")
    return resources.files("analysis").joinpath(f"static/{name}").read_bytes()


@dataclass
class _Cache:
    """The last state and the files it was built from: rebuilt only when files change."""

    key: tuple = ()
    state: dict | None = None
    built: float = 0.0
    cost: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _fingerprint(directory: Path) -> tuple:
    files = []
    for f in sorted(directory.glob("*.parquet")) if directory.is_dir() else []:
        try:
            files.append((f.name, f.stat().st_mtime_ns))
        except FileNotFoundError:  # merged away between glob and stat
            pass
    return tuple(files)


class Handler(BaseHTTPRequestHandler):
    """Serves the page, its two scripts, the JSON state, a cell's trials and the downloads;
    any other path is 404, so no request reads a file it names."""

    directory: Path = Path("results")
    storage: str = ""
    cache: _Cache = _Cache()
    server_version = "qimera-dashboard"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if url.path in ("/", "/index.html"):
                self._send(_static("dashboard.html"), "text/html; charset=utf-8")
            elif url.path in ("/plotly.min.js", "/dashboard.js"):
                self._send(_static(url.path[1:]), "text/javascript; charset=utf-8")
            elif url.path == "/api/state":
                self._json(self._state())
            elif url.path == "/api/trials":
                self._json(self._trials(query.get("table", ""), query.get("cell", "")))
            elif url.path.startswith("/download/"):
                self._download(url.path.removeprefix("/download/"))
            else:
                self.send_error(HTTPStatus.NOT_FOUND, "not part of the dashboard")
        except AnalysisError as e:
            self.send_error(HTTPStatus.NOT_FOUND, str(e).splitlines()[0])

    def _state(self) -> dict:
        with self.cache.lock:
            key = _fingerprint(self.directory)
            if self.cache.state is None or self._due(key):
                start = time.monotonic()
                self.cache.state = page_state(self.directory, self.storage)
                self.cache.key, self.cache.built = key, time.monotonic()
                self.cache.cost = self.cache.built - start
            return self.cache.state

    def _due(self, key: tuple) -> bool:
        """Rebuild when files changed (or, while live, every REFRESH_S: elapsed time and ETA
        move even when no file does), but leave at least twice the last build's time
        between builds: with --serve the page shares the driver's CPU with the trials."""
        age = time.monotonic() - self.cache.built
        if age < max(MIN_REBUILD_S, 2 * self.cache.cost):
            return False
        return key != self.cache.key or (self.cache.state["live"] and age > REFRESH_S)

    def _trials(self, table: str, cell: str) -> dict:
        found = [t for t in self._state()["tables"] if t["name"] == table]
        if not found or not cell.isdigit():
            raise AnalysisError(f"no table {table!r} with cell {cell!r}")
        match = [c for c in found[0]["cells"] if c["id"] == int(cell)]
        if not match:
            raise AnalysisError(f"table {table} has no cell {cell}")
        return {"cell": match[0], "trials": cell_trials(self.directory, match[0]["hashes"])}

    def _download(self, name: str) -> None:
        """`table9.csv` / `table9.tex`: the files `analysis tables --compare-paper` writes."""
        stem, _, fmt = name.partition(".")
        if stem not in TABLE_FUNCTIONS or fmt not in ("csv", "tex"):
            raise AnalysisError(f"no download {name!r}; use /download/<table>.csv or .tex")
        table = TABLE_FUNCTIONS[stem](load(self.directory), compare_paper=True)
        body = table.cells.to_csv(index=False) if fmt == "csv" else render.to_latex(table)
        kind = "text/csv" if fmt == "csv" else "application/x-tex"
        self._send(body.encode("utf-8"), f"{kind}; charset=utf-8",
                   {"Content-Disposition": f'attachment; filename="{stem}.{fmt}"'})

    def _json(self, data: Any) -> None:
        self._send(json.dumps(data).encode("utf-8"), "application/json")

    def _send(self, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        log.debug("%s %s", self.address_string(), format % args)


def make_server(directory: Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                storage: str = "") -> ThreadingHTTPServer:
    """A server for `directory` (not started). Port 0 picks a free port."""
    handler = type("DashboardHandler", (Handler,),
                   {"directory": Path(directory).resolve(), "storage": storage,
                    "cache": _Cache()})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise AnalysisError(f"cannot serve on {host}:{port} ({e.strerror}); pass a free --port "
                            "(0 picks one)") from e
    server.daemon_threads = True
    if host not in LOOPBACK:
        log.warning("serving on %s: anyone who can reach this address can read the results "
                    "in %s (configs, metrics, error traces) without a password", host, directory)
        print(f"WARNING: --host {host} exposes the page and every result in {directory} "
              "(configs, metrics, error traces) to anyone who can reach this machine, "
              "without authentication; use 127.0.0.1 and an SSH tunnel instead")
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/"


def serve_in_background(directory: Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                        storage: str = "") -> ThreadingHTTPServer:
    """Start serving on a daemon thread (what a sweep's --serve does); returns the server."""
    server = make_server(directory, host, port, storage)
    threading.Thread(target=server.serve_forever, name="dashboard", daemon=True).start()
    return server
