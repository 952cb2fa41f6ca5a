"""A race (`--seeds auto`) as rounds of Tune experiments driven from the rows: each round is one
experiment (sweeps.experiment) of the trials the race's pure rules (sweeps.race) say come next.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune

from analysis import racelog
from analysis.status import race_lines
from qimera_core import results
from qimera_core.config import TrainConfig, overrides_from_args
from sweeps import grid, race, rows
from sweeps.experiment import experiment_name, print_todo, restore, run_round
from sweeps.grid import Block, GridError
from sweeps.page import keep_open, open_page
from sweeps.plan import (
    race_settings,
    skip_finished,
)

log = logging.getLogger(__name__)


# ---- a race (--seeds auto): rounds of experiments driven from the rows --------------------------
def run_race(table: str, blocks: Sequence[Block], args: argparse.Namespace, prefix: str,
             results_dir: Path) -> int:
    """Race the table's cells (sweeps.race): each round is one Tune experiment,
    `<name>-r<round>`, of the trials the rows say come next. Killed between rounds, the same
    command with --resume replays the rows and goes on; killed within a round, the round's
    experiment is restored from its checkpoints."""
    settings = race_settings(args)
    chosen = grid.chosen_blocks(blocks, only=args.only, smoke_test=args.smoke_test,
                                offline=args.offline, overrides=overrides_from_args(args))
    groups = race.groups(chosen)
    axes = grid.swept_axes(blocks)
    plan = {"smoke_test": args.smoke_test, "offline": args.offline, "only": args.only}
    log_path = results_dir / racelog.LOG_NAME.format(table=table)
    try:
        race.check_delta(settings, paper_spreads(table, groups, grid.swept_axes(blocks)))
        race.check_round0(settings, settings.n0 * sum(map(len, groups.values())),
                          *_trial_cost(table, results_dir))
    except race.RaceError as e:
        raise GridError(str(e)) from None
    name = _race_name(table, args, prefix, results_dir, log_path, plan, settings)
    page = open_page(table, args, results_dir)
    print(f"{table}: racing {sum(map(len, groups.values()))} cells in {len(groups)} groups "
          f"({race.describe(settings)}); log {log_path}")
    status, launched, shown = 0, 0, 0
    while True:
        done = _done_rows(table, results_dir)
        states = race.replay(groups, done, settings)
        race_log = race.make_log(table, name, plan, settings, states)
        if not args.dry_run:
            racelog.write(log_path, race_log)
        lines = race_lines(race_log)[:-1]                  # the rounds so far, not the verdict
        for line in lines[shown:]:
            print(f"{table}: race {line}")
        shown = len(lines)
        todo = [t for st in states for t in st.todo]
        if not todo:
            print(f"{table}: race over: {race_log.stop}; rows in {results_dir}")
            return keep_open(page, table, status)
        r = max(st.round for st in states if st.todo)
        if args.dry_run:
            print(f"{table}: round {r}: {len(todo)} trials to run")
            print_todo(todo, axes)
            return 0
        if args.max_rounds is not None and launched >= args.max_rounds:
            print(f"{table}: stopped after {launched} rounds (--max-rounds); continue with "
                  f"--resume")
            return keep_open(page, table, status)
        todo = skip_finished(table, todo, results_dir)   # adopts other tables' rows
        if todo:
            status |= _race_round(table, todo, args, f"{name}-r{r}", axes, results_dir,
                                  recalibrate=args.recalibrate and not launched)
            launched += 1
        if args.kill_after_round is not None and r >= args.kill_after_round:
            log.warning("--kill-after-round %d: killing the driver", args.kill_after_round)
            os.kill(os.getpid(), signal.SIGKILL)


def _race_round(table: str, todo: Sequence[TrainConfig], args: argparse.Namespace, name: str,
                axes: Sequence[str], results_dir: Path, recalibrate: bool) -> int:
    """One round: restore its experiment if a killed driver left it, else launch it."""
    path = f"{args.storage.rstrip('/')}/{name}"
    if tune.Tuner.can_restore(path):
        print(f"{table}: continuing round experiment {path}")
        return restore(table, path, args, results_dir)
    return run_round(table, todo, args, name, axes, results_dir, recalibrate)


# The paper's name for each swept axis a race group can have (analysis.paper.lookup's params).
_PAPER_PARAMS = {"mix_prob": "p", "mix_classes": "K", "dm_layers": "dm_layers",
                 "noise_sigma": "sigma_z"}


def paper_spreads(table: str, groups: Mapping[str, Sequence[race.Cell]], axes: Sequence[str]
                  ) -> dict[str, float]:
    """Per race group, max - min of the paper's values of its cells, found by the table's swept
    `axes` (nan where the paper has fewer than two of them, e.g. the offline digits settings)."""
    from analysis.load import add_labels
    from analysis.paper import lookup
    out = {}
    for g, cells in groups.items():
        labels = add_labels(pd.DataFrame([c.config.to_dict() for c in cells]))
        found = []
        for c, (_, lab) in zip(cells, labels.iterrows(), strict=True):
            params = {_PAPER_PARAMS[k]: float(v) for k, v in c.fields.items()
                      if k in _PAPER_PARAMS and k in axes and isinstance(v, int | float)}
            hit = lookup(table, lab["dataset"], lab["model"], lab["bits"],
                         str(lab["method_label"]), **params)
            if hit and math.isfinite(hit[0]):
                found.append(hit[0])
        out[g] = max(found) - min(found) if len(found) >= 2 else math.nan
    return out


def _trial_cost(table: str, results_dir: Path) -> tuple[float | None, float | None, str]:
    """(GPU-hours, trial-hours) of one trial, the median of this table's finished rows in
    --results, for the round-0 budget check; (None, None) when there is none to go by."""
    if not results_dir.is_dir():
        return None, None, ""
    df = rows.read_trials(results_dir)
    df = df[(df["table"] == table) & (df["status"] == "ok")] if not df.empty else df
    if df.empty:
        return None, None, ""
    return (float(df["gpu_seconds"].fillna(0).median()) / 3600,
            float(df["wall_time_s"].fillna(0).median()) / 3600,
            f"the median of {len(df)} finished {table} trials in --results")


def _done_rows(table: str, results_dir: Path) -> Any:
    """This table's ended trials (finished or errored), one per config hash, by hash."""
    df = rows.read_trials(results_dir)
    df = df[(df["table"] == table) & df["status"].isin([*rows.FINISHED, "error"])]
    return results.winning_rows(df).set_index("config_hash")


def _race_name(table: str, args: argparse.Namespace, prefix: str, results_dir: Path,
               log_path: Path, plan: Mapping[str, Any], settings: race.Settings) -> str:
    """The race's experiment name; refuses a --results that holds another table's rows, or a
    race of this table with other settings."""
    have = rows.read_trials(results_dir, columns=["table"]) if results_dir.is_dir() else None
    if have is not None and not have.empty and table not in set(have["table"]):
        others = ", ".join(sorted(set(have["table"])))
        raise GridError(f"--results {results_dir} holds rows of {others}"
                        f" only, none of {table}: a race reads its rounds from --results, so "
                        f"pass a fresh directory or the one this {table} race wrote")
    old = race.read_header(log_path)
    if old is None:
        if args.resume:
            raise GridError(f"--resume: no race log {log_path}; start the race without "
                            "--resume (finished trials in --results are reused)")
        return experiment_name(args, prefix)
    mine = dataclasses.asdict(settings)
    logged = {**race.LOGGED_BEFORE, **old["settings"]}
    diff = [f"{k}={mine[k]} (logged {logged.get(k)})" for k in mine if logged.get(k) != mine[k]]
    diff += [f"{k}={plan[k]} (logged {old['plan'].get(k)})" for k in plan
             if old["plan"].get(k) != plan[k]]
    if diff:
        raise GridError(f"--results holds a {table} race with other settings: "
                        f"{'; '.join(diff)}. Pass the same flags to continue it, or a fresh "
                        "--results for a new race")
    return old["name"]


