"""The race (--seeds auto): elimination and stopping on synthetic rows with a known answer, the
replay from rows, the budget stop, bad flags refused before any work, and an offline race that
runs two rounds or more, is killed between rounds and resumes without running a trial twice;
then the tables, status and page on its --results."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

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
def test_clearly_worse_cells_go_out_and_one_left_stops():
    vals = {"a": {0: 70.0, 1: 71.0, 2: 69.5}, "b": {0: 60.0, 1: 61.0, 2: 59.0},
            "c": {0: 50.0, 1: 52.0, 2: 49.0}}
    alive, verdict, stop, more = race.decide(vals, {"a": 3, "b": 3, "c": 3}, race.Settings())
    assert alive == ["a"] and stop == "one cell left" and more == {}
    assert verdict.loc["b", "p_holm"] < 0.05 and verdict.loc["c", "p_holm"] < 0.05


def test_tied_cells_get_seeds_best_first_then_highest_upper_bound():
    vals = {"a": {0: 70.0, 1: 72.0, 2: 68.0}, "b": {0: 69.0, 1: 73.0, 2: 67.0},
            "c": {0: 69.9, 1: 71.0, 2: 69.0}, "d": {0: 68.0, 1: 74.0, 2: 66.0}}
    s = race.Settings(width=2)
    alive, verdict, stop, more = race.decide(vals, {k: 3 for k in vals}, s)
    assert set(alive) == set(vals) and stop == ""
    ub = {k: race.stats.upper_bound(vals["a"], vals[k]) for k in "bcd"}
    top2 = sorted(ub, key=lambda k: -ub[k])[:2]
    assert list(more) == ["a", *top2] and set(more.values()) == {1}
    assert race.decide(vals, {k: 3 for k in vals}, race.Settings(width=0))[3].keys() == \
        set(vals)


def test_tost_and_best_stops_and_max_seeds():
    rng = np.random.default_rng(0)
    base = rng.normal(70, 1, 10)
    vals = {"a": dict(enumerate(base)),                     # paired gaps +-0.05: mean 0
            "b": dict(enumerate(base + np.tile([0.05, -0.05], 5)))}
    n = {"a": 10, "b": 10}
    assert "within ±0.25" in race.decide(vals, n, race.Settings())[2]
    assert "can beat the best" in race.decide(vals, n, race.Settings(stop="best"))[2]
    noisy = {"a": {0: 70.0, 1: 75.0, 2: 65.0}, "b": {0: 69.0, 1: 76.0, 2: 64.0}}
    assert "every survivor has 3 seeds" in race.decide(
        noisy, {"a": 3, "b": 3}, race.Settings(n0=3, max_seeds=3))[2]


def test_replay_rounds_from_rows_and_the_true_best_wins():
    cs = cells(4)
    truth = [70.0, 62.0, 69.8, 55.0]
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.5, (4, 40))
    block = rng.normal(0, 1.0, 40)                            # shared seed effect
    value = lambda i, s: truth[i] + block[s] + noise[i, s]    # noqa: E731
    s = race.Settings(n0=3, max_seeds=8, width=3)
    st = race.replay("g", cs, done_rows(cs, value, 0), s)
    assert st.round == 0 and len(st.todo) == 12 and not st.rounds       # round 0 to run
    rounds_seen = 0
    for seeds in range(3, 9):
        st = race.replay("g", cs, done_rows(cs, value, seeds), s)
        rounds_seen = max(rounds_seen, len(st.rounds))
        if st.stop:
            break
    assert st.stop and rounds_seen >= 2
    out = {e["label"] for r in st.rounds for e in r.eliminated}
    assert {"p=0.25", "p=0.55"} <= out and st.winner in ("p=0.1", "p=0.4")
    # every planned trial has a row: the replay never asks for a seed twice
    assert not st.todo


def test_errored_and_diverged_trials_end_their_round_without_a_value():
    cs = cells(2)
    rows = done_rows(cs, lambda i, s: 70.0 - 10 * i + s, 3)
    rows.iloc[0, rows.columns.get_loc("status")] = "error"
    rows.iloc[4, rows.columns.get_loc("top1")] = float("nan")   # cell 1, seed 1 diverged
    st = race.replay("g", cs, rows, race.Settings(n0=3))
    assert len(st.rounds) == 1 and st.rounds[0].trials == 6 and st.n[cs[0].key] == 3
    assert st.rounds[0].best == dict(label="p=0.1", mean=71.5, n=2)   # seed 0 errored


def test_budget_stop_estimates_the_next_round_from_measured_trials():
    cs = cells(3)
    jitter = [[0, 0.1, -0.1], [0.1, -0.1, 0], [-0.1, 0, 0.1]]
    value = lambda i, s: [70.0, 69.9, 69.8][i] + [0, 3, -3][s] + jitter[i][s]  # noqa: E731
    rows = done_rows(cs, value, 3, gpu_s=360.0)                # 0.1 GPU-h per trial: 0.9 used
    st = race.replay("g", cs, rows, race.Settings(n0=3, budget_gpu_hours=1.0))
    assert "would pass --budget-gpu-hours 1" in st.stop and not st.todo
    st = race.replay("g", cs, rows, race.Settings(n0=3, budget_gpu_hours=5.0))
    assert not st.stop and len(st.todo) == 3


def test_remeasure_gives_the_winner_fresh_seeds():
    cs = cells(2)
    rows = done_rows(cs, lambda i, s: [70.0, 40.0][i] + s % 2, 3)
    st = race.replay("g", cs, rows, race.Settings(n0=3, max_seeds=5, remeasure=2))
    assert st.stop == "one cell left" and [t.seed for t in st.todo] == [5, 6]
    fresh = pd.DataFrame([dict(config_hash=cs[0].at(s).config_hash, status="ok", top1=v,
                               gpu_seconds=0.0, wall_time_s=1.0,
                               finished_at=pd.Timestamp("2026-01-02", tz="UTC"))
                          for s, v in ((5, 68.0), (6, 69.0))]).set_index("config_hash")
    st = race.replay("g", cs, pd.concat([rows, fresh]), race.Settings(n0=3, max_seeds=5,
                                                                      remeasure=2))
    assert not st.todo and st.remeasured["mean"] == 68.5 and st.remeasured["seeds"] == [5, 6]


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
])
def test_bad_race_flags_one_line(argv, msg, tmp_path):
    p = _cli(*argv, tmp=tmp_path)
    err = [ln for ln in p.stderr.splitlines() if "error:" in ln]
    assert p.returncode == 2 and len(err) == 1 and msg in err[0], p.stderr
    assert not (tmp_path / "r").exists()                   # nothing written


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
    from analysis.serve import page_state
    res = load(tmp_path / "r")
    t = tables.table9(res)
    out_cells = t.cells[t.cells["race_out"] != ""]
    eliminated = {e["cell"]["mix_classes"] for r in log["rounds"] for e in r["eliminated"]}
    assert set(out_cells["mix_classes"]) == eliminated
    for _, c in out_cells.iterrows():
        assert "out in round" in c["text"] and f"n={int(c['n'])}" in c["text"]
    assert any("Raced seeds" in n for n in t.notes)
    assert resolve.resolve(t).lines()
    state = page_state(tmp_path / "r")
    t9 = next(x for x in state["tables"] if x["name"] == "table9")
    assert any(line.startswith("race: round 0") for line in t9["resolves"])
    assert sum(c["top"] for c in t9["cells"]) == 1
