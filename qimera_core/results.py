"""The one results schema: a row per trial (and per epoch, for curves), written as Parquet.

`qimera_core.train`'s CLI, `sweeps` and `analysis` all use these columns. The config columns
are exactly the TrainConfig fields.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import subprocess
import uuid
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from qimera_core.config import FIELDS, TrainConfig

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
QUARANTINE = "quarantine"   # DIR/quarantine/: unreadable or foreign files, moved aside by read()
# What the driver knows about a trial.
# pack_id: the Tune trial (one process) the run trained in; pack_size: how many runs it held.
RUN_COLUMNS = ("schema_version", "table", "trial_id", "config_hash", "status", "error",
               "git_sha", "versions", "device_name", "gpu_seconds", "finished_at", "pack_id",
               "pack_size")
# What train() reports, once per epoch; the last report is the trial's result.
METRICS = ("epoch", "top1", "top5", "best_top1", "best_epoch", "teacher_top1", "start_top1",
           "wall_time_s", "step_time_s", "loss_g", "loss_g_ce", "loss_bns", "loss_s", "loss_kd",
           "loss_s_ce", "diverged")
STATUSES = ("ok", "error", "diverged", "stopped")  # stopped: ended early by a scheduler (ASHA)
# Which row of a config hash wins when it has several (a retry, a rerun, a restored trial).
STATUS_RANK = {"error": 0, "stopped": 1, "diverged": 1, "ok": 2}
# Rows of trials that have not ended: a curve row written as its epoch is reported (running),
# and a sweep's plan row for a trial not yet reported (pending). Never in a trials row.
LIVE_STATUSES = ("running", "pending")
# Run columns added after files of this schema version were first written, with the value an
# older file stands for; read() fills them in. (Config fields added later take their default.)
LATE_COLUMNS: dict[str, Any] = {"pack_id": "", "pack_size": 1}


class SchemaError(ValueError):
    """A results file written by a newer version of this code: refused, never moved aside."""


def columns() -> list[str]:
    return [*RUN_COLUMNS, *FIELDS, *METRICS]



def make_row(cfg: TrainConfig, metrics: Mapping[str, Any], *, table: str, trial_id: str,
             status: str, error: str = "", device_name: str = "", gpu_seconds: float = 0.0,
             run_info: Mapping[str, str] | None = None, pack_id: str = "",
             pack_size: int = 1) -> dict[str, Any]:
    """One trial as a flat dict with exactly `columns()` as keys. A run trained alone is its
    own pack (`pack_id` defaults to `trial_id`)."""
    if status not in (*STATUSES, *LIVE_STATUSES):
        raise ValueError(f"status must be one of {(*STATUSES, *LIVE_STATUSES)}, got {status!r}")
    info = run_info or run_environment()
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "table": table, "trial_id": trial_id,
        "config_hash": cfg.config_hash, "status": status, "error": error,
        "git_sha": info["git_sha"], "versions": info["versions"], "device_name": device_name,
        "gpu_seconds": float(gpu_seconds), "finished_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "pack_id": pack_id or trial_id, "pack_size": int(pack_size),
    }
    row.update({k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(cfg).items()})
    row.update({k: _metric(metrics.get(k)) for k in METRICS})
    return row


def _metric(v: Any) -> float:
    if v is None:
        return float("nan")
    return float(v)


def to_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=columns())
    for k in METRICS:
        df[k] = df[k].astype("float64")
    return df


def write(rows: Iterable[Mapping[str, Any]], directory: Path, stem: str) -> Path | None:
    """Write rows to a new, uniquely named Parquet file in `directory`, atomically.

    Writers never clobber each other: each call makes its own file (`stem-<uuid>.parquet`),
    written to a temporary name first and renamed into place.
    """
    rows = list(rows)
    if not rows:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}-{uuid.uuid4().hex[:12]}.parquet"
    tmp = directory / f".{path.name}.tmp"
    to_frame(rows).to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def read(directory: Path, stem: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """All `stem-*.parquet` files in `directory` as one frame (empty frame if none); only
    `columns` when given, which keeps frequent look-ups cheap.

    A truncated, empty or foreign file is moved to `directory/quarantine/` with one warning
    line and the rest is read, so one bad copy never blocks a sweep or the analysis. A file of
    a newer schema version raises SchemaError: it is good data for newer code.
    """
    directory = Path(directory)
    cols = list(columns) if columns else None
    frames = [df for f in sorted(directory.glob(f"{stem}-*.parquet"))
              if (df := _read_file(f, cols)) is not None]
    if not frames:
        return to_frame([])[cols] if cols else to_frame([])
    df = pd.concat(frames, ignore_index=True)
    if "pack_id" in df and "trial_id" in df:         # a row from before packs: its own pack
        df["pack_id"] = df["pack_id"].mask(df["pack_id"] == "", df["trial_id"])
    return df


def _read_file(path: Path, cols: list[str] | None) -> pd.DataFrame | None:
    """One results file with the schema's columns (or `cols`), or None if it was moved aside."""
    try:
        names = set(pq.read_schema(path).names)
    except FileNotFoundError:
        return None                                  # another reader quarantined it just now
    except (OSError, pa.ArrowException) as e:
        return _quarantine(path, f"not a readable Parquet file, truncated or empty? ({_first(e)})")
    if "schema_version" not in names:
        return _quarantine(path, "no schema_version column: not written by "
                                 "qimera_core.results.write")
    want = cols or columns()
    missing = [c for c in want if c not in names and _default(c) is _NO_DEFAULT]
    if missing:
        return _quarantine(path, f"lacks the schema columns {missing}")
    try:
        df = pd.read_parquet(path, columns=sorted({"schema_version", *want} & names))
    except FileNotFoundError:
        return None
    except (OSError, pa.ArrowException) as e:
        return _quarantine(path, f"damaged Parquet data ({_first(e)})")
    newest = df["schema_version"].max() if len(df) else SCHEMA_VERSION
    if newest > SCHEMA_VERSION:
        raise SchemaError(
            f"{path} has schema_version {int(newest)}, but this qimera-sweeps reads version "
            f"{SCHEMA_VERSION} at most: install the version that wrote it (its git_sha column "
            "says which), or point --results at a directory of your own")
    for c in want:
        if c not in df.columns:
            df[c] = _default(c)
    return df[want]


_NO_DEFAULT = object()


def _first(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]  # a warning stays one line


def _default(column: str) -> Any:
    if column in LATE_COLUMNS:
        return LATE_COLUMNS[column]
    f = FIELDS.get(column)
    if f is not None and f.default is not dataclasses.MISSING:
        return f.default
    return _NO_DEFAULT


def _quarantine(path: Path, why: str) -> None:
    """Move a bad results file to DIR/quarantine/ (never delete: it may be someone's data)."""
    dest_dir = path.parent / QUARANTINE
    dest_dir.mkdir(exist_ok=True)
    dest = dest_dir / path.name
    if dest.exists():
        dest = dest_dir / f"{path.stem}-{uuid.uuid4().hex[:6]}{path.suffix}"
    try:
        os.replace(path, dest)
    except FileNotFoundError:
        return None                                  # another reader moved it first
    log.warning("moved %s to %s/: %s", path, dest_dir, why)
    return None


_ENV: dict[str, str] | None = None


def run_environment() -> dict[str, str]:
    """git sha of this checkout (if any) and the versions of the packages that shape results."""
    global _ENV
    if _ENV is None:
        try:
            sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                 cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = ""
        versions = {"python": platform.python_version()}
        for pkg in ("qimera-sweeps", "torch", "torchvision", "pytorchcv", "numpy", "ray"):
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                pass
        _ENV = {"git_sha": sha, "versions": json.dumps(versions, sort_keys=True)}
    return _ENV


def winning_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per config hash, the one that counts: the best status (ok over diverged or
    stopped over error, STATUS_RANK), the newest `finished_at` among those. The one rule for
    the sweeps (what is done), the race (its rounds) and the analysis (the tables)."""
    if rows.empty:
        return rows.copy()
    df = rows.assign(_rank=rows["status"].map(STATUS_RANK).fillna(-1),
                     _when=pd.to_datetime(rows["finished_at"], utc=True, errors="coerce"))
    df = df.sort_values(["config_hash", "_rank", "_when"], kind="stable")
    return df.groupby("config_hash", sort=False).tail(1).drop(columns=["_rank", "_when"])
