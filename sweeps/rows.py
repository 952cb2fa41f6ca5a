"""Trial and curve rows from what a sweep's trials reported, and the look-ups in `--results`
that let a sweep skip finished work. Plain pandas; the Tune callback (`sweeps.writer`'s
ResultsWriter), the planner and the driver call these.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from qimera_core import results
from qimera_core.config import TrainConfig

log = logging.getLogger(__name__)

# Statuses whose trial is done: rerunning it with the same config hash would compute it again.
# ("diverged" is a result too: the same seed diverges again.) "error" rows are rerun.
FINISHED = ("ok", "diverged", "stopped")
TRIALS, CURVES, PLAN = "trials", "curves", "plan"
# Per-epoch files a running trial may have before they are merged into one: reading many
# small files is what slows the live page (bench/live_rows.py), and a 400-epoch trial would
# otherwise leave 400 of them.
LIVE_FILES_MAX = 8


def status_of(metrics: Mapping[str, Any], error: str, epochs: int) -> str:
    """error | diverged | stopped (a scheduler ended it before `epochs`) | ok."""
    if error:
        return "error"
    diverged = metrics.get("diverged")
    if diverged is not None and not _isnan(diverged) and diverged:
        return "diverged"
    done = metrics.get("epoch")
    return "stopped" if done is None or _isnan(done) or done < epochs else "ok"


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def gpu_seconds(metrics: Mapping[str, Any], gpus: float) -> float:
    """GPU time the trial held: Tune's wall time across restarts (else train's) x its GPUs."""
    wall = metrics.get("time_total_s", metrics.get("wall_time_s", 0.0)) or 0.0
    return float(wall) * gpus


def member_id(pack_id: str, index: int, size: int) -> str:
    """A run's trial_id: the Tune trial's id when it trained alone, else `<id>_m<index>`."""
    return pack_id if size == 1 else f"{pack_id}_m{index}"


def trial_row(table: str, trial_id: str, cfg: TrainConfig, metrics: Mapping[str, Any], *,
              error: str = "", gpus: float = 0.0, pack_id: str = "",
              pack_size: int = 1) -> dict[str, Any]:
    """The trials-table row of one finished (or failed) run, from its last report. `gpus` is
    the run's share: its pack's GPUs divided by the pack's size."""
    return results.make_row(cfg, metrics, table=table, trial_id=trial_id,
                            status=status_of(metrics, error, cfg.epochs), error=error,
                            device_name=str(metrics.get("device_name", "")),
                            gpu_seconds=gpu_seconds(metrics, gpus), pack_id=pack_id,
                            pack_size=pack_size)


def curve_rows(table: str, trial_id: str, cfg: TrainConfig, reports: Iterable[Mapping[str, Any]],
               *, status: str, gpus: float = 0.0, pack_id: str = "",
               pack_size: int = 1) -> list[dict[str, Any]]:
    """One curves row per epoch report; a repeated epoch (replayed after a restore) keeps
    the last report."""
    by_epoch = {int(r["epoch"]): r for r in reports if "epoch" in r}
    return [results.make_row(cfg, r, table=table, trial_id=trial_id, status=status,
                             device_name=str(r.get("device_name", "")),
                             gpu_seconds=gpu_seconds(r, gpus), pack_id=pack_id,
                             pack_size=pack_size)
            for _, r in sorted(by_epoch.items())]


def live_stem(trial_id: str, epoch: int | None = None) -> str:
    """`curves-live-<trial_id>-e<epoch>`: the file stem of one reported epoch of a running trial
    (results.read of `curves` reads these too). Without `epoch`, the prefix of all of them."""
    return f"{CURVES}-live-{trial_id}-e" + ("" if epoch is None else f"{epoch:04d}")


def write_live_curve(table: str, results_dir: Path, trial_id: str, cfg: TrainConfig,
                     metrics: Mapping[str, Any], *, gpus: float = 0.0, pack_id: str = "",
                     pack_size: int = 1) -> Path | None:
    """One epoch report of a running trial as a curves row (status "running") in its own
    atomically written file, so a driver killed later keeps it. The trial's final curves file
    (same rows, final status, written later) wins over these in every reader."""
    if "epoch" not in metrics:
        return None
    row = results.make_row(cfg, metrics, table=table, trial_id=trial_id, status="running",
                           device_name=str(metrics.get("device_name", "")),
                           gpu_seconds=gpu_seconds(metrics, gpus), pack_id=pack_id,
                           pack_size=pack_size)
    epoch = int(metrics["epoch"])
    path = results.write([row], Path(results_dir), live_stem(trial_id, epoch))
    files = sorted(Path(results_dir).glob(f"{live_stem(trial_id)}*.parquet"))
    if len(files) > LIVE_FILES_MAX:
        path = _merge_live(Path(results_dir), trial_id, epoch, files)
    return path


def _merge_live(results_dir: Path, trial_id: str, epoch: int, files: list[Path]) -> Path | None:
    """One file with the rows of `files` (each epoch once, the latest), then `files` removed:
    a reader sees the rows twice for a moment, never not at all."""
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    df = df.sort_values("finished_at", kind="stable").drop_duplicates("epoch", keep="last")
    merged = results.write(df.sort_values("epoch").to_dict("records"), results_dir,
                           live_stem(trial_id, epoch))
    for f in files:
        f.unlink(missing_ok=True)
    return merged


def drop_live_curves(results_dir: Path, trial_id: str) -> int:
    """Remove a trial's per-epoch files once its final curves file holds the same epochs, so
    a finished sweep reads one curves file per trial. Returns how many were removed."""
    files = list(Path(results_dir).glob(f"{live_stem(trial_id)}*.parquet"))
    for path in files:
        path.unlink(missing_ok=True)
    return len(files)


def write_plan(table: str, results_dir: Path, configs: Sequence[TrainConfig]) -> Path | None:
    """The trials a sweep is about to run, as `pending` rows in `plan-*.parquet`: what lets a
    live view show the cells not started yet and project the sweep's time and cost."""
    return results.write([results.make_row(c, {}, table=table, trial_id="", status="pending")
                          for c in configs], Path(results_dir), PLAN)


def read_trials(results_dir: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Every trials row in `results_dir`; only `columns` when given (cheap look-ups)."""
    return results.read(Path(results_dir), TRIALS, columns)


def read_curves(results_dir: Path) -> pd.DataFrame:
    """Every curves row, one per (table, trial_id, epoch): a restored trial may report an epoch
    twice, and the later-written row wins."""
    df = results.read(Path(results_dir), CURVES).sort_values("finished_at", kind="stable")
    df = df.drop_duplicates(["table", "trial_id", "epoch"], keep="last")
    return df.sort_values(["table", "trial_id", "epoch"]).reset_index(drop=True)


def finished_rows(results_dir: Path) -> pd.DataFrame:
    """Rows of finished trials, one per config hash (results.winning_rows)."""
    df = read_trials(results_dir)
    return results.winning_rows(df[df["status"].isin(FINISHED)])


def recorded(results_dir: Path) -> tuple[set[str], set[str]]:
    """(trial ids with any row, config hashes with a finished row) in `results_dir`."""
    df = read_trials(results_dir, columns=["trial_id", "config_hash", "status"])
    return set(df["trial_id"]), set(df.loc[df["status"].isin(FINISHED), "config_hash"])


def is_recorded(results_dir: Path, trial_id: str, config_hash: str) -> bool:
    """Whether a row for this trial, or a finished row for its config, exists already."""
    ids, hashes = recorded(results_dir)
    return trial_id in ids or config_hash in hashes


def unrecorded(results_dir: Path, pack_id: str, cfgs: Sequence[TrainConfig]) -> list[int]:
    """The runs of a pack that still need rows: neither written under their own trial id (by
    this driver before a restart) nor finished under their config hash (by anyone)."""
    ids, hashes = recorded(results_dir)
    return [i for i, c in enumerate(cfgs)
            if member_id(pack_id, i, len(cfgs)) not in ids and c.config_hash not in hashes]


def adopt(results_dir: Path, table: str, reused: pd.DataFrame) -> int:
    """Copy reused trials that another table ran into this table's rows (same trial_id and
    config hash), with their curves, so that each table's rows are complete on their own."""
    foreign = reused[reused["table"] != table]
    have = read_trials(results_dir, columns=["table", "config_hash"])
    mine = set(have.loc[have["table"] == table, "config_hash"])
    foreign = foreign[~foreign["config_hash"].isin(mine)]
    if foreign.empty:
        return 0
    results.write(foreign.assign(table=table).to_dict("records"), results_dir, TRIALS)
    curves = read_curves(results_dir)
    source = set(zip(foreign["trial_id"], foreign["table"], strict=True))
    curves = curves[[k in source for k in zip(curves["trial_id"], curves["table"], strict=True)]]
    results.write(curves.assign(table=table).to_dict("records"), results_dir, CURVES)
    return len(foreign)
