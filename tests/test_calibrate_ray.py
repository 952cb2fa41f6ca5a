"""--pack auto on a local 2-CPU Ray: the first sweep measures the pack curve in a Ray task
with a trial's resources and caches it in the cache dir; a rerun finds it there."""

import json
import shutil

import pytest

pytest.importorskip("ray")

from sweeps import rows, table9  # noqa: E402
from sweeps.launch import main  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_smoke_sweep_calibrates_caches_and_reuses(local_ray, digits_cache, tmp_path, capsys):
    cache = tmp_path / "cache"                      # a cache of its own: no calibration yet
    shutil.copytree(digits_cache, cache)
    (cache / "calibration.json").unlink(missing_ok=True)

    def sweep(results: str) -> str:
        assert main("table9", table9.BLOCKS, [
            "--smoke-test", "--mix-prob", "0.4", "--pack", "auto", "--storage",
            str(tmp_path / "storage"), "--results", str(tmp_path / results),
            "--cache-dir", str(cache)]) == 0
        return capsys.readouterr().out

    out = sweep("r1")
    assert "pack calibration on " in out and "(cached)" not in out
    assert "member-steps/s" in out and f"cached in {cache / 'calibration.json'}" in out
    entries = json.loads((cache / "calibration.json").read_text())
    (entry,) = entries.values()
    assert entry["rows"][0]["n"] == 1 and entry["size"] >= 1
    assert "torch " in entry["key"] and "thread" in entry["device"]
    trials = rows.read_trials(tmp_path / "r1")
    assert len(trials) == 4 and set(trials["status"]) == {"ok"}

    out = sweep("r2")                               # fresh results: the 4 trials run again
    assert "(cached)" in out
    assert json.loads((cache / "calibration.json").read_text()) == entries
    assert len(rows.read_trials(tmp_path / "r2")) == 4
