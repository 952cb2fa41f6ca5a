"""Faults a shared results directory and a trial's checkpoints meet in practice: truncated,
empty and foreign files, files of a newer schema, and a damaged latest checkpoint."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch

from qimera_core import checkpoint, results
from qimera_core.config import build
from sweeps import rows

CFG_A = build("digits-smoke", seed=0)
CFG_B = build("digits-smoke", seed=1)


def _metrics(epoch: int, top1: float) -> dict:
    return {"epoch": epoch, "top1": top1, "best_top1": top1, "best_epoch": epoch}


def _good_files(directory):
    results.write([rows.trial_row("table9", "a_0", CFG_A, _metrics(2, 50.0))], directory,
                  rows.TRIALS)
    results.write([rows.trial_row("table9", "b_0", CFG_B, _metrics(2, 60.0))], directory,
                  rows.TRIALS)


def _truncated(path):
    good = next(path.parent.glob("trials-*.parquet")).read_bytes()
    path.write_bytes(good[: len(good) // 2])


BAD_FILES = {
    "truncated": (_truncated, "not a readable Parquet file"),
    "empty": (lambda p: p.write_bytes(b""), "not a readable Parquet file"),
    "not parquet": (lambda p: p.write_text("hello, this is a CSV\n1,2\n"),
                    "not a readable Parquet file"),
    "foreign parquet": (lambda p: pd.DataFrame({"x": [1, 2]}).to_parquet(p),
                        "no schema_version column"),
    "missing columns": (lambda p: pd.DataFrame({"schema_version": [1], "top1": [3.0]})
                        .to_parquet(p), "lacks the schema columns"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_file_is_quarantined_with_one_warning_and_no_row_is_lost(tmp_path, caplog, kind):
    _good_files(tmp_path)
    make, why = BAD_FILES[kind]
    bad = tmp_path / "trials-zzbad.parquet"
    make(bad)
    with caplog.at_level(logging.WARNING, logger="qimera_core.results"):
        df = results.read(tmp_path, rows.TRIALS)
    assert sorted(df["trial_id"]) == ["a_0", "b_0"]
    assert list(df.columns) == results.columns()
    assert not bad.exists() and (tmp_path / "quarantine" / bad.name).is_file()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and bad.name in warnings[0] and why in warnings[0]
    caplog.clear()
    assert len(results.read(tmp_path, rows.TRIALS, columns=["trial_id"])) == 2
    assert not caplog.records                      # moved once: no second warning


def test_projection_and_files_without_late_columns(tmp_path):
    _good_files(tmp_path)
    f = next(tmp_path.glob("trials-*.parquet"))
    df = pd.read_parquet(f)
    # A file written before a config field existed: the field takes its default.
    df.drop(columns=["noise_sigma"]).to_parquet(f)
    out = results.read(tmp_path, rows.TRIALS)
    assert len(out) == 2 and list(out.columns) == results.columns()
    assert set(out["noise_sigma"]) == {CFG_A.noise_sigma}
    assert list(results.read(tmp_path, rows.TRIALS, ["config_hash"]).columns) == ["config_hash"]
    assert not (tmp_path / "quarantine").exists()


def test_a_newer_schema_is_refused_not_moved(tmp_path):
    _good_files(tmp_path)
    f = next(tmp_path.glob("trials-*.parquet"))
    pd.read_parquet(f).assign(schema_version=results.SCHEMA_VERSION + 1).to_parquet(f)
    with pytest.raises(results.SchemaError, match="install the version that wrote it"):
        results.read(tmp_path, rows.TRIALS)
    assert f.is_file()


def _state(epoch: int) -> dict:
    return {"epoch": epoch, "weights": torch.full((3,), float(epoch))}


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "missing"])
def test_a_bad_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage):
    checkpoint.save(tmp_path, _state(1))
    checkpoint.save(tmp_path, _state(2))
    assert checkpoint.load(tmp_path)["epoch"] == 2
    latest = tmp_path / checkpoint.FILENAME
    if damage == "truncated":
        latest.write_bytes(latest.read_bytes()[:200])
    elif damage == "empty":
        latest.write_bytes(b"")
    elif damage == "garbage":
        latest.write_bytes(b"\x00not a checkpoint" * 50)
    else:                                          # killed between the two renames of save()
        latest.unlink()
    assert checkpoint.exists(tmp_path)
    with caplog.at_level(logging.WARNING, logger="qimera_core.checkpoint"):
        state = checkpoint.load(tmp_path)
    assert state["epoch"] == 1 and torch.equal(state["weights"], torch.ones(3))
    assert len(caplog.records) == 1 and checkpoint.PREVIOUS in caplog.records[0].getMessage()


def test_a_bad_only_checkpoint_says_so(tmp_path):
    checkpoint.save(tmp_path, _state(1))
    (tmp_path / checkpoint.FILENAME).write_bytes(b"")
    with pytest.raises(ValueError, match="no state.prev.pt to fall back to"):
        checkpoint.load(tmp_path)


def test_a_truncated_file_blocks_neither_a_sweep_nor_the_analysis(tmp_path, capsys):
    """The new user's case from the issue: one truncated trials file in --results."""
    from analysis.cli import main as analysis
    from sweeps import table9
    from sweeps.launch import main as sweep
    _good_files(tmp_path)
    _truncated(tmp_path / "trials-cut.parquet")
    assert sweep("table9", table9.BLOCKS, ["--smoke-test", "--dry-run", "--results",
                                           str(tmp_path)]) == 0
    assert "table9: 24 trials" in capsys.readouterr().out
    assert (tmp_path / "quarantine" / "trials-cut.parquet").is_file()
    _truncated(tmp_path / "trials-cut2.parquet")
    assert analysis(["status", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "table9" in out.out
    assert (tmp_path / "quarantine" / "trials-cut2.parquet").is_file()
