"""One Tune experiment of a table's trials: start or join Ray, pack the trials and launch them
as Tune trials (sweeps.trial) with the callback that writes Parquet rows as they end
(sweeps.writer), and resume or restore an interrupted experiment. The table scripts' CLI
(sweeps.launch), the race's rounds (sweeps.race_loop) and search mode (sweeps.search) run
through here.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
from ray import tune

from qimera_core.config import TrainConfig
from sweeps import calibrate, rows, shared, trackers
from sweeps.grid import GridError
from sweeps.page import keep_open, open_page
from sweeps.plan import (
    gpus_by_teacher,
    pack_label,
    pack_sizes,
    place,
    plan_packs,
    prepare_all,
    span,
    trial_slots,
)
from sweeps.trial import gpus_for, pack_configs, pack_params, run_constants, trainable
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
           args: argparse.Namespace, results_dir: Path, search: bool = False,
           **tune_config: Any) -> int:
    """Run `space` ({"pack": ...}: a grid of packs, or one pack of search domains) as
    experiment `name`."""
    _quiet_tune(args)
    print(f"{table}: experiment {args.storage}/{name}; if interrupted, continue it with "
          f"--resume {name}")
    columns = ({f"pack/configs/m0/{a}": a for a in (*axes, "seed")} if search
               else {"pack/size": "runs", "pack/label": "values"})
    reporter = tune.CLIReporter(parameter_columns=columns,
                                metric_columns=list(PROGRESS_METRICS),
                                max_column_length=20 if search else 60,
                                max_report_frequency=10 if args.smoke_test
                                else 30 if getattr(args, "offline", False) else 60)
    run_config = tune.RunConfig(
        name=name, storage_path=args.storage,
        failure_config=tune.FailureConfig(max_failures=args.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=args.keep_checkpoints),
        callbacks=[ResultsWriter(table, results_dir), *trackers.callbacks(args, table, name)],
        progress_reporter=reporter,
        verbose=1)                                     # the status table; 2+ print every result
    tuner = tune.Tuner(trainable(experiment_run(args, results_dir)), param_space=space,
                       run_config=run_config,
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
    tuner = tune.Tuner.restore(path, trainable=trainable(experiment_run(args, results_dir),
                                                         frozenset(finished)),
                               resume_errored=True)
    return finish(table, tuner.fit(), results_dir)


def experiment_run(args: argparse.Namespace, results_dir: Path) -> dict[str, Any]:
    """The run constants every trial of this experiment gets (sweeps.trial.run_constants)."""
    return run_constants(args.cpus_per_trial, results_dir,
                         getattr(args, "fail_once_at_epoch", 0))


def print_todo(todo: Sequence[TrainConfig], axes: Sequence[str]) -> None:
    for cfg in todo:
        print(f"  {cfg.config_hash}  {cfg.teacher} {cfg.method} "
              + " ".join(f"{a}={getattr(cfg, a)}" for a in (*axes, "seed")))


def run_round(table: str, todo: Sequence[TrainConfig], args: argparse.Namespace, name: str,
              axes: Sequence[str], results_dir: Path, recalibrate: bool | None = None) -> int:
    """Prepare, start Ray, pack and launch `todo` as Tune experiment `name`. `recalibrate`
    (default: --recalibrate) measures the pack curves again: a race asks for it in its first
    round only, and its later rounds read that measurement."""
    try:
        prepare_all(todo)
    except (ValueError, OSError) as err:               # e.g. no network for a download
        raise GridError(str(err)) from None
    start_ray(args)
    shared.check_nodes(args.storage, todo)          # multi-node: shared storage, cache
    cluster = ray.cluster_resources()
    gpus = gpus_by_teacher(todo, args, cluster.get("GPU", 0))
    measure = (calibrate.sweep_measure(gpus, args.cpus_per_trial,
                                       use_cache=not (args.recalibrate if recalibrate is None
                                                      else recalibrate))
               if args.pack in (None, "auto") else None)
    packs = plan_packs(todo, args, gpus, trial_slots(cluster.get("CPU", 1), args), measure,
                       cluster_gpus=cluster.get("GPU", 0))
    sizes = sorted(pack_sizes(packs).items(), reverse=True)
    print(f"{table}: {len(todo)} trials in {len(packs)} packs "
          f"({', '.join(f'{n} x {k}' for k, n in sizes)})")
    space = {"pack": tune.grid_search([
        pack_params([place(c, gpus, args.cpus_per_trial).to_dict() for c in p],
                    gpus_for(gpus[p[0].teacher], len(p)), pack_label(p, axes))
        for p in packs])}
    rows.write_plan(table, results_dir, todo)
    return launch(table, name, space, axes, args, results_dir)


