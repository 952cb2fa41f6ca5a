"""The one results schema: a row per trial (and per epoch, for curves), written as Parquet.

`qimera_core.train`'s CLI, `sweeps` and `analysis` all use these columns. The config columns
are exactly the TrainConfig fields.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import uuid
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from qimera_core.config import FIELDS, TrainConfig

SCHEMA_VERSION = 1
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
# Rows of trials that have not ended: a curve row written as its epoch is reported (running),
# and a sweep's plan row for a trial not yet reported (pending). Never in a trials row.
LIVE_STATUSES = ("running", "pending")


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
    `columns` when given, which keeps frequent look-ups cheap."""
    files = sorted(Path(directory).glob(f"{stem}-*.parquet"))
    cols = list(columns) if columns else None
    if not files:
        return to_frame([])[cols] if cols else to_frame([])
    frames = [df for df in (_read_one(f, cols) for f in files) if df is not None]
    if not frames:
        return to_frame([])[cols] if cols else to_frame([])
    return _fill_pack_columns(pd.concat(frames, ignore_index=True), cols)


def _read_one(path: Path, columns: list[str] | None) -> pd.DataFrame | None:
    """One file, or None if it vanished since the glob: a sweep removes a trial's per-epoch
    curve files once the same rows are in its final file."""
    try:
        return pd.read_parquet(path, columns=_present(path, columns))
    except FileNotFoundError:
        return None


def _present(path: Path, cols: list[str] | None) -> list[str] | None:
    """`cols` less the pack columns a file from before packs lacks."""
    if cols is None or not set(cols) & {"pack_id", "pack_size"}:
        return cols
    import pyarrow.parquet as pq
    names = set(pq.read_schema(path).names)
    return [c for c in cols if c in names or c not in ("pack_id", "pack_size")]


def _fill_pack_columns(df: pd.DataFrame, cols: list[str] | None) -> pd.DataFrame:
    """Rows written before packs existed ran alone: pack_id = trial_id, pack_size = 1."""
    if cols is None or "pack_id" in cols:
        ids = df["trial_id"] if "trial_id" in df else ""
        df["pack_id"] = df["pack_id"].fillna(ids) if "pack_id" in df else ids
    if cols is None or "pack_size" in cols:
        df["pack_size"] = (df["pack_size"].fillna(1) if "pack_size" in df else 1)
        df["pack_size"] = df["pack_size"].astype("int64")
    return df[cols] if cols else df


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
