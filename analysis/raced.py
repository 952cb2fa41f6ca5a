"""A race's marks on a table (sweeps.race wrote the log): which cells went out in which round,
and the note that says what that means for their means."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

# The columns of a cell that a race log names it by (the swept axes of every table).
RACE_CELL_FIELDS = ("setting", "mix_prob", "mix_classes", "dm_layers", "noise_sigma",
                    "method_label")


def outcomes(cells: pd.DataFrame, race: Mapping[str, Any] | None) -> list[str]:
    """'out in round 1' for a cell a race eliminated, '' otherwise. The log names a cell by
    its setting and axis values (RACE_CELL_FIELDS); a table matches on the ones it has."""
    if not race:
        return [""] * len(cells)
    keys = [k for k in RACE_CELL_FIELDS if k in cells.columns]
    out_by_cell = {}
    for r in race.get("rounds", []):
        for e in r.get("eliminated", []):
            out_by_cell[_race_key(e["cell"], keys)] = f"out in round {r['round']}"
    return [out_by_cell.get(_race_key(c, keys), "") if c["kind"] == "ours" else ""
            for _, c in cells.iterrows()]


def _race_key(fields: Mapping[str, Any], keys: Sequence[str]) -> tuple:
    return tuple(round(float(fields[k]), 6) if isinstance(fields.get(k), int | float)
                 else str(fields.get(k)) for k in keys)


def notes(cells: pd.DataFrame, race: Mapping[str, Any] | None) -> list[str]:
    """What the race did, and what that means for the means; the winner's fresh seeds."""
    if not race:
        return []
    rounds = race.get("rounds", [])
    out = (cells["race_out"] != "").sum()
    s = race.get("settings", {})
    note = (f"Raced seeds (n0={s.get('n0')}, alpha={s.get('alpha')} for the whole race, "
            f"delta={s.get('delta')}, max {s.get('max_seeds')} seeds): {len(rounds)} rounds, "
            f"{out} cells out. A cell marked 'out in round r' went out because another cell "
            "was above it by bounds that hold for every cell and every look of the race "
            "together at that alpha (look r spends 6·alpha/(π²·r²) of it): a claim for the "
            "whole race. Its mean rests on fewer seeds and is biased low (it stopped because "
            "it looked bad).")
    stop = race.get("stop", "")
    out_notes = [note + (f" Stopped: {stop}." if stop else " Still running.")]
    for g in race.get("groups", []):
        if g.get("winner"):
            good = any(w in g.get("stop", "") for w in ("can beat the pick", "within ±",
                                                          "one cell left"))
            claim = (f" No other cell is {s.get('delta')} points or more above it, at "
                     f"{1 - float(s.get('alpha', 0.05)):.0%} for the whole race." if good
                     else " The race stopped before it could say how close to the best it is.")
            out_notes.append(f"{g['group']}: the race's pick is {g['winner']} (best by "
                             "seed-adjusted mean, which can differ from ▲, the highest plain "
                             "mean, when cells have different seeds)." + claim)
        m = g.get("remeasured") or {}
        if m.get("skipped"):
            out_notes.append(f"{g['group']}: the winner was not re-measured: {m['skipped']}.")
        if m.get("seeds"):
            ci = (f" [{m['ci_low']:.2f}, {m['ci_high']:.2f}]"
                  if m.get("ci_low") is not None and m["ci_low"] == m["ci_low"] else "")
            out_notes.append(f"{g['group']}: the winner, {m['label']}, re-measured on "
                             f"{len(m['seeds'])} fresh seeds: {m['mean']:.2f}{ci} (its cell "
                             "above pools these with its race seeds, whose mean the selection "
                             "biases up).")
    return out_notes
