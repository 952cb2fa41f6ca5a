"""Run a table's trials on Ray Tune: plan them (sweeps.plan), start or join Ray, launch the
packs as Tune trials (sweeps.trial) with the callback that writes Parquet rows as they end
(sweeps.writer), resume an interrupted experiment; and search mode's Tune run. The CLI of every
table script is `main` here.

    python -m sweeps.table9 --smoke-test --storage /tmp/s --results /tmp/r
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs
import ray
from ray import tune

from analysis import racelog
from analysis.status import race_lines
from qimera_core import results, tablespec
from qimera_core.config import TrainConfig, overrides_from_args
from sweeps import calibrate, grid, race, rows, shared, trackers
from sweeps.cli import build_parser
from sweeps.grid import Block, GridError
from sweeps.page import keep_open, open_page
from sweeps.plan import (
    gpus_by_teacher,
    pack_label,
    pack_sizes,
    place,
    plan_packs,
    plan_trials,
    prepare_all,
    race_settings,
    skip_finished,
    span,
    trial_slots,
)
from sweeps.trial import member_key, pack_configs, trainable
from sweeps.writer import ResultsWriter, finish

log = logging.getLogger(__name__)

# A pack's row in Tune's table: top1 is the mean over its members, min and max beside it.
PROGRESS_METRICS = ("epoch", "top1", "top1_min", "top1_max", "live", "step_time_s")


# ---- Ray -------------------------------------------------------------------------------------
def running_cluster() -> str | None:
    """The Ray cluster this node belongs to, if any: $RAY_ADDRESS, or the one `ray start` (run
    by `ray up` on a cluster head) recorded in Ray's temp dir. `ray submit` runs the sweep
    script on the head, so this is how it joins the cluster without `--address`."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    marker = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    return "auto" if marker.is_file() else None


def start_ray(args: argparse.Namespace) -> None:
    """Join --address, or the cluster this node runs, or start a private local Ray (unless this
    process runs one already, as in tests). `--address local` always starts a private one."""
    if ray.is_initialized():
        return
    address = args.address or running_cluster()
    if address and address != "local":
        log.info("joining the Ray cluster at %s (pass --address local for a private Ray)",
                 address)
        try:
            ray.init(address=address)
            return
        except ConnectionError as e:
            if args.address:
                raise
            log.warning("no running Ray cluster at %s (%s); starting a local one", address, e)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=args.dashboard,
             dashboard_host="127.0.0.1")


# ---- experiments in storage ------------------------------------------------------------------
def storage_path(storage: str) -> str:
    """A URI as given; a local path made absolute (trials and Tune run in other directories)."""
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


def experiment_name(args: argparse.Namespace, prefix: str) -> str:
    return args.name or f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def latest_experiment(storage: str, prefix: str) -> str:
    fs, root = pyarrow.fs.FileSystem.from_uri(storage)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    names = sorted(i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory
                   and i.base_name.startswith(prefix + "-"))
    if not names:
        raise GridError(f"--resume: no experiment {prefix}-* under {storage}; pass --resume "
                        "NAME, or the --storage of the run to continue")
    return names[-1]


# ---- Tune ------------------------------------------------------------------------------------
def _quiet_tune(args: argparse.Namespace) -> None:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")   # the classic table shows our columns
    if getattr(args, "smoke_test", False) or getattr(args, "offline", False):   # short epochs
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


class TrialDirName:
    """Trial folder names that say what the trial is: `<trial_id>--mix_prob=0.4_seed=0`, and
    for a pack `<trial_id>--pack6--mix_prob=0.1-0.85_seed=0`."""

    def __init__(self, axes: Sequence[str]) -> None:
        self.axes = [*axes, "seed"]

    def __call__(self, trial: Any) -> str:
        cfgs = [c.to_dict() for c in pack_configs(trial.config)]
        tags = "_".join(f"{a}={span([c[a] for c in cfgs])}" for a in self.axes if a in cfgs[0])
        safe = "".join(c if c.isalnum() or c in "._=-" else "-" for c in tags)
        size = f"pack{len(cfgs)}--" if len(cfgs) > 1 else ""
        return f"{trial.trial_id}--{size}{safe}"[:120]


def launch(table: str, name: str, space: dict[str, Any], axes: Sequence[str],
           args: argparse.Namespace, results_dir: Path, **tune_config: Any) -> int:
    """Run `space` (a {"config": ..., "run": ...} param space) as experiment `name`."""
    _quiet_tune(args)
    print(f"{table}: experiment {args.storage}/{name}; if interrupted, continue it with "
          f"--resume {name}")
    columns = ({"pack/size": "runs", "pack/label": "values"} if "pack" in space
               else {f"config/{a}": a for a in (*axes, "seed")})
    reporter = tune.CLIReporter(parameter_columns=columns,
                                metric_columns=list(PROGRESS_METRICS),
                                max_column_length=60 if "pack" in space else 20,
                                max_report_frequency=10 if args.smoke_test
                                else 30 if getattr(args, "offline", False) else 60)
    run_config = tune.RunConfig(
        name=name, storage_path=args.storage,
        failure_config=tune.FailureConfig(max_failures=args.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=args.keep_checkpoints),
        callbacks=[ResultsWriter(table, results_dir), *trackers.callbacks(args, table, name)],
        progress_reporter=reporter,
        verbose=1)                                     # the status table; 2+ print every result
    tuner = tune.Tuner(trainable(), param_space=space, run_config=run_config,
                       tune_config=tune.TuneConfig(
                           max_concurrent_trials=args.max_concurrent or None,
                           reuse_actors=args.reuse_actors,
                           trial_dirname_creator=TrialDirName(axes), **tune_config))
    return finish(table, tuner.fit(), results_dir)


def resume(table: str, prefix: str, args: argparse.Namespace, results_dir: Path) -> int:
    """Tuner.restore the experiment: finished trials stay done, others continue from their
    last checkpoint, errored ones are retried. Rows go to the original run's --results."""
    name = latest_experiment(args.storage, prefix) if args.resume == "latest" else args.resume
    path = f"{args.storage.rstrip('/')}/{name}"
    if not tune.Tuner.can_restore(path):
        raise GridError(f"--resume: {path} holds no Tune experiment to restore")
    print(f"{table}: resuming {path}")
    page = open_page(table, args, results_dir)
    return keep_open(page, table, restore(table, path, args, results_dir))


def restore(table: str, path: str, args: argparse.Namespace, results_dir: Path) -> int:
    """Continue the Tune experiment at `path`: its unfinished trials from their checkpoints."""
    start_ray(args)
    shared.check_nodes(args.storage, [])
    _quiet_tune(args)
    _, finished = rows.recorded(results_dir)
    tuner = tune.Tuner.restore(path, trainable=trainable(frozenset(finished)),
                               resume_errored=True)
    return finish(table, tuner.fit(), results_dir)


# ---- a table script --------------------------------------------------------------------------
def main(table: str, blocks: Sequence[Block] | None = None, argv: list[str] | None = None,
         doc: str | None = None) -> int:
    """The CLI of every table script, `main("table9")` (the blocks of its registered spec,
    qimera_core.tablespec, unless given); returns the exit status."""
    if blocks is None:
        blocks = tablespec.get(table).blocks
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    parser = build_parser(table, doc)
    args = parser.parse_args(argv)
    prefix = (f"{table}-smoke" if args.smoke_test else f"{table}-offline" if args.offline
              else table)
    try:
        configs = plan_trials(blocks, args)            # every trial validated; no Ray yet
        args.storage = storage_path(args.storage)
        results_dir = args.results.expanduser().resolve()
        if args.seeds == "auto":
            return run_race(table, blocks, args, prefix, results_dir)
        if args.resume:
            return resume(table, prefix, args, results_dir)
        todo = skip_finished(table, configs, results_dir)
        page = open_page(table, args, results_dir)
    except (GridError, results.SchemaError, race.RaceError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"{table}: {len(configs)} trials, {len(configs) - len(todo)} reused, "
          f"{len(todo)} to run")
    axes = grid.swept_axes(blocks)
    if args.dry_run or not todo:
        _print_todo(todo if args.dry_run else [], axes)
        return keep_open(page, table, 0) if not args.dry_run else 0
    try:
        status = run_round(table, todo, args, experiment_name(args, prefix), axes, results_dir)
    except GridError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return keep_open(page, table, status)


def _print_todo(todo: Sequence[TrainConfig], axes: Sequence[str]) -> None:
    for cfg in todo:
        print(f"  {cfg.config_hash}  {cfg.teacher} {cfg.method} "
              + " ".join(f"{a}={getattr(cfg, a)}" for a in (*axes, "seed")))


def run_round(table: str, todo: Sequence[TrainConfig], args: argparse.Namespace, name: str,
              axes: Sequence[str], results_dir: Path) -> int:
    """Prepare, start Ray, pack and launch `todo` as Tune experiment `name`."""
    try:
        prepare_all(todo)
    except (ValueError, OSError) as err:               # e.g. no network for a download
        raise GridError(str(err)) from None
    start_ray(args)
    shared.check_nodes(args.storage, todo)          # multi-node: shared storage, cache
    cluster = ray.cluster_resources()
    gpus = gpus_by_teacher(todo, args, cluster.get("GPU", 0))
    measure = (calibrate.sweep_measure(gpus, args.cpus_per_trial,
                                       use_cache=not args.recalibrate)
               if args.pack in (None, "auto") else None)
    packs = plan_packs(todo, args, gpus, trial_slots(cluster.get("CPU", 1), args), measure,
                       cluster_gpus=cluster.get("GPU", 0))
    args.recalibrate = False        # once per driver: a race's later rounds read this measurement
    sizes = sorted(pack_sizes(packs).items(), reverse=True)
    print(f"{table}: {len(todo)} trials in {len(packs)} packs "
          f"({', '.join(f'{n} x {k}' for k, n in sizes)})")
    space = {"pack": tune.grid_search([
                {"size": len(p), "label": pack_label(p, axes),
                 "configs": {member_key(i): place(c, gpus, args.cpus_per_trial).to_dict()
                             for i, c in enumerate(p)}}
                for p in packs]),
             "run": {"cpus": args.cpus_per_trial, "gpus": gpus, "results": str(results_dir),
                     "fail_once_at_epoch": args.fail_once_at_epoch}}
    rows.write_plan(table, results_dir, todo)
    return launch(table, name, space, axes, args, results_dir)


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
            _print_todo(todo, axes)
            return 0
        if args.max_rounds is not None and launched >= args.max_rounds:
            print(f"{table}: stopped after {launched} rounds (--max-rounds); continue with "
                  f"--resume")
            return keep_open(page, table, status)
        todo = skip_finished(table, todo, results_dir)   # adopts other tables' rows
        if todo:
            status |= _race_round(table, todo, args, f"{name}-r{r}", axes, results_dir)
            launched += 1
        if args.kill_after_round is not None and r >= args.kill_after_round:
            log.warning("--kill-after-round %d: killing the driver", args.kill_after_round)
            os.kill(os.getpid(), signal.SIGKILL)


def _race_round(table: str, todo: Sequence[TrainConfig], args: argparse.Namespace, name: str,
                axes: Sequence[str], results_dir: Path) -> int:
    """One round: restore its experiment if a killed driver left it, else launch it."""
    path = f"{args.storage.rstrip('/')}/{name}"
    if tune.Tuner.can_restore(path):
        print(f"{table}: continuing round experiment {path}")
        return restore(table, path, args, results_dir)
    return run_round(table, todo, args, name, axes, results_dir)


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
    diff = [f"{k}={mine[k]} (logged {old['settings'].get(k)})" for k in mine
            if old["settings"].get(k) != mine[k]]
    diff += [f"{k}={plan[k]} (logged {old['plan'].get(k)})" for k in plan
             if old["plan"].get(k) != plan[k]]
    if diff:
        raise GridError(f"--results holds a {table} race with other settings: "
                        f"{'; '.join(diff)}. Pass the same flags to continue it, or a fresh "
                        "--results for a new race")
    return old["name"]


# ---- search mode (sweeps.search) -------------------------------------------------------------
def to_domain(dim: Any) -> Any:
    """A `sweeps.search.Dim` as a Tune search domain."""
    if dim.kind == "uniform":
        return tune.uniform(*dim.values)
    if dim.kind == "loguniform":
        return tune.loguniform(*dim.values)
    if dim.kind == "int":
        return tune.randint(dim.values[0], dim.values[1] + 1)   # randint leaves out the top
    return tune.choice(list(dim.values))


def run_search(args: argparse.Namespace, base: TrainConfig, dims: Mapping[str, Any]) -> int:
    """OptunaSearch (TPE) proposes `dims` around `base`; ASHA stops the weak trials early."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch
    args.storage = storage_path(args.storage)
    results_dir = args.results.expanduser().resolve()
    prefix = f"{args.table}-{args.preset}"
    if args.resume:
        try:
            return resume(args.table, prefix, args, results_dir)
        except (GridError, results.SchemaError) as err:
            print(f"python -m sweeps.search: error: {err}", file=sys.stderr)
            return 2
    if args.pack not in (None, "off", 1):
        print("sweeps.search: search mode trains every trial alone (ASHA stops trials one by "
              "one, and each sample is proposed from the results before it); --pack is ignored")
    base = grid.absolute_paths(base)
    try:
        page = open_page(args.table, args, results_dir)
    except GridError as err:
        print(f"python -m sweeps.search: error: {err}", file=sys.stderr)
        return 2
    prepare_all([base])
    start_ray(args)
    try:
        shared.check_nodes(args.storage, [base])
    except GridError as err:
        print(f"python -m sweeps.search: error: {err}", file=sys.stderr)
        return 2
    gpus = gpus_by_teacher([base], args, ray.cluster_resources().get("GPU", 0))
    cfg = place(base, gpus, args.cpus_per_trial)
    space = {"config": {**cfg.to_dict(), **{k: to_domain(d) for k, d in dims.items()}},
             "run": {"cpus": args.cpus_per_trial, "gpus": gpus,
                     "fail_once_at_epoch": args.fail_once_at_epoch}}
    grace = args.grace_epochs or max(1, cfg.epochs // 8, cfg.eval_start_epoch + 1)
    searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=args.search_seed))
    scheduler = ASHAScheduler(time_attr="epoch", max_t=cfg.epochs,
                              grace_period=min(grace, cfg.epochs))
    print(f"{args.table}: {args.num_samples} trials of {args.preset}, searching "
          f"{', '.join(dims)} for the highest {args.metric}")
    return keep_open(page, args.table, launch(
        args.table, experiment_name(args, prefix), space, list(dims), args, results_dir,
        metric=args.metric, mode="max", search_alg=searcher, scheduler=scheduler,
        num_samples=args.num_samples))
