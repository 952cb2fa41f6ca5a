"""Cost and status summary of a results directory: trials ok/error/diverged/running, GPU-hours
and wall time per table (per cell, the table CSVs carry `gpu_hours` and `wall_hours`)."""

from __future__ import annotations

import pandas as pd

from .load import Results, in_table
from .racelog import RaceLog  # noqa: E402

_COUNTS = ("ok", "error", "diverged", "stopped", "running")


def _row(name: str, trials: pd.DataFrame, running: pd.DataFrame) -> dict:
    counts = trials["status"].value_counts()
    return {"table": name, "trials": len(trials) + len(running),
            **{s: int(counts.get(s, 0)) for s in _COUNTS[:-1]}, "running": len(running),
            "gpu_hours": trials["gpu_seconds"].fillna(0).sum() / 3600,
            "wall_hours": (trials["wall_time_s"].fillna(0).sum()
                           + running["wall_time_s"].fillna(0).sum()) / 3600,
            "settings": ", ".join(sorted(set(trials["setting"]) | set(running.get("setting", []))))}


def summary(results: Results) -> pd.DataFrame:
    """One row per table plus `all` (each trial counted once, even when two tables share it).

    `running` = trials that reported epochs but have no trial row yet (or were killed).
    `wall_hours` of running trials counts up to their last report.
    """
    trials, running = results.trials, results.running
    names = set().union(*trials["tables"]) if not trials.empty else set()
    names |= set().union(*running["tables"]) if not running.empty else set()
    rows = []
    for name in sorted(names):
        mine = trials[[name in t for t in trials["tables"]]] if not trials.empty else trials
        live = in_table(running, name)
        rows.append(_row(name, mine, live))
    rows.append(_row("all", trials, running))
    return pd.DataFrame(rows)


def status_line(results: Results) -> str:
    """'12 trials: 10 ok, 1 error, 1 diverged, 0 stopped, 2 running; 0.42 GPU-h, 1.3 h wall'."""
    s = summary(results).iloc[-1]
    return (f"{s['trials']} trials: {s['ok']} ok, {s['error']} error, {s['diverged']} diverged, "
            f"{s['stopped']} stopped, "
            f"{s['running']} running; {s['gpu_hours']:.2f} GPU-h, {s['wall_hours']:.2f} h wall")


def to_markdown(frame: pd.DataFrame) -> str:
    return "**Trial status and cost** (GPU-hours from `gpu_seconds`, wall time from " \
           "`wall_time_s`)\n\n" + frame.to_markdown(index=False, floatfmt=".3f") + "\n"


def resolution_lines(results: Results, alpha: float = 0.05, covariate: bool = False,
                     robust: bool = False) -> list[str]:
    """Per table with finished rows: what it resolves (ties, axes, claims), and its race."""
    from . import resolve
    from .tables import make_tables
    out = []
    if results.trials.empty or not (results.trials["status"] == "ok").any():
        return out
    for table in make_tables(results, alpha=alpha):
        out += ["", f"{table.name}: what it resolves"]
        out += [f"  {line}" for line in resolve.resolve(table, covariate, robust).lines()]
        race = results.races.get(table.name)
        if race:
            out += [f"  race: {line}" for line in race_lines(race)]
    return out


def race_lines(race: RaceLog) -> list[str]:
    """One line per round of a race log, and how it stopped."""
    out = []
    for r in race.rounds:
        gone = ", ".join(f"{e.label} (below {e.by}, p={e.p:.2g})" if e.by
                         else f"{e.label} ({e.test})" for e in r.eliminated)
        group = f" ({r.group})" if r.group else ""
        best = r.best
        out.append(f"round {r.round}{group}: {r.trials} trials, {len(r.alive)} cells alive, "
                   f"look alpha {r.alpha:.2g}"
                   + (f", pick {best['label']} ({best['mean']:.2f}, n={best['n']})" if best
                      else "")
                   + (f"; out: {gone}" if gone else "")
                   + (f"; next: {sum(map(len, r.next.values()))} trials" if r.next else "")
                   + (f"; stop: {r.stop}" if r.stop else "")
                   + f"; {r.gpu_hours:.3f} GPU-h, {r.trial_hours:.3f} trial-h so far")
    out.append(f"stopped: {race.stop}" if race.stop else "still running")
    return out
