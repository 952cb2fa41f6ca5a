"""A race's marks on a table (sweeps.race wrote the log): which cells went out in which round,
and the note that says what that means for their means."""

from __future__ import annotations

import pandas as pd

from . import stats
from .racelog import RaceLog


def bold_alpha(race: RaceLog | None, alpha: float) -> float:
    """The level of a table's bold: `alpha`, or for a raced table one more look of the race (the
    share of the race's alpha after its last look), so that every cell the race put out and the
    table's bold hold together at the race's alpha."""
    if not race or not race.groups:
        return alpha
    looks = max(g.round for g in race.groups)
    return stats.look_alpha(float(race.settings.get("alpha", stats.ALPHA)), looks + 1)


def outcomes(cells: pd.DataFrame, race: RaceLog | None) -> list[str]:
    """'out in round 1' for a cell a race eliminated, '' otherwise. The log lists the config
    hashes of each eliminated cell's trials; a table cell is that cell when its trials' hashes
    (`_hashes`) meet them."""
    if not race:
        return [""] * len(cells)
    out_by_hash = {}
    for r in race.rounds:
        for e in r.eliminated:
            out_by_hash.update(dict.fromkeys(e.trials, f"out in round {r.round}"))
    return [next((out_by_hash[h] for h in sorted(c["_hashes"]) if h in out_by_hash), "")
            if c["kind"] == "ours" else "" for _, c in cells.iterrows()]


def notes(cells: pd.DataFrame, race: RaceLog | None) -> list[str]:
    """What the race did, and what that means for the means; the winner's fresh seeds."""
    if not race:
        return []
    rounds = race.rounds
    out = (cells["race_out"] != "").sum()
    s = race.settings
    note = (f"Raced seeds (n0={s.get('n0')}, alpha={s.get('alpha')} for the whole race, "
            f"delta={s.get('delta')}, max {s.get('max_seeds')} seeds): {len(rounds)} rounds, "
            f"{out} cells out. A cell marked 'out in round r' went out because another cell "
            "was above it by bounds that hold for every cell and every look of the race "
            "together at that alpha (look r spends 6·alpha/(π²·r²) of it): a claim for the "
            "whole race. Its mean rests on fewer seeds and is biased low (it stopped because "
            f"it looked bad). Bold is one more look of the race (at "
            f"{bold_alpha(race, stats.ALPHA):.2g}), so the cells put out and bold hold together "
            f"at {s.get('alpha')}.")
    stop = race.stop
    out_notes = [note + (f" Stopped: {stop}." if stop else " Still running.")]
    for g in race.groups:
        if g.winner:
            good = any(w in g.stop for w in ("can beat the pick", "within ±", "one cell left"))
            claim = (f" No other cell is {s.get('delta')} points or more above it, at "
                     f"{1 - float(s.get('alpha', 0.05)):.0%} for the whole race." if good
                     else " The race stopped before it could say how close to the best it is.")
            out_notes.append(f"{g.group}: the race's pick is {g.winner} (best by "
                             "seed-adjusted mean, which can differ from ▲, the highest plain "
                             "mean, when cells have different seeds)." + claim)
        m = g.remeasured
        if m.get("skipped"):
            out_notes.append(f"{g.group}: the winner was not re-measured: {m['skipped']}.")
        if m.get("seeds"):
            ci = (f" [{m['ci_low']:.2f}, {m['ci_high']:.2f}]"
                  if m.get("ci_low") is not None and m["ci_low"] == m["ci_low"] else "")
            out_notes.append(f"{g.group}: the winner, {m['label']}, re-measured on "
                             f"{len(m['seeds'])} fresh seeds: {m['mean']:.2f}{ci} (its cell "
                             "above pools these with its race seeds, whose mean the selection "
                             "biases up).")
    return out_notes
