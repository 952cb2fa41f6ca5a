"""Two sweeps at once (Table 9 and Table 8 smoke, each with its own driver and local Ray) into
one --results: every row of both survives, each table's rows are complete (the config both
tables share is run once or, if both start it at the same moment, twice, harmlessly), and
neither driver reruns what the other finished."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

from analysis import load  # noqa: E402
from sweeps import rows  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
# Table 9 narrowed to p = 0.4 (4 trials) and Table 8 (5 trials) share one config:
# p = 0.4, K = 10, dm_layers = 1.
SWEEPS = {"table9": ["--mix-prob", "0.4"], "table8": []}


def _driver(table: str, tmp: Path, cache: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", f"sweeps.{table}", "--smoke-test", *SWEEPS[table],
           "--address", "local", "--num-cpus", "1", "--storage", str(tmp / "storage"),
           "--results", str(tmp / "results"), "--cache-dir", str(cache), *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_two_drivers_one_results_directory(digits_cache, tmp_path):
    drivers = {t: _driver(t, tmp_path, digits_cache) for t in SWEEPS}
    out = {t: p.communicate(timeout=600)[0] for t, p in drivers.items()}
    for t, p in drivers.items():
        assert p.returncode == 0, out[t][-3000:]

    trials = rows.read_trials(tmp_path / "results")
    assert set(trials["status"]) == {"ok"}
    for table, n in (("table9", 4), ("table8", 5)):
        mine = trials[trials["table"] == table]
        assert mine["config_hash"].nunique() == n, (table, mine[["trial_id", "config_hash"]])
    shared = set(trials.loc[trials["table"] == "table9", "config_hash"]) & set(
        trials.loc[trials["table"] == "table8", "config_hash"])
    assert len(shared) == 1
    # The shared config ran once (the later driver adopted the row) or, started by both at the
    # same moment, twice: never more, and readers keep one row per config.
    assert trials.loc[trials["config_hash"].isin(shared), "trial_id"].nunique() in (1, 2)
    res = load(tmp_path / "results")
    assert len(res.trials) == 8 and res.trials["config_hash"].is_unique
    assert res.trials.loc[res.trials["config_hash"].isin(shared), "tables"].iloc[0] == \
        frozenset({"table8", "table9"})

    curves = rows.read_curves(tmp_path / "results")
    raw = load(tmp_path / "results").curves
    assert not raw.duplicated(["trial_id", "epoch"]).any()
    for table in SWEEPS:
        ids = set(trials.loc[trials["table"] == table, "trial_id"])
        mine = curves[curves["table"] == table]
        assert set(mine["trial_id"]) == ids
        assert len(mine) == 3 * len(ids)               # smoke trials run 3 epochs, each once

    for table in SWEEPS:                                # neither reruns the other's work
        again = _driver(table, tmp_path, digits_cache, "--dry-run")
        text = again.communicate(timeout=300)[0]
        assert again.returncode == 0 and " 0 to run" in text, text
