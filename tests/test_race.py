"""The race (--seeds auto): elimination and stopping on synthetic rows with a known answer, the
replay from rows, the budget stop, bad flags refused before any work, and an offline race that
runs two rounds or more, is killed between rounds and resumes without running a trial twice;
then the tables, status and page on its --results."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import stats
from qimera_core.config import build
from sweeps import race, table9
from sweeps.grid import chosen_blocks

ROOT = Path(__file__).resolve().parents[1]


def cells(n: int = 4) -> list[race.Cell]:
    base = build("digits-smoke")
    return [race.Cell(dataclasses.replace(base, mix_prob=p), f"p={p}",
                      {"setting": "digits", "mix_prob": p})
            for p in (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)[:n]]


def done_rows(cs: list[race.Cell], value, seeds: int, status: str = "ok",
              gpu_s: float = 0.0, wall_s: float = 10.0) -> pd.DataFrame:
    """Rows for seeds 0..seeds-1 of every cell: value(cell index, seed)."""
    rows = []
    for i, c in enumerate(cs):
        for s in range(seeds):
            rows.append(dict(config_hash=c.at(s).config_hash, status=status,
                             top1=value(i, s), gpu_seconds=gpu_s, wall_time_s=wall_s,
                             finished_at=pd.Timestamp("2026-01-01", tz="UTC")
                             + pd.Timedelta(seconds=10 * (s + 1))))
    return pd.DataFrame(rows, columns=["config_hash", "status", "top1", "gpu_seconds",
                                       "wall_time_s", "finished_at"]).set_index("config_hash")


# ---- decide and replay on known answers ----------------------------------------------------
def look(vals, s=None, r=1, alive=None, n=None):
    return race.decide(vals, list(alive or vals), n or {k: len(v) for k, v in vals.items()},
                       s or race.Settings(), r)


def test_look_alpha_spends_at_most_alpha():
    shares = [race.look_alpha(0.05, r) for r in range(1, 10_000)]
    assert shares[0] == pytest.approx(6 * 0.05 / math.pi ** 2)
    assert sum(shares) < 0.05 and sum(shares) == pytest.approx(0.05, rel=1e-3)


def test_clearly_worse_cells_go_out_and_one_left_stops():
    vals = {"a": {0: 70.0, 1: 71.0, 2: 69.5}, "b": {0: 60.0, 1: 61.0, 2: 59.0},
            "c": {0: 50.0, 1: 52.0, 2: 49.0}}
    d = look(vals)
    assert d.survivors == ["a"] and d.stop == "one cell left" and d.more == {}
    assert set(d.out) == {"b", "c"} and all(o["p"] < d.alpha for o in d.out.values())
    assert d.alpha == pytest.approx(race.look_alpha(0.05, 1))


def test_seeds_go_to_the_pick_and_the_cells_that_block_the_stop():
    vals = {"a": {0: 70.0, 1: 72.0, 2: 68.0}, "b": {0: 69.0, 1: 73.0, 2: 67.0},
            "c": {0: 69.9, 1: 71.0, 2: 69.0}, "d": {0: 68.0, 1: 74.0, 2: 66.0}}
    d = look(vals, race.Settings(width=2))
    assert set(d.survivors) == set(vals) and d.stop == "" and not d.out
    top2 = sorted((k for k in vals if k != d.pick), key=lambda k: -d.upper[k])[:2]
    assert list(d.more) == [d.pick, *top2] and set(d.more.values()) == {1}
    assert look(vals, race.Settings(width=0)).more.keys() == set(vals)
    # a cell whose bound is already below delta gets no seed
    tight = {k: dict(v) for k, v in vals.items()}
    tight["e"] = {0: 40.0, 1: 42.0, 2: 38.0}
    d = look(tight, race.Settings(width=0))
    assert "e" in d.out and "e" not in d.more


def test_the_best_stop_is_delta_good_and_tost_and_max_seeds():
    rng = np.random.default_rng(0)
    base = rng.normal(70, 1, 12)
    vals = {"a": dict(enumerate(base)),                     # paired gaps +-0.02: mean 0
            "b": dict(enumerate(base - 2.0 + np.tile([0.02, -0.02], 6)))}
    vals["c"] = dict(enumerate(base - 0.01 + np.tile([0.02, -0.02], 6)))
    d = look(vals)
    assert d.survivors == ["a", "c"] or d.survivors == ["c", "a"]
    assert "b" in d.out and "no other cell can beat the pick by 0.25" in d.stop
    assert "within ±0.25 of the pick" in look(vals, race.Settings(stop="tost")).stop
    noisy = {"a": {0: 70.0, 1: 75.0, 2: 65.0}, "b": {0: 69.0, 1: 76.0, 2: 64.0}}
    assert "has 3 seeds (--max-seeds)" in look(noisy, race.Settings(n0=3, max_seeds=3)).stop


def test_the_screen_steers_seeds_and_decides_nothing():
    # c is about 1 point below a on every seed: the race's simultaneous bounds cannot yet put
    # it out or clear it, the per-comparison screen at 0.01 says it will not beat a by delta
    base = np.array([70.0, 72.0, 68.0, 71.0])
    vals = {"a": dict(enumerate(base)),
            "b": dict(enumerate(base + [-0.6, 0.9, -0.8, 0.3])),
            "c": dict(enumerate(base - 1.0 + [0.45, -0.4, 0.35, -0.4]))}
    plain, screened = look(vals, race.Settings(screen=0.0)), look(vals, race.Settings())
    # the same decisions: who is out, the pick, the race's bounds
    assert plain.out == screened.out == {} and plain.pick == screened.pick == "a"
    assert plain.upper == screened.upper and plain.upper["c"] >= 0.25
    assert "c" in plain.more and "c" not in screened.more and "b" in screened.more
    # the screen's bound of mu_c - mu_a by hand: the lower of the paired t bound at 0.01 and
    # the pooled one (seed-blocked residual variance, df (3 - 1)(4 - 1) = 6)
    d = np.array([vals["c"][j] - vals["a"][j] for j in range(4)])
    paired = d.mean() + sps.t.ppf(0.99, 3) * d.std(ddof=1) / 2
    y = np.array([[vals[k][j] for j in range(4)] for k in "abc"])
    resid = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + y.mean()
    pooled = d.mean() + sps.t.ppf(0.99, 6) * math.sqrt((resid ** 2).sum() / 6 * 2 / 4)
    sb = stats.cell_bounds(vals, 0.01, each=True)
    assert sb.upper[2, 0] == pytest.approx(min(paired, pooled)) and min(paired, pooled) < 0.25


def test_the_screen_stop_is_not_a_claim_and_growth_sizes_rounds():
    jitter = [[0, 0.1, -0.1], [0.1, -0.1, 0], [-0.1, 0, 0.1]]
    vals = {k: {s: [70.0, 69.9, 69.8][i] + [0, 3, -3][s] + jitter[i][s] for s in range(3)}
            for i, k in enumerate("abc")}
    d = look(vals, race.Settings(screen=0.05))
    assert not d.out and d.upper["b"] >= 0.25                 # no claim at alpha can be made
    assert "at the screen's per-comparison level 0.05" in d.stop and "not a claim" in d.stop
    assert look(vals).stop == ""                              # at 0.01, b still contends
    noisy = {"a": {0: 70.0, 1: 75.0, 2: 65.0, 3: 71.0}, "b": {0: 69.0, 1: 76.0, 2: 64.0, 3: 70.5}}
    n = {"a": 8, "b": 8}
    assert look(noisy, race.Settings(growth=0.25), n=n).more == {"a": 2, "b": 2}  # ceil(8/4)
    assert look(noisy, race.Settings(growth=0.5, max_seeds=11), n=n).more == {"a": 3, "b": 3}
    assert look(noisy, race.Settings(growth=0.0, step=2), n=n).more == {"a": 2, "b": 2}
    with pytest.raises(race.RaceError, match="--race-screen must be in"):
        race.Settings(screen=1.0).check()
    with pytest.raises(race.RaceError, match="--race-growth must be in"):
        race.Settings(growth=-1).check()


def test_a_raced_tables_bold_is_one_more_look_of_the_race():
    from analysis import raced
    from analysis.racelog import GroupLog, RaceLog
    groups = [GroupLog(group=g, round=r, stop="", winner="", remeasured={}, todo=0, seeds={})
              for g, r in (("A", 4), ("B", 6))]
    log = RaceLog(table="table9", name="t", plan={}, settings={"alpha": 0.05}, rounds=[],
                  stop="", groups=groups)
    assert raced.bold_alpha(log, 0.05) == pytest.approx(6 * 0.05 / (math.pi ** 2 * 7 ** 2))
    assert raced.bold_alpha(None, 0.1) == 0.1
    # the race's looks and the table's bold together spend at most alpha
    assert sum(race.look_alpha(0.05, r) for r in range(1, 8)) < 0.05


def test_out_cells_stay_out_and_still_bound_the_pick():
    vals = {"a": {0: 70.0, 1: 71.0, 2: 69.5}, "b": {0: 69.0, 1: 72.0, 2: 68.0},
            "c": {0: 50.0, 1: 52.0, 2: 49.0}}
    d = look(vals, r=3, alive=["a", "b"])                  # c went out earlier
    assert "c" not in d.survivors and "c" not in d.out and "c" in d.upper


def _race(x, s):
    """One race on x[cell, seed] (the loop of replay, on arrays): (survivors, out, stop, n)."""
    keys = [str(i) for i in range(len(x))]
    n = {k: s.n0 for k in keys}
    alive, out, r = list(keys), set(), 0
    while True:
        r += 1
        vals = {k: {j: float(x[int(k), j]) for j in range(n[k])} for k in keys}
        d = race.decide(vals, alive, n, s, r)
        out |= set(d.out)
        alive = d.survivors
        if d.stop:
            return alive, out, d.stop, n
        for k, m in d.more.items():
            n[k] += m


def test_equal_cells_are_not_put_out():
    # the race's guarantee, small: 5 equal cells, seed std 1, a shared seed effect
    rng = np.random.default_rng(7)
    races, hit = 40, 0
    s = race.Settings(max_seeds=8)
    for _ in range(races):
        x = rng.normal(0, 1, (5, 8)) + rng.normal(0, 0.5, 8)
        hit += bool(_race(x, s)[1])
    assert hit <= 2                        # alpha 0.05: expect 2 of 40 at most (binomial 91 %)


def test_a_near_tie_keeps_the_true_best():
    rng = np.random.default_rng(8)
    s = race.Settings(max_seeds=8)
    lost = sum("0" in _race(np.array([0.1, 0, 0, 0, 0])[:, None] + rng.normal(0, 1, (5, 8))
                            + rng.normal(0, 0.5, 8), s)[1] for _ in range(40))
    assert lost <= 2


def test_a_constant_gap_goes_out_and_two_equal_seeds_do_not_end_it():
    block = np.array([0.0, 3.0, -2.0, 1.0, 0.5, -1.0])
    x = np.vstack([70 + block, 69.5 + block, 65 + block + [0.3, -0.2, 0.5, -0.4, 0.1, 0.0]])
    assert _race(x, race.Settings(n0=6, max_seeds=6))[1] >= {"1"}
    # n0 = 2, a cell 0.01 below the best on both seeds: no certainty, no "one cell left"
    d = look({"a": {0: 70.0, 1: 71.0}, "b": {0: 69.99, 1: 70.99}}, race.Settings(n0=2))
    assert not d.out and d.stop != "one cell left"


def test_a_nan_never_decides():
    vals = {"a": {0: 70.0, 1: 71.0, 2: 72.0}, "b": stats.finite({0: math.nan, 1: math.nan}),
            "c": {0: 69.0, 1: 70.5, 2: 71.2}}
    d = look(vals, n={"a": 3, "b": 2, "c": 3})
    assert d.pick in ("a", "c") and "b" not in d.survivors and "b" not in d.upper


def test_replay_rounds_from_rows_and_the_true_best_wins():
    cs = cells(4)
    truth = [70.0, 62.0, 69.8, 55.0]
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.5, (4, 40))
    block = rng.normal(0, 1.0, 40)                            # shared seed effect
    value = lambda i, s: truth[i] + block[s] + noise[i, s]    # noqa: E731
    s = race.Settings(n0=3, max_seeds=8, width=3)
    (st,) = race.replay({"g": cs}, done_rows(cs, value, 0), s)
    assert st.round == 0 and len(st.todo) == 12 and not st.rounds       # round 0 to run
    rounds_seen = 0
    for seeds in range(3, 9):
        (st,) = race.replay({"g": cs}, done_rows(cs, value, seeds), s)
        rounds_seen = max(rounds_seen, len(st.rounds))
        if st.stop:
            break
    assert st.stop and rounds_seen >= 1
    out = {e.label for r in st.rounds for e in r.eliminated}
    assert {"p=0.25", "p=0.55"} <= out and st.winner in ("p=0.1", "p=0.4")
    assert all(e.key in {c.key for c in cs} for r in st.rounds for e in r.eliminated)
    assert not st.todo


def test_a_resumed_replay_makes_the_same_decisions():
    """The race is its rows: replaying after any round (a killed driver) gives the same log."""
    cs = cells(4)
    rng = np.random.default_rng(5)
    x = np.array([70.0, 69.0, 69.9, 66.0])[:, None] + rng.normal(0, 1, (4, 12))
    s = race.Settings(n0=3, max_seeds=12, width=2)
    rows = done_rows(cs, lambda i, j: x[i, j], 0)
    partial = []
    while True:
        (st,) = race.replay({"g": cs}, rows, s)
        partial.append([dataclasses.asdict(r) for r in st.rounds])
        if not st.todo:
            break
        new = pd.DataFrame([dict(config_hash=t.config_hash, status="ok",
                                 top1=x[[c.key for c in cs].index(
                                     dataclasses.replace(t, seed=0).config_hash), t.seed],
                                 gpu_seconds=0.0, wall_time_s=10.0,
                                 finished_at=pd.Timestamp("2026-01-01", tz="UTC"))
                            for t in st.todo]).set_index("config_hash")
        rows = pd.concat([rows, new])
    final = partial[-1]
    for k, seen in enumerate(partial):
        assert seen == final[:len(seen)] and len(seen) == k


def test_errored_and_diverged_trials_end_their_round_without_a_value():
    cs = cells(2)
    rows = done_rows(cs, lambda i, s: 70.0 - 10 * i + s, 3)
    rows.iloc[0, rows.columns.get_loc("status")] = "error"
    rows.iloc[4, rows.columns.get_loc("top1")] = float("nan")   # cell 1, seed 1 diverged
    (st,) = race.replay({"g": cs}, rows, race.Settings(n0=3))
    assert len(st.rounds) == 1 and st.rounds[0].trials == 6 and st.n[cs[0].key] == 3
    assert st.rounds[0].best == dict(label="p=0.1", key=cs[0].key, mean=71.5, n=2)


def test_one_budget_for_the_whole_race_across_groups():
    a, b = cells(3), [race.Cell(dataclasses.replace(c.config, mix_classes=25), c.label + " K",
                                c.fields) for c in cells(3)]
    jitter = [[0, 0.1, -0.1], [0.1, -0.1, 0], [-0.1, 0, 0.1]]
    value = lambda i, s: [70.0, 69.9, 69.8][i] + [0, 3, -3][s] + jitter[i][s]  # noqa: E731
    rows = pd.concat([done_rows(a, value, 3, gpu_s=360.0), done_rows(b, value, 3, gpu_s=360.0)])
    # 18 trials x 0.1 GPU-h = 1.8 used; the next round (two groups) would pass 2.2
    # (screen=0: at the default screen these consistent 0.1-point gaps already end the race)
    states = race.replay({"A": a, "B": b}, rows, race.Settings(n0=3, budget_gpu_hours=2.2,
                                                                screen=0.0))
    assert all("would pass --budget-gpu-hours 2.2" in st.stop for st in states)
    assert all("whole race" in st.stop and not st.todo for st in states)
    # per group each would fit (0.9 + 0.4 < 2.2): only the whole race's count stops it
    states = race.replay({"A": a, "B": b}, rows, race.Settings(n0=3, budget_gpu_hours=5.0,
                                                                screen=0.0))
    assert not any(st.stop for st in states) and all(st.todo for st in states)


def test_remeasure_gives_the_winner_fresh_seeds_inside_the_budget():
    cs = cells(2)
    rows = done_rows(cs, lambda i, s: [70.0, 40.0][i] + s % 2, 3)
    (st,) = race.replay({"g": cs}, rows, race.Settings(n0=3, max_seeds=5, remeasure=2))
    assert st.stop == "one cell left" and [t.seed for t in st.todo] == [5, 6]
    fresh = pd.DataFrame([dict(config_hash=cs[0].at(s).config_hash, status="ok", top1=v,
                               gpu_seconds=0.0, wall_time_s=1.0,
                               finished_at=pd.Timestamp("2026-01-02", tz="UTC"))
                          for s, v in ((5, 68.0), (6, 69.0))]).set_index("config_hash")
    (st,) = race.replay({"g": cs}, pd.concat([rows, fresh]),
                        race.Settings(n0=3, max_seeds=5, remeasure=2))
    assert not st.todo and st.remeasured["mean"] == 68.5 and st.remeasured["seeds"] == [5, 6]
    # a budget the re-measure would pass: skipped, said so
    costly = done_rows(cs, lambda i, s: [70.0, 40.0][i] + s % 2, 3, gpu_s=3600.0)
    (st,) = race.replay({"g": cs}, costly, race.Settings(n0=3, max_seeds=5, remeasure=2,
                                                         budget_gpu_hours=7.0))
    assert st.stop == "one cell left" and not st.todo
    assert "would pass --budget-gpu-hours 7" in st.remeasured["skipped"]


def test_round0_budget_and_delta_refused_before_any_work():
    s = race.Settings(budget_gpu_hours=1.0)
    with pytest.raises(race.RaceError, match=r"below round 0's estimated cost: 24 trials x "
                                             r"0.1 GPU-h \(from rows\) = 2.4 GPU-h"):
        race.check_round0(s, 24, 0.1, 0.2, "from rows")
    race.check_round0(s, 5, 0.1, 0.2, "from rows")
    race.check_round0(s, 24, None, None, "")                  # nothing to estimate from
    with pytest.raises(race.RaceError, match=r"--delta 2 is at least the whole spread of "
                                             r"CIFAR-100 .*\(1.45 points\)"):
        race.check_delta(race.Settings(delta=2.0), {"CIFAR-100 ResNet-20 4w4a": 1.45})
    race.check_delta(race.Settings(delta=0.25), {"x": 1.45, "digits": math.nan})


@pytest.mark.parametrize("kw, msg", [
    (dict(max_seeds=2), "--max-seeds 2 is below --n0 3"),
    (dict(alpha=1.0), "--alpha must be in (0, 1)"),
    (dict(budget_hours=0.0), "--budget-hours must be > 0"),
    (dict(budget_gpu_hours=-1.0), "--budget-gpu-hours must be > 0"),
    (dict(n0=1), "--n0 must be >= 2"),
])
def test_settings_refused(kw, msg):
    with pytest.raises(race.RaceError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        race.Settings(**kw).check()


def test_race_groups_are_keyed_by_block_and_their_cells_by_config_hash():
    from sweeps import main as main_table
    g9 = race.groups(table9.BLOCKS)
    assert list(g9) == [b.row for b in table9.BLOCKS] and all(len(c) == 24 for c in g9.values())
    gm = race.groups(main_table.BLOCKS[:12])          # two presets, six methods each
    assert list(gm) == ["cifar10-resnet20-4w4a", "cifar10-resnet20-5w5a"]
    cells = gm["cifar10-resnet20-4w4a"]
    assert sorted(c.fields["method_label"] for c in cells) == \
        ["AdaDFQ", "DSG", "GDFQ", "Qimera", "ZAQ", "ZeroQ"]
    assert {c.key for c in cells} == {c.config.config_hash for c in cells}


def test_race_cells_hash_like_the_fixed_plan():
    from sweeps.grid import plan
    groups = race.groups(chosen_blocks(table9.BLOCKS, offline=True))
    hashes = {c.at(s).config_hash for cs in groups.values() for c in cs for s in range(2)}
    assert hashes == {c.config_hash for c in plan(table9.BLOCKS, seeds=2, offline=True)}


# ---- bad input on the command line, before any work ----------------------------------------
def _cli(*argv: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeps.table9", "--offline", "--dry-run",
                           "--results", str(tmp / "r"), "--storage", str(tmp / "s"), *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv, msg", [
    (["--seeds", "5", "--max-seeds", "10"], "--max-seeds is a race flag but --seeds 5"),
    (["--seeds", "auto", "--max-seeds", "2"], "--max-seeds 2 is below --n0 3"),
    (["--seeds", "auto", "--budget-gpu-hours", "0"], "--budget-gpu-hours must be > 0"),
    (["--seeds", "auto", "--alpha", "0"], "--alpha must be in (0, 1)"),
    (["--seeds", "auto", "--n0", "1"], "--n0 must be >= 2"),
    (["--seeds", "auto", "--delta", "0"], "--delta must be > 0"),
])
def test_bad_race_flags_one_line(argv, msg, tmp_path):
    p = _cli(*argv, tmp=tmp_path)
    err = [ln for ln in p.stderr.splitlines() if "error:" in ln]
    assert p.returncode == 2 and len(err) == 1 and msg in err[0], p.stderr
    assert not (tmp_path / "r").exists()                   # nothing written


def test_delta_at_least_the_papers_spread_refused(tmp_path):
    p = subprocess.run([sys.executable, "-m", "sweeps.table9", "--dry-run", "--seeds", "auto",
                        "--delta", "2", "--results", str(tmp_path / "r"), "--storage",
                        str(tmp_path / "s")], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    err = [ln for ln in p.stderr.splitlines() if "error:" in ln]
    assert p.returncode == 2 and len(err) == 1, p.stderr
    assert "--delta 2 is at least the whole spread of cifar100-resnet20-4w4a" in err[0]
    assert not (tmp_path / "r").exists()


def test_results_of_another_table_refused(tmp_path):
    from qimera_core import results
    (tmp_path / "r").mkdir()
    row = results.make_row(build("digits-smoke"), {"top1": 50.0}, table="table8",
                           trial_id="t0", status="ok")
    results.write([row], tmp_path / "r", "trials")
    before = sorted(p.name for p in (tmp_path / "r").iterdir())
    p = _cli("--seeds", "auto", tmp=tmp_path)
    assert p.returncode == 2 and "holds rows of table8 only, none of table9" in p.stderr
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == before


# ---- an offline race, killed between rounds, resumed ----------------------------------------
@pytest.mark.integration
@pytest.mark.slow
def test_offline_race_killed_between_rounds_resumes_and_tables_show_it(digits_cache, tmp_path):
    pytest.importorskip("ray")
    argv = ["--smoke-test", "--mix-prob", "0.4", "--seeds", "auto", "--n0", "2",
            "--max-seeds", "4", "--storage", str(tmp_path / "s"), "--results",
            str(tmp_path / "r"), "--cache-dir", str(digits_cache), "--num-cpus", "2"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    driver = subprocess.Popen([sys.executable, "-m", "sweeps.table9", *argv,
                               "--kill-after-round", "0"], cwd=ROOT, env=env,
                              start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = driver.communicate(timeout=600)
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)           # the Ray it started
        except ProcessLookupError:
            pass
    assert driver.returncode == -signal.SIGKILL, out[-3000:]
    from sweeps import rows
    first = rows.read_trials(tmp_path / "r")
    assert len(first) == 8 and set(first["status"]) == {"ok"}   # round 0: 4 cells x 2 seeds
    log = json.loads((tmp_path / "r" / "race-table9.json").read_text())
    assert log["rounds"] == [] or log["rounds"][0]["round"] == 0
    resumed = subprocess.run([sys.executable, "-m", "sweeps.table9", *argv, "--resume"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = rows.read_trials(tmp_path / "r")
    assert trials["config_hash"].is_unique, "a trial ran twice"
    assert set(first["config_hash"]) <= set(trials["config_hash"])
    again = trials.set_index("trial_id").loc[first["trial_id"], "finished_at"]
    assert list(again) == list(first["finished_at"])         # round 0's rows untouched
    log = json.loads((tmp_path / "r" / "race-table9.json").read_text())
    assert len(log["rounds"]) >= 2 and log["stop"]
    assert "race round 1" in resumed.stdout
    assert 2 < trials.groupby("mix_classes").size().max() <= 4      # --max-seeds 4
    assert len(trials) == sum(r["trials"] for r in log["rounds"])  # every row is a logged round's

    from analysis import load, resolve, tables
    from analysis.pagestate import page_state
    res = load(tmp_path / "r")
    t = tables.build("table9", res)
    out_cells = t.cells[t.cells["race_out"] != ""]
    eliminated = {e["cell"]["mix_classes"] for r in log["rounds"] for e in r["eliminated"]}
    assert set(out_cells["mix_classes"]) == eliminated
    for _, c in out_cells.iterrows():
        assert "out in round" in c["text"] and f"n={int(c['n'])}" in c["text"]
    assert any("Raced seeds" in n for n in t.notes)
    assert any("one more look of the race" in n for n in t.notes)     # bold's level
    assert resolve.resolve(t).lines()
    state = page_state(tmp_path / "r")
    t9 = next(x for x in state["tables"] if x["name"] == "table9")
    assert any(line.startswith("race: round 0") for line in t9["resolves"])
    assert sum(c["top"] for c in t9["cells"]) == 1
