"""Seeds spent where they decide: the rounds of a race (`--seeds auto`), as pure functions.

Round 0 gives every cell of a race group (a table block) `n0` seeds. After each round the cells
that a one-sided test finds worse than the best (analysis.stats.ties: paired by seed, Holm, at
`alpha`) are out. The best and the `width` challengers most likely to beat it (highest upper
bound of mean_j - mean_best, as in LUCB) get `step` more seeds, until one cell is left, the
survivors are equivalent to the best within `delta` (TOST, or only its upper half with
`stop="best"`), every survivor has `max_seeds`, or the next round would pass a budget.

The race keeps no state of its own: `replay` rebuilds every round from the finished rows in
--results (a round is done when each of its trials has a row), so a killed driver resumes at
the right round and a finished trial is never run again. The log (results/race-<table>.json)
is written from the replay; it holds the settings, which the rows do not.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import stats
from qimera_core.config import TrainConfig
from sweeps import grid
from sweeps.grid import Block

STOPS = ("tost", "best")
# The race flags (dest on the command line, flag) that need --seeds auto; the defaults are
# Settings' (the last two only steer the driver).
RACE_FLAGS = (("n0", "--n0"), ("max_seeds", "--max-seeds"), ("alpha", "--alpha"),
              ("delta", "--delta"), ("width", "--race-width"), ("step", "--race-step"),
              ("stop", "--race-stop"), ("budget_gpu_hours", "--budget-gpu-hours"),
              ("budget_hours", "--budget-hours"), ("remeasure", "--remeasure"),
              ("max_rounds", "--max-rounds"), ("kill_after_round", "--kill-after-round"))


class RaceError(ValueError):
    """A race that cannot run as asked; the message names the flag and the fix."""


@dataclass(frozen=True)
class Settings:
    n0: int = 3                    # seeds every cell gets in round 0
    max_seeds: int = 20            # seeds a cell gets at most
    alpha: float = stats.ALPHA     # level of the elimination and stopping tests
    delta: float = 0.25            # points: survivors this close to the best are equivalent
    width: int = 3                 # challengers per round beside the best; 0 = every survivor
    step: int = 1                  # seeds per chosen cell per round
    stop: str = "tost"             # tost: |mu_j - mu_best| < delta; best: mu_j - mu_best < delta
    budget_gpu_hours: float | None = None   # None = no budget
    budget_hours: float | None = None       # wall-clock hours of the race; None = no budget
    remeasure: int = 0             # fresh seeds for the winner of each group after the race

    def check(self) -> None:
        """Refuse impossible settings before any work, naming the flag and the fix."""
        if self.n0 < 2:
            raise RaceError(f"--n0 must be >= 2 (a test needs two seeds per cell), got "
                            f"{self.n0}")
        if self.max_seeds < self.n0:
            raise RaceError(f"--max-seeds {self.max_seeds} is below --n0 {self.n0}: round 0 "
                            f"already gives every cell {self.n0} seeds; pass --max-seeds >= "
                            f"{self.n0}")
        if not 0 < self.alpha < 1:
            raise RaceError(f"--alpha must be in (0, 1) (e.g. 0.05), got {self.alpha:g}")
        if self.delta <= 0:
            raise RaceError(f"--delta must be > 0 points, got {self.delta:g}")
        if self.width < 0 or self.step < 1:
            raise RaceError(f"--race-width must be >= 0 and --race-step >= 1, got "
                            f"{self.width} and {self.step}")
        for flag, v in (("--budget-gpu-hours", self.budget_gpu_hours),
                        ("--budget-hours", self.budget_hours)):
            if v is not None and not v > 0:
                raise RaceError(f"{flag} must be > 0 hours (or left out for no budget), "
                                f"got {v:g}")
        if self.stop not in STOPS:
            raise RaceError(f"--race-stop must be one of {', '.join(STOPS)}, got {self.stop!r}")
        if self.remeasure < 0:
            raise RaceError(f"--remeasure must be >= 0 seeds, got {self.remeasure}")


@dataclass(frozen=True)
class Cell:
    """One cell of a race group: its seed-0 config (the key is that config's hash) and how the
    tables name it (`fields`: setting and swept axes, as analysis labels them)."""

    config: TrainConfig
    label: str
    fields: Mapping[str, Any]

    @property
    def key(self) -> str:
        return self.config.config_hash

    def at(self, seed: int) -> TrainConfig:
        return dataclasses.replace(self.config, seed=seed)


@dataclass
class Round:
    round: int
    trials: int                                   # trials this round ran
    alive: list[str]                              # labels of the cells raced in this round
    best: dict[str, Any]
    eliminated: list[dict[str, Any]]
    next: dict[str, list[int]]                    # label -> seeds of the next round
    stop: str = ""
    gpu_hours: float = 0.0                        # cumulative, from the rows
    trial_hours: float = 0.0                      # cumulative trial wall time
    wall_hours: float = 0.0                       # cumulative wall clock, first start to last end


@dataclass
class GroupState:
    group: str
    rounds: list[Round] = field(default_factory=list)
    todo: list[TrainConfig] = field(default_factory=list)  # trials of the round in progress
    round: int = 0                                # the round in progress (or the last one)
    stop: str = ""                                # why it ended; "" = still racing
    winner: str = ""
    n: dict[str, int] = field(default_factory=dict)
    remeasured: dict[str, Any] = field(default_factory=dict)   # the winner on fresh seeds


def groups(blocks: Sequence[Block]) -> dict[str, list[Cell]]:
    """The race groups of a table's chosen blocks, by the setting the tables label them with
    ("CIFAR-10 ResNet-20 4w4a"), as the tables pick a best: rows `<setting>/<variant>`, such
    as the main table's GDFQ and Qimera rows, race together."""
    from analysis.load import add_labels
    from analysis.raced import RACE_CELL_FIELDS
    out: dict[str, list[Cell]] = {}
    for block in blocks:
        cfgs = grid.block_trials(block, [0])
        labels = add_labels(pd.DataFrame([c.to_dict() for c in cfgs]))
        for cfg, (_, lab) in zip(cfgs, labels.iterrows(), strict=True):
            fields = {k: _plain(lab[k]) for k in RACE_CELL_FIELDS if k in lab}
            text = " ".join(f"{a}={_plain(getattr(cfg, a))}" for a in block.grid) or \
                str(lab["method_label"])
            out.setdefault(str(fields["setting"]), []).append(
                Cell(cfg, f"{block.row.split('/')[-1]} {text}" if "/" in block.row else text,
                     fields))
    return out


def _plain(v: Any) -> Any:
    """numpy scalars as Python ones (the log is JSON)."""
    return v.item() if hasattr(v, "item") else v


def _values(cell: Cell, seeds: Sequence[int], done: pd.DataFrame) -> dict[int, float]:
    out = {}
    for s in seeds:
        h = cell.at(s).config_hash
        if h in done.index and done.at[h, "status"] == "ok":
            out[s] = float(done.at[h, "top1"])
    return stats.finite(out)


def _cost(done: pd.DataFrame, hashes: Sequence[str]) -> tuple[float, float, float]:
    """(GPU-hours, trial-hours, wall-clock hours) of these trials, from their rows."""
    rows = done.loc[[h for h in hashes if h in done.index]]
    if rows.empty:
        return 0.0, 0.0, 0.0
    end = pd.to_datetime(rows["finished_at"], utc=True, errors="coerce")
    start = end - pd.to_timedelta(rows["wall_time_s"].fillna(0), unit="s")
    wall = (end.max() - start.min()).total_seconds() if end.notna().any() else 0.0
    return (float(rows["gpu_seconds"].fillna(0).sum()) / 3600,
            float(rows["wall_time_s"].fillna(0).sum()) / 3600, max(0.0, wall) / 3600)


def decide(values: Mapping[str, dict[int, float]], n: Mapping[str, int], s: Settings
           ) -> tuple[list[str], pd.DataFrame, str, dict[str, int]]:
    """One look at the alive cells' values: (survivors, the tie test per cell, why the race
    stops or '', cell -> seeds to add next)."""
    # The best by seed-adjusted means: after LUCB rounds the cells have different seeds, and
    # the seeds are shared blocks, so plain means over different seed sets do not compare.
    verdict = stats.ties(values, s.alpha, rank=stats.seed_adjusted_means(values))
    alive = [k for k in values if bool(verdict.at[k, "tied"])]
    best = next(k for k in values if bool(verdict.at[k, "best"]))
    others = [k for k in alive if k != best]
    if not others:
        return alive, verdict, "one cell left", {}
    if s.stop == "tost":
        close = [stats.tost(values[best], values[k], s.delta) for k in others]
        if all(p < s.alpha for p in close):          # a nan (no test possible) is not < alpha
            return alive, verdict, f"every survivor is within ±{s.delta:g} of the best (TOST)", {}
    bounds = {k: stats.upper_bound(values[best], values[k], s.alpha) for k in others}
    if s.stop == "best" and all(b < s.delta for b in bounds.values()):
        return alive, verdict, f"no survivor can beat the best by {s.delta:g} or more", {}
    room = {k: min(s.step, s.max_seeds - n[k]) for k in alive}
    challengers = sorted((k for k in others if room[k] > 0), key=lambda k: -bounds[k])
    if s.width:
        challengers = challengers[:s.width]
    pick = ([best] if room[best] > 0 else []) + challengers
    if not pick:
        return alive, verdict, f"every survivor has {s.max_seeds} seeds (--max-seeds)", {}
    return alive, verdict, "", {k: room[k] for k in pick}


def replay(group: str, cells: Sequence[Cell], done: pd.DataFrame, s: Settings
           ) -> GroupState:
    """Every round of one group's race that the rows in `done` (finished or errored trials,
    indexed by config hash) allow, and the trials of the round in progress."""
    st = GroupState(group=group, n={c.key: 0 for c in cells})
    by_key = {c.key: c for c in cells}
    plan = {c.key: list(range(s.n0)) for c in cells}
    alive = [c.key for c in cells]
    used: list[str] = []
    winner = ""                                   # the best's key once the race has stopped
    while True:
        trials = [by_key[k].at(seed) for k, seeds in plan.items() for seed in seeds]
        st.todo = [t for t in trials if t.config_hash not in done.index]
        if st.todo:
            return st
        for k, seeds in plan.items():
            st.n[k] = max(st.n[k], max(seeds) + 1)
        used += [t.config_hash for t in trials]
        gpu_h, trial_h, wall_h = _cost(done, used)
        if st.stop:                                 # the winner's re-measure round is done
            fresh = _values(by_key[winner], plan[winner], done)
            lo, hi = stats.t_interval(list(fresh.values()))
            st.remeasured = dict(label=by_key[winner].label, seeds=sorted(fresh),
                                 mean=float(sum(fresh.values()) / len(fresh)) if fresh
                                 else math.nan, ci_low=lo, ci_high=hi)
            return st
        values = {k: _values(by_key[k], range(st.n[k]), done) for k in alive}
        empty = [k for k in alive if not values[k]]   # every seed errored or diverged
        values = {k: v for k, v in values.items() if v}
        if not values:
            st.stop = "no cell has a finished value"
            return st
        survivors, verdict, stop, more = decide(values, st.n, s)
        if not stop:
            stop = _budget_stop(s, sum(more.values()), gpu_h, wall_h, len(used))
        best = next(k for k in values if bool(verdict.at[k, "best"]))
        st.rounds.append(Round(
            round=st.round, trials=len(trials), alive=[by_key[k].label for k in alive],
            best=dict(label=by_key[best].label, mean=float(verdict.at[best, "mean"]),
                      n=len(values[best])),
            eliminated=[dict(cell=dict(by_key[k].fields), label=by_key[k].label,
                             mean=float(verdict.at[k, "mean"]), n=len(values[k]),
                             p_holm=float(verdict.at[k, "p_holm"]),
                             test=str(verdict.at[k, "test"]))
                        for k in values if k not in survivors]
            + [dict(cell=dict(by_key[k].fields), label=by_key[k].label, mean=math.nan, n=0,
                    p_holm=math.nan, test="no finished value") for k in empty],
            next={by_key[k].label: list(range(st.n[k], st.n[k] + m)) for k, m in more.items()},
            stop=stop, gpu_hours=gpu_h, trial_hours=trial_h, wall_hours=wall_h))
        alive = survivors
        st.round += 1
        if stop:
            winner = best
            st.stop, st.winner = stop, by_key[winner].label
            if not s.remeasure:
                return st
            first = max(s.max_seeds, st.n[winner])
            plan = {winner: list(range(first, first + s.remeasure))}
            continue
        plan = {k: list(range(st.n[k], st.n[k] + m)) for k, m in more.items()}


def _budget_stop(s: Settings, next_trials: int, gpu_h: float, wall_h: float, used: int
                 ) -> str:
    """Why the next round would pass a budget, or ''. Its cost is estimated from the trials
    measured so far: GPU-hours (or wall hours) per trial times the next round's trials."""
    for budget, spent, flag, unit in ((s.budget_gpu_hours, gpu_h, "--budget-gpu-hours", "GPU-h"),
                                      (s.budget_hours, wall_h, "--budget-hours", "h")):
        more = next_trials * spent / max(1, used)
        if budget and spent + more > budget:
            return (f"the next round (~{more:.3g} {unit}) would pass {flag} {budget:g} "
                    f"({spent:.3g} {unit} used)")
    return ""


def describe(s: Settings) -> str:
    text = (f"n0={s.n0}, max {s.max_seeds} seeds, alpha={s.alpha:g}, delta={s.delta:g}, "
            f"width={s.width or 'all'}, stop={s.stop}")
    for name, v in (("GPU-h budget", s.budget_gpu_hours), ("h budget", s.budget_hours)):
        if v:
            text += f", {v:g} {name}"
    return text + (f", remeasure {s.remeasure}" if s.remeasure else "")


# ---- the log -------------------------------------------------------------------------------------
def log_dict(table: str, name: str, plan: Mapping[str, Any], s: Settings,
             states: Sequence[GroupState]) -> dict[str, Any]:
    """The race log: settings, and per group every round's decisions (see the module doc)."""
    rounds = [{**dataclasses.asdict(r), "group": g.group} for g in states for r in g.rounds]
    stops = [f"{g.group}: {g.stop}" + (f" (winner {g.winner})" if g.winner else "")
             for g in states if g.stop]
    done = all(g.stop and not g.todo for g in states)
    return {"table": table, "name": name, "plan": dict(plan), "settings": dataclasses.asdict(s),
            "rounds": rounds, "stop": "; ".join(stops) if done else "",
            "groups": [{"group": g.group, "round": g.round, "stop": g.stop, "winner": g.winner,
                        "remeasured": g.remeasured, "todo": len(g.todo),
                        "seeds": dict(sorted(g.n.items()))}
                       for g in states]}


def write_log(path: Path, log: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(log, indent=1, default=str), "utf-8")
    tmp.replace(path)                                # never a half-written log


def read_log(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text("utf-8"))
    except ValueError as e:
        raise RaceError(f"race log {path} is unreadable ({e}); move it aside to start the race "
                        "again from the rows (finished trials are reused)") from None
