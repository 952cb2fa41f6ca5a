"""Run a table's trials on Ray Tune: validate, skip finished work, prepare data, launch, write
Parquet rows as trials end, resume. With sweeps/shared.py, the only code that imports Ray.

    python -m sweeps.table9 --smoke-test --storage /tmp/s --results /tmp/r
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
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
from qimera_core.config import ArgumentParser, TrainConfig, add_config_flags, overrides_from_args
from sweeps import grid, rows, shared
from sweeps.grid import Block, GridError, expand  # noqa: F401 - re-exported for table scripts
from sweeps.page import add_page_flags, keep_open, open_page

log = logging.getLogger(__name__)

# GPU share per trial when --gpus-per-trial is not given and the cluster has GPUs: a CIFAR- or
# digits-size trial leaves most of a modern GPU idle, so four share one; ImageNet takes one.
SMALL_TRIAL_GPUS = 0.25
IMAGENET_TRIAL_GPUS = 1.0
# A pack's row in Tune's table: top1 is the mean over its members, min and max beside it.
PROGRESS_METRICS = ("epoch", "top1", "top1_min", "top1_max", "live", "step_time_s")
# --pack auto (see auto_pack_size and the README): CPU packs pay only for small inputs
# (bench/pack_throughput.py: digits 8x8 gains, the CIFAR 32x32 step is compute-bound and loses),
# up to MAX_CPU_PACK members; GPU packs of up to GPU_PACK CIFAR-size runs fill one GPU.
MAX_CPU_PACK = 24
CPU_PACK_MAX_PIXELS = 16
GPU_PACK = 8
GPU_PACK_MAX_PIXELS = 32


# ---- inside a trial (runs in a Ray worker) ---------------------------------------------------
class TuneReporter:
    """The Reporter that train() calls inside a trial: each epoch's metrics and checkpoint go to
    Tune, which copies the checkpoint to storage. Optionally kills its own process once after
    epoch `fail_once_at_epoch`, to exercise recovery from checkpoints (testing only)."""

    def __init__(self, device_name: str, fail_once_at_epoch: int = 0,
                 marker: Path | None = None) -> None:
        self.device_name = device_name
        self.fail_once_at_epoch = fail_once_at_epoch
        self.marker = marker

    def __call__(self, metrics: Mapping[str, Any], checkpoint_dir: Path | None = None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report({**metrics, "device_name": self.device_name}, checkpoint=checkpoint)
        if self.fail_once_at_epoch and metrics.get("epoch") == self.fail_once_at_epoch:
            if self.marker is not None and not self.marker.exists():
                self.marker.touch()
                log.warning("--fail-once-at-epoch %d: killing this trial's process",
                            self.fail_once_at_epoch)
                os.kill(os.getpid(), signal.SIGKILL)   # a crash, not an exception Tune could catch


def _claim_device(cfg: TrainConfig, gpus: float) -> str:
    import torch
    if cfg.device.startswith("cuda"):
        # Ray shares a GPU between fractional trials but does not fence their memory.
        torch.cuda.set_per_process_memory_fraction(min(1.0, gpus))
        return torch.cuda.get_device_name()
    return "cpu"


def pack_configs(params: Mapping[str, Any]) -> list[TrainConfig]:
    """The runs of one Tune trial: a table's pack ({"pack": {"configs": [...]}}) or search
    mode's single sampled config ({"config": {...}})."""
    if "pack" in params:
        return [TrainConfig.from_dict(d) for d in params["pack"]["configs"]]
    return [TrainConfig.from_dict(params["config"])]


def pack_gpus(params: Mapping[str, Any]) -> float:
    """GPUs a Tune trial asks for: its runs' per-run share times their number, at most one
    GPU (a pack of small runs fills one GPU instead of sharing it between processes)."""
    cfgs = pack_configs(params)
    share = params["run"]["gpus"][cfgs[0].teacher]
    return share if len(cfgs) == 1 else min(1.0, share * len(cfgs))


def run_trial(params: dict[str, Any], finished: frozenset[str] = frozenset()) -> None:
    """Tune's function trainable: one pack of TrainConfigs through the core train_pack(),
    resumable.

    `finished`: config hashes with a finished row in --results. A restored trial whose runs are
    all among them (its driver was killed after it ended, before Tune's experiment state said
    so) ends at once.
    """
    # torch loads in trials, not before the grid is checked
    from qimera_core.train import train_pack
    cfgs = pack_configs(params)
    run = params["run"]
    # The whole pack trains unless every run of it is done (here, or by another driver since
    # planning); a run done elsewhere trains again, which costs time, not rows.
    if all(c.config_hash in finished or _finished_elsewhere(run.get("results", ""), c)
           for c in cfgs):
        return
    reporter = TuneReporter(_claim_device(cfgs[0], pack_gpus(params)),
                            run.get("fail_once_at_epoch", 0),
                            Path(tune.get_context().get_trial_dir()) / ".failed-once")
    resume = tune.get_checkpoint()
    # train_pack()'s own checkpoint folder is scratch: Tune copies each reported one to storage.
    with (tempfile.TemporaryDirectory(prefix="qimera-trial-") as out_dir,
          resume.as_directory() if resume else contextlib.nullcontext() as resume_dir):
        train_pack(cfgs, Path(out_dir), report=reporter,
                   resume_from=Path(resume_dir) if resume_dir else None)


def _finished_elsewhere(results_dir: str, cfg: TrainConfig) -> bool:
    """Whether another driver (a second sweep into the same --results) finished this config
    after this one planned it. Checked where this node sees --results (one machine, or a
    shared filesystem); elsewhere two drivers may both run it, which costs time, not rows."""
    if not results_dir or not Path(results_dir).is_dir():
        return False
    return cfg.config_hash in rows.recorded(Path(results_dir))[1]


def trial_resources(params: dict[str, Any]) -> tune.PlacementGroupFactory:
    return tune.PlacementGroupFactory([{"CPU": params["run"]["cpus"], "GPU": pack_gpus(params)}])


def trainable(finished: frozenset[str] = frozenset()) -> Any:
    return tune.with_parameters(tune.with_resources(run_trial, trial_resources),
                                finished=finished)


# ---- in the driver ---------------------------------------------------------------------------
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
        for i, member in enumerate(result.get("members", ())):
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
    members = list(metrics.get("members") or [])
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


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _distinct(values: Sequence[Any]) -> list[Any]:
    return sorted(set(values), key=lambda v: (str(type(v)), v))


def _span(values: Sequence[Any]) -> str:
    """One value, or the smallest and largest of a pack's values."""
    d = _distinct(values)
    return _value(d[0]) if len(d) == 1 else f"{_value(d[0])}-{_value(d[-1])}"


def pack_label(cfgs: Sequence[TrainConfig], axes: Sequence[str]) -> str:
    """What Tune's table shows for a pack: each swept key with the members' values."""
    return " ".join(f"{a}={','.join(_value(v) for v in _distinct([getattr(c, a) for c in cfgs]))}"
                    for a in (*axes, "seed"))


# ---- command line ----------------------------------------------------------------------------
def build_parser(table: str, doc: str | None = None) -> argparse.ArgumentParser:
    """The flags of a table script: what to run, then the flags every sweep shares."""
    p = ArgumentParser(prog=f"python -m sweeps.{table}", description=doc,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       allow_abbrev=False)
    g = p.add_argument_group("what to run")
    g.add_argument("--smoke-test", action="store_true",
                   help="the first block's axes, one seed, on the offline digits-smoke setting: "
                        "the whole pipeline in minutes on a laptop")
    g.add_argument("--offline", action="store_true",
                   help="the first setting's rows (all their cells), 3 seeds, on the offline "
                        "digits-offline schedule: a small real study on a laptop, no internet")
    g.add_argument("--seeds", type=int, default=None,
                   help="seeds per cell (default 3; 1 with --smoke-test)")
    g.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], default=[],
                   metavar="ROW[,ROW]", help="rows to run, by substring (e.g. cifar100)")
    g.add_argument("--dry-run", action="store_true",
                   help="validate, list the trials still to run, and stop before Ray")
    add_run_flags(p)
    add_config_flags(p.add_argument_group(
        "trial settings (override every block; overriding a swept key narrows that axis)"))
    return p


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by the table scripts and `sweeps.search`: storage, Ray, resources."""
    g = p.add_argument_group("where results go")
    g.add_argument("--storage", default="runs/sweeps",
                   help="Tune storage: a path (made absolute) or URI (s3://..., file://...) for "
                        "checkpoints, logs and TensorBoard events (default: runs/sweeps)")
    g.add_argument("--results", type=Path, default=Path("results"),
                   help="directory on the driver for trials-*.parquet and curves-*.parquet "
                        "(default: results)")
    g.add_argument("--name", default=None,
                   help="experiment name under --storage (default: <table>[-smoke]-<time>)")
    g.add_argument("--resume", nargs="?", const="latest", default=None, metavar="NAME",
                   help="continue an interrupted experiment (default: this table's latest) "
                        "from its checkpoints; finished trials are not rerun")
    g = p.add_argument_group("Ray and resources")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join (e.g. auto); default: the cluster this node runs "
                        "($RAY_ADDRESS or `ray start`), else a private local Ray; "
                        "'local' forces a private one")
    g.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    g.add_argument("--cpus-per-trial", type=int, default=1,
                   help="CPUs per trial, and the trainer's thread count (default 1)")
    g.add_argument("--gpus-per-trial", type=float, default=None,
                   help=f"GPUs per trial (default when the cluster has GPUs: {SMALL_TRIAL_GPUS} "
                        f"for CIFAR/digits, {IMAGENET_TRIAL_GPUS:g} for ImageNet; else 0)")
    g.add_argument("--pack", type=_pack_flag, default=None, metavar="N|auto|off",
                   help="train up to N compatible trials (same shapes, different p, K, sigma, "
                        "seed...) together in one process and one Tune trial; auto (default "
                        "for tables) picks N from the device, see the README; off = 1. "
                        "Search mode always runs trials alone")
    g.add_argument("--max-concurrent", type=int, default=0,
                   help="at most this many trials at once (default 0: as resources allow)")
    g.add_argument("--max-failures", type=int, default=3,
                   help="restarts of a crashed trial from its last checkpoint (default 3)")
    g.add_argument("--keep-checkpoints", type=int, default=2,
                   help="checkpoints kept per trial in storage (default 2)")
    g.add_argument("--no-reuse-actors", dest="reuse_actors", action="store_false",
                   help="a fresh worker process for every trial (default: reuse them)")
    g.add_argument("--dashboard", action="store_true",
                   help="with a local Ray, start its dashboard on 127.0.0.1:8265 (local only)")
    g.add_argument("--fail-once-at-epoch", type=int, default=0, metavar="N",
                   help="testing: each trial kills its own process once after epoch N, and "
                        "must recover from its checkpoint")
    add_page_flags(p)


def _pack_flag(text: str) -> str | int:
    if text in ("auto", "off"):
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--pack takes a number, auto or off, got {text!r}"
                                         ) from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--pack N needs N >= 1 (1 = off), got {n}")
    return n


def auto_pack_size(cfg: TrainConfig, count: int, gpus: float, slots: int) -> int:
    """--pack auto: members per pack for `count` compatible trials like `cfg`.

    GPU: up to GPU_PACK runs of at most 32x32 pixels share one GPU in one pack (ImageNet runs
    stay alone). CPU: packing pays only for tiny inputs (at most 16x16, the digits setting);
    the trials are dealt into a multiple of the `slots` trials that run at once, at most
    MAX_CPU_PACK per pack, so that every core has the same work.
    """
    from qimera_core import models
    pixels = models.spec(cfg.teacher).input_shape[1]
    if gpus > 0:
        return min(count, GPU_PACK) if pixels <= GPU_PACK_MAX_PIXELS else 1
    if pixels > CPU_PACK_MAX_PIXELS:
        return 1
    slots = max(1, slots)
    packs = slots * -(-count // (slots * MAX_CPU_PACK))
    return max(1, -(-count // packs))


def plan_packs(todo: Sequence[TrainConfig], args: argparse.Namespace,
               gpus: Mapping[str, float]) -> list[list[TrainConfig]]:
    """Group the trials still to run into packs of compatible configs (qimera_core.pack)."""
    from qimera_core import pack
    flag = "auto" if args.pack is None else args.pack
    if flag == "off":
        return [[c] for c in todo]
    if isinstance(flag, int):
        return pack.group(todo, flag)
    slots = max(1, int(ray.cluster_resources().get("CPU", 1)) // max(1, args.cpus_per_trial))
    if args.max_concurrent:
        slots = min(slots, args.max_concurrent)
    packs = []
    for same in pack.group(todo, len(todo)):          # one list per compatible kind
        size = auto_pack_size(same[0], len(same), gpus[same[0].teacher], slots)
        packs += pack.group(same, size)
    return packs


def storage_path(storage: str) -> str:
    """A URI as given; a local path made absolute (trials and Tune run in other directories)."""
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


def check_overrides(overrides: Mapping[str, Any]) -> None:
    for key, instead in (("seed", "--seeds N"), ("device", "--gpus-per-trial"),
                         ("num_threads", "--cpus-per-trial")):
        if key in overrides:
            raise GridError(f"--{key.replace('_', '-')} is set by the sweep; use {instead}")


# (flag, smallest allowed value, what it means) of the run flags that take a count
_RUN_MINIMA = (("num_cpus", 1, "CPUs"), ("cpus_per_trial", 1, "CPUs"),
               ("gpus_per_trial", 0, "GPUs"), ("max_concurrent", 0, "0 = no limit"),
               ("max_failures", -1, "-1 = retry forever"), ("keep_checkpoints", 1, "checkpoints"),
               ("fail_once_at_epoch", 0, "0 = off"))


def check_run_flags(args: argparse.Namespace) -> None:
    """Out-of-range run flags and unusable paths, refused before any work."""
    for key, low, meaning in _RUN_MINIMA:
        value = getattr(args, key, None)
        if value is not None and value < low:
            raise GridError(f"--{key.replace('_', '-')} must be >= {low} ({meaning}), "
                            f"got {value:g}")
    if args.results.exists() and not args.results.is_dir():
        raise GridError(f"--results {args.results} is a file; pass a directory (it is created)")
    local = Path(args.storage.removeprefix("file://")).expanduser()
    if "://" not in args.storage.removeprefix("file://") and local.exists() \
            and not local.is_dir():
        raise GridError(f"--storage {args.storage} is a file; pass a directory or a URI")


def check_inputs(configs: Sequence[TrainConfig]) -> None:
    """The files a user named (--teacher-weights, npz:PATH), read and checked once per distinct
    use, so a wrong path or shape fails here and not in every trial."""
    from qimera_core import prepare
    for cfg in {(c.teacher, c.teacher_weights, c.eval_data): c for c in configs}.values():
        try:
            prepare.check_inputs(cfg)
        except (ValueError, OSError) as e:
            raise GridError(str(e)) from None


def plan_trials(blocks: Sequence[Block], args: argparse.Namespace) -> list[TrainConfig]:
    check_run_flags(args)
    overrides = overrides_from_args(args)
    check_overrides(overrides)
    if args.smoke_test and args.offline:
        raise GridError("--smoke-test and --offline are two different settings; pick one")
    seeds = args.seeds if args.seeds is not None else (1 if args.smoke_test else 3)
    configs = grid.plan(blocks, seeds=seeds, only=args.only, smoke_test=args.smoke_test,
                        offline=args.offline, overrides=overrides)
    check_inputs(configs)
    return configs


def skip_finished(table: str, configs: list[TrainConfig], results_dir: Path
                  ) -> list[TrainConfig]:
    """Drop trials whose config hash already has a finished row; adopt rows of other tables."""
    done = rows.finished_rows(results_dir)
    reused = done[done["config_hash"].isin({c.config_hash for c in configs})]
    if not reused.empty:
        adopted = rows.adopt(results_dir, table, reused)
        log.info("%d of %d trials reused from %s (%d of them copied from other tables' rows)",
                 len(reused), len(configs), results_dir, adopted)
    done_hashes = set(reused["config_hash"])
    return [c for c in configs if c.config_hash not in done_hashes]


def prepare_all(configs: Sequence[TrainConfig]) -> None:
    """Teacher weights and eval data into the cache, once per distinct need, before launch:
    trials never download."""
    from qimera_core import prepare
    needs = {(c.teacher, c.teacher_weights, c.eval_data, c.cache_dir): c for c in configs}
    for cfg in needs.values():
        prepare.prepare(cfg)


# ---- Ray ---------------------------------------------------------------------------------------
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


def gpus_by_teacher(configs: Sequence[TrainConfig], args: argparse.Namespace
                    ) -> dict[str, float]:
    """GPUs a trial asks for, by teacher. --smoke-test runs on the CPU unless told otherwise."""
    flag = args.gpus_per_trial
    if flag is None and (args.smoke_test or getattr(args, "offline", False)):
        flag = 0.0
    have_gpus = flag is None and ray.cluster_resources().get("GPU", 0) > 0
    return {c.teacher: default_gpus(c, flag, have_gpus) for c in configs}


def default_gpus(cfg: TrainConfig, flag: float | None, have_gpus: bool) -> float:
    if flag is not None:
        return flag
    if not have_gpus:
        return 0.0
    return IMAGENET_TRIAL_GPUS if cfg.eval_data.startswith("imagenet") else SMALL_TRIAL_GPUS


def place(cfg: TrainConfig, gpus: Mapping[str, float], cpus: int) -> TrainConfig:
    """Where a trial runs: run-only fields, so the config hash does not change."""
    return dataclasses.replace(cfg, device="cuda" if gpus[cfg.teacher] > 0 else "cpu",
                               num_threads=cpus)


def _quiet_tune(args: argparse.Namespace) -> None:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")   # the classic table shows our columns
    if getattr(args, "smoke_test", False) or getattr(args, "offline", False):   # short epochs
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


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
        members = list(res.metrics.get("members") or [])
        for i, cfg in enumerate(cfgs):
            status = rows.status_of(members[i] if i < len(members) else {}, error, cfg.epochs)
            counts[status] = counts.get(status, 0) + 1
    print(f"{table}: {sum(counts.values())} runs in the experiment: "
          + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f"; rows in {results_dir}")
    return 1 if counts.get("error") else 0


def _trial_id_from_path(path: str) -> str:
    return Path(path).name.split("--")[0]             # TrialDirName puts the id first


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
    gpus = gpus_by_teacher(todo, args)
    packs = plan_packs(todo, args, gpus)
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


def _sizes(packs: Sequence[Sequence[TrainConfig]]) -> dict[int, int]:
    """{pack size: how many packs}."""
    sizes: dict[int, int] = {}
    for p in packs:
        sizes[len(p)] = sizes.get(len(p), 0) + 1
    return sizes


# ---- search mode (sweeps.search) ---------------------------------------------------------------
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
    gpus = gpus_by_teacher([base], args)
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
