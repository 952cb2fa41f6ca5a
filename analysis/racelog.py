"""The race log (`results/race-<table>.json`) as types: sweeps.race writes a `RaceLog`, and the
tables, `analysis status` and the live page read one back. It holds the race's settings (which
the rows do not) and every round's decisions; the rows hold the values.

`VERSION` is written into the file. A log of another version is refused with the fix: the race
is its rows, so `--resume` with the same flags writes the log again without running a trial.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSION = 2
LOG_NAME = "race-{table}.json"   # DIR/race-table9.json


class RaceLogError(ValueError):
    """A race log that cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class Elimination:
    """A cell put out at a look: the cell above it (`by`), the simultaneous p-value (below the
    look's alpha) and bound that decided, and the config hashes of its trials so far."""

    label: str
    key: str                          # the cell's seed-0 config hash
    cell: dict[str, Any]              # its setting and axis values, for people
    mean: float
    n: int
    p: float
    by: str
    test: str
    upper: float
    trials: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RoundLog:
    group: str
    round: int
    trials: int                       # trials this round ran
    alive: list[str]                  # labels of the cells raced in this round
    alpha: float                      # this look's share of the race's alpha
    best: dict[str, Any]              # the pick: label, key, mean, n
    eliminated: list[Elimination]
    next: dict[str, list[int]]        # label -> seeds of the next round
    stop: str = ""
    gpu_hours: float = 0.0            # cumulative, from the rows
    trial_hours: float = 0.0          # cumulative trial wall time
    wall_hours: float = 0.0           # cumulative wall clock, first start to last end


@dataclass(frozen=True)
class GroupLog:
    group: str
    round: int
    stop: str
    winner: str
    remeasured: dict[str, Any]        # the winner on fresh seeds, or {"skipped": why}
    todo: int
    seeds: dict[str, int]             # cell key -> seeds given


@dataclass(frozen=True)
class RaceLog:
    table: str
    name: str                         # the race's experiment name
    plan: dict[str, Any]              # smoke_test, offline, only
    settings: dict[str, Any]          # sweeps.race.Settings as a dict
    rounds: list[RoundLog]
    stop: str                         # '' while any group races
    groups: list[GroupLog]
    version: int = VERSION

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], path: Path | str = "race log") -> RaceLog:
        if d.get("version") != VERSION:
            raise RaceLogError(
                f"{path} is a race log of version {d.get('version', 1)}, this code reads "
                f"version {VERSION}; run the race's command again with --resume to rewrite it "
                "from the rows (no trial runs twice)")
        try:
            rounds = [RoundLog(**{**r, "eliminated": [Elimination(**e) for e in r["eliminated"]]})
                      for r in d["rounds"]]
            return cls(table=d["table"], name=d["name"], plan=dict(d["plan"]),
                       settings=dict(d["settings"]), rounds=rounds, stop=d["stop"],
                       groups=[GroupLog(**g) for g in d["groups"]], version=d["version"])
        except (KeyError, TypeError) as e:
            raise RaceLogError(f"{path} is not a race log ({e}); move it aside to start the "
                               "race again from the rows (finished trials are reused)") from None

    @property
    def alpha(self) -> float:
        return float(self.settings.get("alpha", math.nan))


def write(path: Path, log: RaceLog) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(log.to_json(), indent=1, default=str), "utf-8")
    tmp.replace(path)                                # never a half-written log


def read(path: Path) -> RaceLog | None:
    """The log at `path`, None when there is none; RaceLogError when it cannot be read."""
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text("utf-8"))
    except ValueError as e:
        raise RaceLogError(f"race log {path} is unreadable ({e}); move it aside to start the "
                           "race again from the rows (finished trials are reused)") from None
    return RaceLog.from_json(d, path)


def read_header(path: Path) -> dict[str, Any] | None:
    """The race's name, settings and plan from a log of any version (None without a log): a
    driver continuing a race needs only these, and writes the log again at this VERSION."""
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text("utf-8"))
        return {"name": str(d["name"]), "settings": dict(d["settings"]), "plan": dict(d["plan"])}
    except (ValueError, KeyError, TypeError) as e:
        raise RaceLogError(f"race log {path} is unreadable ({e}); move it aside to start the "
                           "race again from the rows (finished trials are reused)") from None
