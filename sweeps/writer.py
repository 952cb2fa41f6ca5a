"""Results as trials report and end: the Tune callback that writes each epoch's live curve rows
and each ended trial's rows to --results (per run of its pack), and the end-of-experiment
`finish` that writes the rows it could not (a driver killed in between) and sums up."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ray import tune

from qimera_core import results
from sweeps import rows
from sweeps.trial import pack_configs, pack_gpus, pack_members

log = logging.getLogger(__name__)


class ResultsWriter(tune.Callback):
    """Writes each reported epoch to `--results` as live curves rows, and trials rows (with
    the curves in one file, replacing the live ones) as each Tune trial ends: per run of its
    pack, each with its own config hash.

    Curves are buffered per running trial and run, and saved with Tune's experiment state, so a
    driver that is killed and resumed loses none; an epoch replayed after a restore is kept once.
    """

    def __init__(self, table: str, results_dir: Path) -> None:
        self.table = table
        self.results_dir = results_dir
        self._curves: dict[str, dict[int, dict[int, dict[str, Any]]]] = {}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        pack_wide = {k: result[k] for k in ("device_name", "time_total_s") if k in result}
        curves = self._curves.setdefault(trial.trial_id, {})
        cfgs = pack_configs(trial.config)
        share = pack_gpus(trial.config) / len(cfgs)
        for i, member in enumerate(pack_members(result)):
            if "epoch" not in member or member.get("epoch") != result.get("epoch"):
                continue                   # a diverged run's last report, written already
            keep = {**{k: member[k] for k in results.METRICS if k in member}, **pack_wide}
            curves.setdefault(i, {})[int(member["epoch"])] = keep
            # Live rows: the page and `analysis` see this epoch now, not when the trial ends.
            rows.write_live_curve(self.table, self.results_dir,
                                  rows.member_id(trial.trial_id, i, len(cfgs)), cfgs[i], keep,
                                  gpus=share, pack_id=trial.trial_id, pack_size=len(cfgs))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trial, error="")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trial, error=_error_text(trial))

    def get_state(self) -> dict[str, Any] | None:
        return {"curves": self._curves}

    def set_state(self, state: dict[str, Any]) -> None:
        self._curves = state.get("curves", {})

    def _write(self, trial: Any, error: str) -> None:
        curves = self._curves.pop(trial.trial_id, {})
        cfgs = pack_configs(trial.config)
        todo = rows.unrecorded(self.results_dir, trial.trial_id, cfgs)
        for i in set(range(len(cfgs))) - set(todo):   # written before a driver restart, or
            rows.drop_live_curves(self.results_dir,   # finished by another driver: adopt it
                                  rows.member_id(trial.trial_id, i, len(cfgs)))
            adopt_finished(self.table, self.results_dir, cfgs[i].config_hash)
        if todo:
            write_trial(self.table, self.results_dir, trial.trial_id, trial.config,
                        trial.last_result or {}, error, curves, runs=todo)


def adopt_finished(table: str, results_dir: Path, config_hash: str) -> None:
    """File another table's finished row of `config_hash` (and its curves) under `table` too."""
    done = rows.finished_rows(results_dir)
    rows.adopt(results_dir, table, done[done["config_hash"] == config_hash])


def _error_text(trial: Any) -> str:
    """The trial's error trace: the driver's own copy, which reaches storage only later."""
    path = trial.error_file
    if path and Path(path).is_file():
        text = Path(path).read_text()
    else:
        err = trial.get_error()
        text = str(err) if err else "trial failed (Tune recorded no error)"
    return text[-4000:]                               # the end of a traceback says the most


def write_trial(table: str, results_dir: Path, trial_id: str, params: Mapping[str, Any],
                metrics: Mapping[str, Any], error: str,
                curves: Mapping[int, Mapping[int, Mapping[str, Any]]] | None = None,
                runs: Sequence[int] | None = None) -> None:
    """The rows of one Tune trial: per run of its pack (or of `runs`, indices into it), a
    trials row and its curve rows (`curves`: run index -> epoch -> metrics)."""
    cfgs = pack_configs(params)
    n = len(cfgs)
    share = pack_gpus(params) / n                     # each run's part of the pack's GPUs
    members = pack_members(metrics)
    pack_wide = {k: metrics[k] for k in ("device_name", "time_total_s") if k in metrics}
    trial_rows, curve_rows = [], []
    for i in range(n) if runs is None else runs:
        cfg, run_id = cfgs[i], rows.member_id(trial_id, i, n)
        last = {**(members[i] if i < len(members) else {}), **pack_wide}
        row = rows.trial_row(table, run_id, cfg, last, error=error, gpus=share,
                             pack_id=trial_id, pack_size=n)
        trial_rows.append(row)
        curve_rows += rows.curve_rows(table, run_id, cfg, (curves or {}).get(i, {}).values(),
                                      status=row["status"], gpus=share, pack_id=trial_id,
                                      pack_size=n)
        log.info("%s %s: %s top1=%.2f (best-epoch %.2f)", table, run_id, row["status"],
                 row["top1"], row["best_top1"])
    # Curves first: a trials row (what readers and resume look for) implies its curves exist.
    results.write(curve_rows, results_dir, rows.CURVES)
    results.write(trial_rows, results_dir, rows.TRIALS)
    for row in trial_rows:                  # the final file holds the same epochs
        rows.drop_live_curves(results_dir, row["trial_id"])


def finish(table: str, result_grid: Any, results_dir: Path) -> int:
    """Write rows the callback could not (a driver killed in between), then summarise."""
    counts: dict[str, int] = {}
    for res in result_grid:
        trial_id = res.metrics.get("trial_id") or _trial_id_from_path(res.path)
        error = str(res.error)[-4000:] if res.error else ""
        cfgs = pack_configs(res.config)
        if not res.metrics and not error:   # ended at once: its runs were finished already
            for cfg in cfgs:
                adopt_finished(table, results_dir, cfg.config_hash)
            counts["reused"] = counts.get("reused", 0) + len(cfgs)
            continue
        todo = rows.unrecorded(results_dir, trial_id, cfgs)
        if todo:
            write_trial(table, results_dir, trial_id, res.config, res.metrics, error, runs=todo)
        for i in set(range(len(cfgs))) - set(todo):
            adopt_finished(table, results_dir, cfgs[i].config_hash)
        members = pack_members(res.metrics)
        for i, cfg in enumerate(cfgs):
            status = rows.status_of(members[i] if i < len(members) else {}, error, cfg.epochs)
            counts[status] = counts.get(status, 0) + 1
    print(f"{table}: {sum(counts.values())} runs in the experiment: "
          + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f"; rows in {results_dir}")
    return 1 if counts.get("error") else 0


def _trial_id_from_path(path: str) -> str:
    return Path(path).name.split("--")[0]             # experiment.TrialDirName puts the id first
