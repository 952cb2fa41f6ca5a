"""bench/racing.py on a tiny case: its figures have the expected columns and are probabilities,
its vectorised fixed design is analysis.stats.ties, and its race loop decides as
sweeps.race.replay does on the same values (so the bench measures the shipped rule)."""

from __future__ import annotations

import gc
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import stats
from sweeps import race

BENCH = Path(__file__).resolve().parent.parent / "bench" / "racing.py"


@pytest.fixture(scope="module")
def racing():
    spec = importlib.util.spec_from_file_location("racing_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    gc.collect()
    gc.freeze()      # statsmodels' Holm calls gc.collect() on every table; skip the imports
    yield mod
    gc.unfreeze()


def test_tiny_bench_has_the_columns_and_probabilities(racing):
    frame = racing.bench(["t8-cifar10"], [1.0], reps=20, race_reps=1, fixed=(3, 5),
                         variants={"race": {}}, seed=1)
    assert list(frame["design"]) == ["fixed 3", "fixed 5", "race"]
    for col in ("table", "s", "design", "reps", "P_right", "P_worse_tied", "trials",
                "se_right"):
        assert col in frame
    probs = frame[["P_right", "P_worse_tied"]].to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all()
    assert list(frame["trials"][:2]) == [15, 25]          # 5 cells x n seeds
    assert 15 <= frame["trials"].iloc[2] <= 5 * 20          # n0 ... max_seeds per cell
    v = racing.verdicts(frame)
    assert {"table", "s", "race", "P_right", "trials", "fixed", "fixed_trials", "ratio",
            "wins"} <= set(v.columns)
    assert (v["ratio"] > 0).all()


def test_fixed_design_is_stats_ties(racing):
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (6, 7, 5)) + np.linspace(0, 1.5, 7)[None, :, None]
    best, tied = racing.fixed_design(x, 4, 0.05)
    for r in range(len(x)):
        verdict = stats.ties({i: {j: float(x[r, i, j]) for j in range(4)} for i in range(7)})
        assert int(best[r]) == next(i for i in range(7) if verdict.at[i, "best"])
        assert tied[r].tolist() == [bool(verdict.at[i, "tied"]) for i in range(7)]
    p = [0.01, float("nan"), 0.04, 0.03, 0.2]
    np.testing.assert_allclose(racing.holm_matrix(np.array([p]))[0], stats.holm(p))


def test_race_loop_decides_as_replay(racing):
    from sweeps import table8
    group, cells = next(iter(race.groups(table8.BLOCKS[:1]).items()))
    truth = racing.truth("t8-cifar10")
    keys = [f"dm_layers={c.fields['dm_layers']:g}" for c in cells]
    mu = np.array([truth[k] for k in keys])
    x = racing.draws(mu, 1.0, 0.5, 1, 6, (5,))[0]
    rows = [{"config_hash": c.at(j).config_hash, "status": "ok", "top1": float(x[i, j]),
             "gpu_seconds": 0.0, "wall_time_s": 1.0, "finished_at": "2026-01-01T00:00:00Z"}
            for i, c in enumerate(cells) for j in range(6)]
    done = pd.DataFrame(rows).set_index("config_hash")
    settings = race.Settings(max_seeds=6)   # few rounds: replay hashes every trial a round
    st = race.replay(group, cells, done, settings)
    best, final, survivors, used, stop = racing.run_race(x, keys, settings)
    assert stop == st.stop
    assert keys[[c.label for c in cells].index(st.winner)] == best
    assert [len(final[k]) for k in keys] == [st.n[c.key] for c in cells]
    assert used == sum(st.n.values())
