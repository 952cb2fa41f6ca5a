"""Run a table's trials on Ray Tune: plan them (sweeps.plan), start or join Ray, launch the
packs as Tune trials (sweeps.trial) with the callback that writes Parquet rows as they end
(sweeps.writer), resume an interrupted experiment; and search mode's Tune run. The CLI of every
table script is `main` here.

    python -m sweeps.table9 --smoke-test --storage /tmp/s --results /tmp/r
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
from ray import tune

from qimera_core import results
from qimera_core.config import TrainConfig
from sweeps import grid, rows, shared
from sweeps.cli import build_parser
from sweeps.grid import Block, GridError
from sweeps.page import keep_open, open_page
from sweeps.plan import (
    _sizes,
    _span,
    gpus_by_teacher,
    pack_label,
    place,
    plan_packs,
    plan_trials,
    prepare_all,
    skip_finished,
    trial_slots,
)
from sweeps.trial import pack_configs, trainable
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
        tags = "_".join(f"{a}={_span([c[a] for c in cfgs])}" for a in self.axes if a in cfgs[0])
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
        callbacks=[ResultsWriter(table, results_dir)], progress_reporter=reporter,
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
    start_ray(args)
    shared.check_nodes(args.storage, [])
    _quiet_tune(args)
    _, finished = rows.recorded(results_dir)
    tuner = tune.Tuner.restore(path, trainable=trainable(frozenset(finished)),
                               resume_errored=True)
    return keep_open(page, table, finish(table, tuner.fit(), results_dir))


# ---- a table script --------------------------------------------------------------------------
def main(table: str, blocks: Sequence[Block], argv: list[str] | None = None,
         doc: str | None = None) -> int:
    """The CLI of every table script, `main("table9", BLOCKS)`; returns the exit status."""
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
        if args.resume:
            return resume(table, prefix, args, results_dir)
        todo = skip_finished(table, configs, results_dir)
        page = open_page(table, args, results_dir)
    except (GridError, results.SchemaError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"{table}: {len(configs)} trials, {len(configs) - len(todo)} reused, "
          f"{len(todo)} to run")
    axes = grid.swept_axes(blocks)
    if args.dry_run or not todo:
        for cfg in todo if args.dry_run else []:
            print(f"  {cfg.config_hash}  {cfg.teacher} {cfg.method} "
                  + " ".join(f"{a}={getattr(cfg, a)}" for a in (*axes, "seed")))
        return keep_open(page, table, 0) if not args.dry_run else 0
    try:
        prepare_all(todo)
    except (ValueError, OSError) as err:               # e.g. no network for a download
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    start_ray(args)
    try:
        shared.check_nodes(args.storage, todo)          # multi-node: shared storage, cache
    except GridError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    cluster = ray.cluster_resources()
    gpus = gpus_by_teacher(todo, args, cluster.get("GPU", 0))
    packs = plan_packs(todo, args, gpus, trial_slots(cluster.get("CPU", 1), args))
    print(f"{table}: {len(todo)} trials in {len(packs)} packs "
          f"({', '.join(f'{n} x {k}' for k, n in sorted(_sizes(packs).items(), reverse=True))})")
    space = {"pack": tune.grid_search([
                {"size": len(p), "label": pack_label(p, axes),
                 "configs": [place(c, gpus, args.cpus_per_trial).to_dict() for c in p]}
                for p in packs]),
             "run": {"cpus": args.cpus_per_trial, "gpus": gpus, "results": str(results_dir),
                     "fail_once_at_epoch": args.fail_once_at_epoch}}
    rows.write_plan(table, results_dir, todo)
    return keep_open(page, table, launch(table, experiment_name(args, prefix), space, axes, args,
                                         results_dir))


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
