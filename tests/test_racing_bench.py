"""bench/racing.py on tiny sizes: its figures have the expected columns and are probabilities
with their intervals, its fixed design's bold is analysis.stats.ties, and its race loop on
arrays decides as sweeps.race.replay does on the same values as rows (so the bench measures the
shipped rules)."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
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
    sys.modules[spec.name] = mod          # dataclasses and the workers' pickles look it up
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def test_tiny_bench_has_the_columns_and_probabilities(racing):
    frame, extra = racing.bench(["t8-cifar10"], [1.0], ["equal-5"], reps=20, race_reps=2,
                                fixed=(2, 5), variants={"race": {}}, seed=1)
    assert list(frame["design"]) == ["fixed 2", "fixed 5", "race"] * 2
    assert list(frame["setting"]) == ["t8-cifar10"] * 3 + ["equal-5"] * 3
    for col in ("setting", "kind", "s", "design", "reps", "trials", "stops"):
        assert col in frame
    for c in ("right", "best_lost", "worse_bold", "best_out"):
        p, lo, hi = (frame[f"P_{c}"], frame[f"{c}_lo"], frame[f"{c}_hi"])
        ok = p.notna()
        assert ((p[ok] >= 0) & (p[ok] <= 1)).all()
        assert ((lo[ok] <= p[ok] + 1e-12) & (p[ok] <= hi[ok] + 1e-12)).all()
        assert ((lo[ok] >= 0) & (hi[ok] <= 1)).all()
    assert frame.loc[frame["design"] == "race", "P_best_out"].notna().all()
    assert frame.loc[frame["design"] != "race", "P_best_out"].isna().all()
    assert list(frame["trials"][:2]) == [10, 25]            # 5 cells x n seeds
    assert 15 <= frame["trials"].iloc[2] <= 5 * 20           # n0 ... max_seeds per cell
    assert (frame.loc[frame["setting"] == "equal-5", "P_right"] == 1).all()  # all within delta
    assert set(extra["seconds"]) == {"t8-cifar10 s=1", "equal-5 s=1"}
    v = racing.verdicts(frame)
    # table settings only: the variant, and the best race (the cheapest variant that reaches)
    assert list(v["race"]) == ["race", "best race (race)"]
    assert (v["setting"] == "t8-cifar10").all()
    assert {"setting", "s", "race", "P_right", "right_lo", "race_trials", "fixed",
            "fixed_trials", "ratio", "bound", "wins", "why"} <= set(v.columns)
    assert (v["ratio"] > 0).all()
    assert not v["wins"].iloc[0]                 # 2 races cannot reach a lower end of 0.95
    assert v["why"].iloc[0].startswith("race does not reach")


def test_the_figures_do_not_depend_on_workers(racing):
    kw = dict(reps=10, race_reps=1, fixed=(3,), variants={"race": {}}, seed=2)
    one, _ = racing.bench([], [1.0], ["near-tie", "equal-5"], workers=1, **kw)
    two, _ = racing.bench([], [1.0], ["near-tie", "equal-5"], workers=2, **kw)
    cols = ["setting", "design", "right", "best_lost", "best_out", "worse_bold", "trials"]
    pd.testing.assert_frame_equal(one[cols], two[cols])


def test_fixed_design_bold_is_stats_ties(racing):
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (6, 7, 5)) + np.linspace(0, 2.5, 7)[None, :, None] \
        + rng.normal(0, 0.5, (6, 1, 5))
    best, bold = racing.fixed_design(x, 4, 0.05)
    seen_out = False
    for r in range(len(x)):
        verdict = stats.ties({i: {j: float(x[r, i, j]) for j in range(4)} for i in range(7)})
        assert int(best[r]) == next(i for i in range(7) if verdict.at[i, "best"])
        assert bold[r].tolist() == [bool(verdict.at[i, "tied"]) for i in range(7)]
        seen_out |= not bold[r].all()
    assert seen_out                              # the case tells bold from not bold


@dataclass(frozen=True)
class _Trial:
    config_hash: str
    seed: int


@dataclass(frozen=True)
class _Cell:
    """What replay reads of a race.Cell (a TrainConfig would load torch: slow in a small test)."""
    key: str
    label: str
    fields: dict = field(default_factory=dict)

    def at(self, seed: int) -> _Trial:
        return _Trial(f"{self.key}-s{seed}", seed)


@pytest.mark.parametrize("kw", [{}, {"width": 0, "stop": "tost"}], ids=["default", "w0-tost"])
def test_race_loop_decides_as_replay(racing, kw):
    cells = [_Cell(f"h{d}", f"dm_layers={d}", {"setting": "fake", "dm_layers": d})
             for d in (0, 1, 2, 4, 8)]
    truth = racing.truth("t8-cifar10")
    mu = np.array([truth[c.label] for c in cells])
    mu[-1] -= 3.0                  # a clearly worse cell, so that some cell goes out
    x = racing.draws(mu, 1.0, 0.5, 1, 8, (5,))[0]
    rows = [{"config_hash": c.at(j).config_hash, "status": "ok", "top1": float(x[i, j]),
             "gpu_seconds": 0.0, "wall_time_s": 1.0, "finished_at": "2026-01-01T00:00:00Z"}
            for i, c in enumerate(cells) for j in range(8)]
    done = pd.DataFrame(rows).set_index("config_hash")
    settings = race.Settings(max_seeds=8, **kw)
    (st,) = race.replay({"g": cells}, done, settings)
    run = racing.run_race(x, settings)
    assert st.stop and run.stop == st.stop
    assert cells[run.pick].label == st.winner
    assert run.n.tolist() == [st.n[c.key] for c in cells]
    assert run.looks == len(st.rounds)
    out = {e.key: r.round + 1 for r in st.rounds for e in r.eliminated}   # look = round + 1
    assert out and {cells[i].key: int(run.out_at[i]) for i in np.flatnonzero(run.out_at)} == out
    assert sorted(run.survivors) == sorted(i for i, c in enumerate(cells) if c.key not in out)


def test_the_oracle_bounds_what_any_allocation_saves(racing):
    # ten cells far below and one 0.5 below: knowing the means, the far ones need 2 seeds
    mu = np.array([0.0, -0.5, *[-4.0] * 10])
    far = racing.oracle(mu, 1.0, draws_n=4000)
    assert far["ratio"] > 3 and far["oracle"] < far["uniform"]
    # Table 8 CIFAR-10: three of the four other cells are 0.14-0.45 below; little to save
    t8 = np.array(list(racing.truth("t8-cifar10").values()))
    assert racing.oracle(t8, 1.0, draws_n=4000)["ratio"] < 2
