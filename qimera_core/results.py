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

from qimera_core.config import FIELDS, HASH_DEFAULTS, TrainConfig

SCHEMA_VERSION = 1
# What the driver knows about a trial.
RUN_COLUMNS = ("schema_version", "table", "trial_id", "config_hash", "status", "error",
               "git_sha", "versions", "device_name", "gpu_seconds", "finished_at")
# What train() reports, once per epoch; the last report is the trial's result.
METRICS = ("epoch", "top1", "top5", "best_top1", "best_epoch", "teacher_top1", "start_top1",
           "wall_time_s", "step_time_s", "loss_g", "loss_g_ce", "loss_bns", "loss_s", "loss_kd",
           "loss_s_ce", "diverged")
STATUSES = ("ok", "error", "diverged", "stopped")  # stopped: ended early by a scheduler (ASHA)


def columns() -> list[str]:
    return [*RUN_COLUMNS, *FIELDS, *METRICS]



def make_row(cfg: TrainConfig, metrics: Mapping[str, Any], *, table: str, trial_id: str,
             status: str, error: str = "", device_name: str = "", gpu_seconds: float = 0.0,
             run_info: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One trial as a flat dict with exactly `columns()` as keys."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    info = run_info or run_environment()
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "table": table, "trial_id": trial_id,
        "config_hash": cfg.config_hash, "status": status, "error": error,
        "git_sha": info["git_sha"], "versions": info["versions"], "device_name": device_name,
        "gpu_seconds": float(gpu_seconds), "finished_at": pd.Timestamp.now(tz="UTC").isoformat(),
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
    frames = []
    for f in files:
        want = cols if cols is None else [c for c in cols if c not in HASH_DEFAULTS or
                                          c in pq_columns(f)]
        frames.append(fill_added_fields(pd.read_parquet(f, columns=want), cols))
    return pd.concat(frames, ignore_index=True)


def pq_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq
    return pq.read_schema(path).names


def fill_added_fields(df: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Config fields added after a file was written get the value that reproduces its results
    (config.HASH_DEFAULTS), so older files keep the schema."""
    for k, v in HASH_DEFAULTS.items():
        if k not in df.columns and (columns is None or k in columns):
            df[k] = v
    return df


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
