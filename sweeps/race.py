"""Seeds spent where they decide: the rounds of a race (`--seeds auto`), as pure functions.

Round 0 gives every cell of a race group (a table block) `n0` seeds. After each round (look
r = 1, 2, ...) the group's cells get simultaneous bounds on every pairwise difference
(analysis.stats.pair_bounds) at the look's share of alpha, alpha_r = 6 alpha / (pi^2 r^2), so
that the looks together spend at most alpha: a cell that some other cell is above goes out and
stays out, and "out in round r" is a claim at alpha for the whole race. The pick is the
survivor with the best seed-adjusted mean. The race stops when no other cell, alive or out,
can beat the pick by `delta` or more (its upper bound of mu_j - mu_pick is below delta: the
pick is delta-good at 1 - alpha; LUCB, Kalyanakrishnan et al. 2012), or, with `stop="tost"`,
when every survivor is within +-delta of the pick; when one cell is left; when every cell that
could still beat the pick has `max_seeds`; when none could at the screen (below); or before a
round that would pass a budget.

Where seeds go is a separate, cheaper question than what the race may claim: only the pick and
the survivors that could still beat it by delta get seeds, judged by per-comparison bounds at
`screen` (0.01; 0 = the race's own simultaneous bounds), `width` of them at most (0 = all), each
`max(step, ceil(growth x its seeds))` more. The screen decides nothing: no cell goes out by it,
and a race it ends says so (a stop, not a claim at alpha). Bounds that hold for the whole race
need hundreds of seeds to clear a cell within delta of the pick; the screen lets a cell that is
very likely below wait, which is what makes the race cheaper than a fixed design
(docs/statistics.md, bench/racing.py).

All groups of a table race in lockstep, one round at a time, under one budget: the next
round's cost over every group (a winner's re-measure seeds included) is estimated from the
trials measured so far, and the whole race stops before a round that would pass it.

The race keeps no state of its own: `replay` rebuilds every round from the finished rows in
--results (a round is done when each of its trials has a row), so a killed driver resumes at
the right round and a finished trial is never run again. The log (results/race-<table>.json)
is written from the replay; it holds the settings, which the rows do not.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import racelog, stats
from analysis.racelog import Elimination, RaceLog, RoundLog
from qimera_core.config import TrainConfig
from sweeps import grid
from sweeps.grid import Block

STOPS = ("best", "tost")
# The race flags (dest on the command line, flag) that need --seeds auto; the defaults are
# Settings' (the last two only steer the driver).
RACE_FLAGS = (("n0", "--n0"), ("max_seeds", "--max-seeds"), ("alpha", "--alpha"),
              ("delta", "--delta"), ("width", "--race-width"), ("step", "--race-step"),
              ("screen", "--race-screen"), ("growth", "--race-growth"),
              ("stop", "--race-stop"), ("budget_gpu_hours", "--budget-gpu-hours"),
              ("budget_hours", "--budget-hours"), ("remeasure", "--remeasure"),
              ("max_rounds", "--max-rounds"), ("kill_after_round", "--kill-after-round"))


# What a log written before a setting existed ran with: the screen and the growth came later (a
# race from then continues with --race-screen 0 --race-growth 0 and its --race-width).
LOGGED_BEFORE = {"screen": 0.0, "growth": 0.0}


class RaceError(ValueError):
    """A race that cannot run as asked; the message names the flag and the fix."""


@dataclass(frozen=True)
class Settings:
    n0: int = 3                    # seeds every cell gets in round 0
    max_seeds: int = 20            # seeds a cell gets at most
    alpha: float = stats.ALPHA     # level of the whole race: every elimination and the stop
    delta: float = 0.25            # points: the pick is delta-good when no cell can beat it by this
    width: int = 0                 # challengers per round beside the best; 0 = every one
    screen: float = 0.01           # where seeds go: per-comparison level (0 = the race's bounds)
    step: int = 1                  # seeds per chosen cell per round, at least
    growth: float = 0.25           # ... or this fraction of the cell's seeds, if more
    stop: str = "best"             # best: mu_j - mu_pick < delta for every j; tost: |.| < delta
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
        if not 0 <= self.screen < 1:
            raise RaceError(f"--race-screen must be in [0, 1) (a per-comparison level such as "
                            f"0.05; 0 = the race's own simultaneous bounds), got {self.screen:g}")
        if not 0 <= self.growth <= 4:
            raise RaceError(f"--race-growth must be in [0, 4] (a chosen cell's seeds grow by "
                            f"this fraction a round, e.g. 0.5), got {self.growth:g}")
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
class GroupState:
    group: str
    rounds: list[RoundLog] = field(default_factory=list)
    todo: list[TrainConfig] = field(default_factory=list)  # trials of the round in progress
    round: int = 0                                # the round in progress (or the last one)
    stop: str = ""                                # why it ended; "" = still racing
    winner: str = ""
    n: dict[str, int] = field(default_factory=dict)
    remeasured: dict[str, Any] = field(default_factory=dict)   # the winner on fresh seeds


def groups(blocks: Sequence[Block]) -> dict[str, list[Cell]]:
    """The race groups of a table's chosen blocks, keyed by block: a block's row names its
    setting, and rows `<setting>/<variant>` (the main table's methods of one preset) are one
    group, as the tables pick one best per setting. Cells are keyed by config hash."""
    from analysis.load import add_labels
    out: dict[str, list[Cell]] = {}
    named = ["setting", "method_label", *grid.swept_axes(blocks)]
    for block in blocks:
        cfgs = grid.block_trials(block, [0])
        labels = add_labels(pd.DataFrame([c.to_dict() for c in cfgs]))
        for cfg, (_, lab) in zip(cfgs, labels.iterrows(), strict=True):
            fields = {k: _plain(lab[k]) for k in named if k in lab}
            text = " ".join(f"{a}={_plain(getattr(cfg, a))}" for a in block.grid) or \
                str(lab["method_label"])
            out.setdefault(block.row.split("/")[0], []).append(
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


look_alpha = stats.look_alpha     # the share of alpha spent at look r (analysis shares it)


@dataclass(frozen=True)
class Decision:
    """One look at a group: who is out now, the pick, why the race stops ('' = it goes on), and
    the seeds to add next (cell -> count)."""

    survivors: list[str]
    pick: str
    out: dict[str, dict[str, Any]]      # key -> p, by (key), test, upper: put out at this look
    stop: str
    more: dict[str, int]
    alpha: float                        # this look's level
    upper: dict[str, float]             # key -> simultaneous upper bound of mu_key - mu_pick
    mean: dict[str, float]              # key -> seed-adjusted mean


def decide(values: Mapping[str, Mapping[int, float]], alive: Sequence[str],
           n: Mapping[str, int], s: Settings, look: int) -> Decision:
    """Look `look` (1, 2, ...) at a group: `values` holds every cell with a value, alive or out
    (out cells still bound the others and can block the stop); `alive` the cells still racing;
    `n` the seeds each cell has been given (its next seed is n)."""
    a = look_alpha(s.alpha, look)
    keys = [k for k in values if values[k]]
    b = stats.cell_bounds({k: values[k] for k in keys}, a)
    at = {k: i for i, k in enumerate(b.keys)}
    adj = stats.seed_adjusted_means({k: values[k] for k in keys})
    live = [k for k in alive if k in at]
    out: dict[str, dict[str, Any]] = {}
    for k in live:
        row = b.p[at[k]].copy()
        row[at[k]] = math.inf
        j = int(np.argmin(row))
        if row[j] < a:
            out[k] = dict(p=float(row[j]), by=b.keys[j], test=str(b.test[at[k], j]),
                          upper=float(b.upper[at[k], j]))
    survivors = [k for k in live if k not in out]
    if not survivors and live:          # every bound at once cannot put all out; guard anyway
        keep = max(live, key=lambda k: adj[k])
        out.pop(keep)
        survivors = [keep]
    pick = max(survivors, key=lambda k: adj[k])
    p = at[pick]
    upper = {k: float(b.upper[at[k], p]) for k in keys if k != pick}

    def decision(stop: str, more: dict[str, int]) -> Decision:
        return Decision(survivors, pick, out, stop, more, a, upper, adj)

    if len(survivors) == 1:
        return decision("one cell left", {})
    if s.stop == "tost":
        block = [k for k in survivors if k != pick
                 and not (upper[k] < s.delta and b.upper[p, at[k]] < s.delta)]
        if not block:
            return decision(f"every survivor is within ±{s.delta:g} of the pick", {})
    else:
        block = [k for k in keys if k != pick and not upper[k] < s.delta]
        if not block:
            return decision(f"no other cell can beat the pick by {s.delta:g} or more", {})
    # where seeds go: the survivors that could still beat the pick by delta. With a screen, by
    # per-comparison bounds at that level (a cell the race's bounds cannot yet clear, but which
    # is very likely not above the pick, waits); they only steer seeds, they decide nothing
    if s.screen:
        sb = stats.cell_bounds({k: values[k] for k in keys}, s.screen, each=True)
        sat = {k: i for i, k in enumerate(sb.keys)}
        lead = {k: float(sb.upper[sat[k], sat[pick]]) for k in survivors if k != pick}
        trail = {k: float(sb.upper[sat[pick], sat[k]]) for k in lead}
        contend = [k for k in block if k in lead and (
            lead[k] >= s.delta or (s.stop == "tost" and trail[k] >= s.delta))]
        if not contend:
            return decision(f"no survivor could beat the pick by {s.delta:g} at the screen's "
                            f"per-comparison level {s.screen:g} (where seeds go; not a claim "
                            f"at alpha)", {})
    else:
        lead, contend = upper, [k for k in block if k in survivors]
        if not contend:
            return decision("only cells already out still block the stop (they get no seeds)",
                            {})
    room = {k: min(max(s.step, math.ceil(s.growth * n[k])), s.max_seeds - n[k])
            for k in survivors}
    challengers = sorted((k for k in contend if room[k] > 0), key=lambda k: -lead[k])
    if s.width:
        challengers = challengers[:s.width]
    if not challengers:
        return decision(f"every cell that could still beat the pick by {s.delta:g} has "
                        f"{s.max_seeds} seeds (--max-seeds)", {})
    chosen = ([pick] if room[pick] > 0 else []) + challengers
    return decision("", {k: room[k] for k in chosen})


def replay(groups: Mapping[str, Sequence[Cell]], done: pd.DataFrame, s: Settings
           ) -> list[GroupState]:
    """Every round of the race that the rows in `done` (finished or errored trials, indexed by
    config hash) allow, all groups in lockstep, and the trials of the round in progress."""
    by_key = {g: {c.key: c for c in cells} for g, cells in groups.items()}
    states = {g: GroupState(group=g, n={c.key: 0 for c in cells}) for g, cells in groups.items()}
    plan = {g: {c.key: list(range(s.n0)) for c in cells} for g, cells in groups.items()}
    alive = {g: [c.key for c in cells] for g, cells in groups.items()}
    winner: dict[str, str] = {}           # group -> the pick's key once it has stopped
    used: list[str] = []
    while plan:
        trials = {g: [by_key[g][k].at(seed) for k, seeds in p.items() for seed in seeds]
                  for g, p in plan.items()}
        todo = {g: [t for t in ts if t.config_hash not in done.index] for g, ts in trials.items()}
        if any(todo.values()):
            for g, t in todo.items():
                states[g].todo = t
            return list(states.values())
        used += [t.config_hash for ts in trials.values() for t in ts]
        gpu_h, trial_h, wall_h = _cost(done, used)
        after: dict[str, dict[str, list[int]]] = {}
        for g, p in plan.items():
            st, cells = states[g], by_key[g]
            if g in winner:                     # the winner's re-measure round is done
                st.remeasured = _remeasured(cells[winner[g]], p[winner[g]], done)
                continue
            for k, seeds in p.items():
                st.n[k] = max(st.n[k], max(seeds) + 1)
            values = {k: _values(cells[k], range(st.n[k]), done) for k in cells if st.n[k]}
            empty = [k for k in alive[g] if not values.get(k)]  # every seed errored or diverged
            values = {k: v for k, v in values.items() if v}
            live = [k for k in alive[g] if k in values]
            if not live:
                st.stop = "no cell has a finished value"
                continue
            d = decide(values, live, st.n, s, st.round + 1)
            st.rounds.append(_round(g, st.round, len(trials[g]), alive[g], cells, values, st.n, d,
                                    empty, gpu_h, trial_h, wall_h))
            alive[g] = d.survivors
            st.round += 1
            if d.stop:
                st.stop, st.winner = d.stop, cells[d.pick].label
                if s.remeasure:
                    winner[g] = d.pick
                    first = max(s.max_seeds, st.n[d.pick])
                    after[g] = {d.pick: list(range(first, first + s.remeasure))}
            else:
                after[g] = {k: list(range(st.n[k], st.n[k] + m)) for k, m in d.more.items()}
        if after:
            why = _budget_stop(s, sum(len(v) for p in after.values() for v in p.values()),
                               gpu_h, wall_h, len(used))
            if why:
                for g in after:
                    st = states[g]
                    if g in winner:
                        st.remeasured = dict(skipped=why)
                    else:
                        st.stop = why
                        st.rounds[-1] = dataclasses.replace(st.rounds[-1], stop=why)
                        st.winner = st.rounds[-1].best["label"]
                after = {}
        plan = after
    for st in states.values():
        st.todo = []
    return list(states.values())


def _remeasured(cell: Cell, seeds: Sequence[int], done: pd.DataFrame) -> dict[str, Any]:
    fresh = _values(cell, seeds, done)
    lo, hi = stats.t_interval(list(fresh.values()))
    return dict(label=cell.label, seeds=sorted(fresh),
                mean=float(sum(fresh.values()) / len(fresh)) if fresh else math.nan,
                ci_low=lo, ci_high=hi)


def _round(group: str, r: int, trials: int, alive: Sequence[str], cells: Mapping[str, Cell],
           values: Mapping[str, Mapping[int, float]], n: Mapping[str, int], d: Decision,
           empty: Sequence[str], gpu_h: float, trial_h: float, wall_h: float) -> RoundLog:
    def mean(k: str) -> float:
        return float(sum(values[k].values()) / len(values[k]))
    return RoundLog(
        group=group, round=r, trials=trials, alive=[cells[k].label for k in alive], alpha=d.alpha,
        best=dict(label=cells[d.pick].label, key=d.pick, mean=mean(d.pick),
                  n=len(values[d.pick])),
        eliminated=[Elimination(cell=dict(cells[k].fields), label=cells[k].label, key=k,
                                mean=mean(k),
                         n=len(values[k]), p=o["p"], by=cells[o["by"]].label, test=o["test"],
                         upper=o["upper"], trials=_hashes(cells[k], n[k]))
                    for k, o in d.out.items()]
        + [Elimination(cell=dict(cells[k].fields), label=cells[k].label, key=k, mean=math.nan,
                       n=0, p=math.nan, by="", test="no finished value", upper=math.nan,
                       trials=_hashes(cells[k], n[k])) for k in empty],
        next={cells[k].label: list(range(n[k], n[k] + m)) for k, m in d.more.items()},
        stop=d.stop, gpu_hours=gpu_h, trial_hours=trial_h, wall_hours=wall_h)


def _hashes(cell: Cell, n: int) -> list[str]:
    """The config hashes of a cell's trials so far: how the tables find the cell (by hash)."""
    return [cell.at(s).config_hash for s in range(n)]


def _budget_stop(s: Settings, next_trials: int, gpu_h: float, wall_h: float, used: int
                 ) -> str:
    """Why the next round would pass a budget, or ''. Its cost is estimated from the trials
    measured so far: GPU-hours (or wall hours) per trial times the next round's trials."""
    for budget, spent, flag, unit in ((s.budget_gpu_hours, gpu_h, "--budget-gpu-hours", "GPU-h"),
                                      (s.budget_hours, wall_h, "--budget-hours", "h")):
        more = next_trials * spent / max(1, used)
        if budget and spent + more > budget:
            return (f"the next round (~{more:.3g} {unit}) would pass {flag} {budget:g} "
                    f"({spent:.3g} {unit} used by the whole race)")
    return ""


def check_round0(s: Settings, trials: int, per_trial_gpu_h: float | None,
                 per_trial_h: float | None, source: str) -> None:
    """Refuse a budget smaller than round 0's estimated cost, before any work."""
    for budget, per, flag, unit in ((s.budget_gpu_hours, per_trial_gpu_h, "--budget-gpu-hours",
                                     "GPU-h"), (s.budget_hours, per_trial_h, "--budget-hours",
                                                "trial-h")):
        if budget and per is not None and trials * per > budget:
            raise RaceError(f"{flag} {budget:g} is below round 0's estimated cost: {trials} "
                            f"trials x {per:.3g} {unit} ({source}) = {trials * per:.3g} {unit}; "
                            f"raise {flag} or lower --n0")


def check_delta(s: Settings, spreads: Mapping[str, float]) -> None:
    """Refuse a --delta at least the whole spread of a group's cells (the paper's values), where
    every cell is within delta of every other and the race has nothing to find."""
    for group, spread in spreads.items():
        if math.isfinite(spread) and s.delta >= spread:
            raise RaceError(f"--delta {s.delta:g} is at least the whole spread of {group}'s "
                            f"cells in the paper ({spread:.2f} points): every cell would be "
                            f"within delta of the best; pass a --delta below {spread:.2f}")


def describe(s: Settings) -> str:
    text = (f"n0={s.n0}, max {s.max_seeds} seeds, alpha={s.alpha:g}, delta={s.delta:g}, "
            f"width={s.width or 'all'}, screen={s.screen:g}, growth={s.growth:g}, "
            f"stop={s.stop}")
    for name, v in (("GPU-h budget", s.budget_gpu_hours), ("h budget", s.budget_hours)):
        if v:
            text += f", {v:g} {name}"
    return text + (f", remeasure {s.remeasure}" if s.remeasure else "")


# ---- the log -------------------------------------------------------------------------------------
def make_log(table: str, name: str, plan: Mapping[str, Any], s: Settings,
             states: Sequence[GroupState]) -> RaceLog:
    """The race log: settings, and per group every round's decisions (see the module doc)."""
    stops = [f"{g.group}: {g.stop}" + (f" (winner {g.winner})" if g.winner else "")
             for g in states if g.stop]
    done = all(g.stop and not g.todo for g in states)
    return RaceLog(table=table, name=name, plan=dict(plan), settings=dataclasses.asdict(s),
                   rounds=[r for g in states for r in g.rounds],
                   stop="; ".join(stops) if done else "",
                   groups=[racelog.GroupLog(group=g.group, round=g.round, stop=g.stop,
                                            winner=g.winner, remeasured=g.remeasured,
                                            todo=len(g.todo), seeds=dict(sorted(g.n.items())))
                           for g in states])


def read_header(path: Path) -> dict[str, Any] | None:
    """The logged race's name, settings and plan (any log version), None without a log."""
    try:
        return racelog.read_header(path)
    except racelog.RaceLogError as e:
        raise RaceError(str(e)) from None
