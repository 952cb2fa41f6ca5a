"""Deciding what a sweep runs, before and without Ray: a table's grid of validated trials
(plan_trials), less those with a finished row (skip_finished), their inputs prepared
(prepare_all), placed on CPU or GPU (gpus_by_teacher, place) and grouped into packs
(plan_packs). Plain Python: what the Ray cluster has (CPUs, GPUs) is passed in.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qimera_core.config import TrainConfig, overrides_from_args
from sweeps import grid, race, rows
from sweeps.grid import Block, GridError

log = logging.getLogger(__name__)

# GPU share per trial when --gpus-per-trial is not given and the cluster has GPUs: a CIFAR- or
# digits-size trial leaves most of a modern GPU idle, so four share one; ImageNet takes one.
SMALL_TRIAL_GPUS = 0.25
IMAGENET_TRIAL_GPUS = 1.0
# --pack auto's fixed rule (see auto_pack_size, and "How auto chooses" in docs/packs.md): CPU
# packs pay only for small inputs (bench/pack_throughput.py: digits 8x8 gains, the CIFAR 32x32
# step is compute-bound and loses), up to MAX_CPU_PACK members; GPU packs of up to GPU_PACK
# CIFAR-size runs fill one GPU.
MAX_CPU_PACK = 24
CPU_PACK_MAX_PIXELS = 16
GPU_PACK = 8
GPU_PACK_MAX_PIXELS = 32


# ---- the trials of a table -------------------------------------------------------------------
def plan_trials(blocks: Sequence[Block], args: argparse.Namespace) -> list[TrainConfig]:
    check_run_flags(args)
    overrides = overrides_from_args(args)
    check_overrides(overrides)
    if args.smoke_test and args.offline:
        raise GridError("--smoke-test and --offline are two different settings; pick one")
    if args.seeds == "auto":
        seeds = race_settings(args).n0                  # round 0; later rounds add seeds
    else:
        check_no_race_flags(args)
        seeds = args.seeds if args.seeds is not None else (1 if args.smoke_test else 3)
    configs = grid.plan(blocks, seeds=seeds, only=args.only, smoke_test=args.smoke_test,
                        offline=args.offline, overrides=overrides)
    check_inputs(configs)
    return configs


def race_settings(args: argparse.Namespace) -> race.Settings:
    """The race's settings from the flags (defaults where not given), checked."""
    given = {dest: getattr(args, dest) for dest, _ in race.RACE_FLAGS
             if getattr(args, dest, None) is not None
             and dest not in ("max_rounds", "kill_after_round")}
    try:
        s = race.Settings(**given)
        s.check()
    except race.RaceError as e:
        raise GridError(str(e)) from None
    return s


def check_no_race_flags(args: argparse.Namespace) -> None:
    given = [flag for dest, flag in race.RACE_FLAGS if getattr(args, dest, None) is not None]
    if given:
        fixed = f"--seeds {args.seeds}" if args.seeds is not None else "the fixed design"
        what = "is a race flag" if len(given) == 1 else "are race flags"
        raise GridError(f"{', '.join(given)} {what} "
                        f"but {fixed} runs a fixed number of seeds per cell; pass --seeds auto "
                        f"to race, or drop {given[0]}")


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
    if getattr(args, "recalibrate", False) and getattr(args, "pack", None) not in (None, "auto"):
        raise GridError(f"--recalibrate measures the pack size again, but --pack "
                        f"{args.pack} fixes it; drop --pack (auto) or drop --recalibrate")
    if args.results.exists() and not args.results.is_dir():
        raise GridError(f"--results {args.results} is a file; pass a directory (it is created)")
    local = Path(args.storage.removeprefix("file://")).expanduser()
    if "://" not in args.storage.removeprefix("file://") and local.exists() \
            and not local.is_dir():
        raise GridError(f"--storage {args.storage} is a file; pass a directory or a URI")


def check_overrides(overrides: Mapping[str, Any]) -> None:
    for key, instead in (("seed", "--seeds N"), ("device", "--gpus-per-trial"),
                         ("num_threads", "--cpus-per-trial")):
        if key in overrides:
            raise GridError(f"--{key.replace('_', '-')} is set by the sweep; use {instead}")


def check_inputs(configs: Sequence[TrainConfig]) -> None:
    """The files a user named (--teacher-weights, npz:PATH), read and checked once per distinct
    use, so a wrong path or shape fails here and not in every trial."""
    from qimera_core import prepare
    for cfg in {(c.teacher, c.teacher_weights, c.eval_data): c for c in configs}.values():
        try:
            prepare.check_inputs(cfg)
        except (ValueError, OSError) as e:
            raise GridError(str(e)) from None


# ---- what is left to run ---------------------------------------------------------------------
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


# ---- where each trial runs -------------------------------------------------------------------
def gpus_by_teacher(configs: Sequence[TrainConfig], args: argparse.Namespace,
                    cluster_gpus: float) -> dict[str, float]:
    """GPUs a trial asks for, by teacher (`cluster_gpus`: the GPUs of the Ray cluster).
    --smoke-test runs on the CPU unless told otherwise."""
    flag = args.gpus_per_trial
    if flag is None and (args.smoke_test or getattr(args, "offline", False)):
        flag = 0.0
    have_gpus = flag is None and cluster_gpus > 0
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


# ---- packs -----------------------------------------------------------------------------------
def trial_slots(cluster_cpus: int, args: argparse.Namespace) -> int:
    """How many trials run at once on a cluster of `cluster_cpus` CPUs."""
    slots = max(1, int(cluster_cpus) // max(1, args.cpus_per_trial))
    if args.max_concurrent:
        slots = min(slots, args.max_concurrent)
    return slots


def pack_slots(share: float, size: int, cluster_gpus: float) -> int | None:
    """How many packs of `size` runs, each run asking `share` of a GPU, the cluster's GPUs hold
    at once (a pack asks size x share, at most one GPU: sweeps.trial.pack_gpus); None for a
    CPU kind."""
    if share <= 0 or cluster_gpus <= 0:
        return None
    return max(1, int(cluster_gpus / min(1.0, share * max(1, size)) + 1e-9))


def plan_packs(todo: Sequence[TrainConfig], args: argparse.Namespace,
               gpus: Mapping[str, float], slots: int,
               measure: Callable[[TrainConfig, int], int | None] | None = None,
               cluster_gpus: float = 0.0) -> list[list[TrainConfig]]:
    """Group the trials still to run into packs of compatible configs (qimera_core.pack);
    `slots`: trials that run at once (trial_slots). --pack auto with `measure(cfg, count)`
    (sweeps.calibrate: the measured pack size of `cfg`'s kind, None if it could not be
    measured) deals each kind into balanced packs of at most that size, over the slots; for
    GPU kinds the slots are at most the packs of the measured size that `cluster_gpus` GPUs
    hold at once (pack_slots), so a node with many CPUs per GPU does not split the packs the
    measurement chose. Without a measure, or where it gives None, auto_pack_size's fixed
    rule."""
    from qimera_core import pack
    flag = "auto" if args.pack is None else args.pack
    if flag == "off":
        return [[c] for c in todo]
    if isinstance(flag, int):
        return pack.group(todo, flag)
    packs, measured, sizes, caps = [], [], [], []
    for same in pack.group(todo, len(todo)):          # one list per compatible kind
        size = measure(same[0], len(same)) if measure is not None else None
        if size is None:
            size = auto_pack_size(same[0], len(same), gpus[same[0].teacher], slots)
            packs += pack.group(same, size)
        else:
            measured.append(same)
            sizes.append(size)
            on_gpus = pack_slots(gpus[same[0].teacher], size, cluster_gpus)
            if on_gpus is not None:
                caps.append(on_gpus)
    return deal(measured, sizes, max(1, min([slots, *caps]) - len(packs))) + packs


def deal(groups: Sequence[Sequence[Any]], size: int | Sequence[int], slots: int
         ) -> list[list[Any]]:
    """Balanced packs of at most `size` members (per group, or one for all) from compatible
    `groups`: each group gets at least ceil(len / size) packs; then, while there are fewer
    packs than `slots` (trials that run at once), or than a whole multiple of them, and fewer
    than trials, the group with the largest packs gets one more. Within a group, pack sizes
    differ by at most one; the order is kept."""
    sizes = [size] * len(groups) if isinstance(size, int) else list(size)
    counts = [len(g) for g in groups]
    packs = [-(-c // max(1, s)) if c else 0 for c, s in zip(counts, sizes, strict=True)]
    # enough packs to fill the slots, and a whole number of rounds of them
    slots = max(1, slots)
    target = min(sum(counts), max(slots, slots * -(-sum(packs) // slots)))
    while sum(packs) < target:
        widest = max((i for i in range(len(groups)) if packs[i] < counts[i]),
                     key=lambda i: -(-counts[i] // packs[i]))
        packs[widest] += 1
    out: list[list[Any]] = []
    for g, p in zip(groups, packs, strict=True):
        g = list(g)
        for j in range(p):
            out.append(g[j * len(g) // p:(j + 1) * len(g) // p])
    return out


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


def pack_sizes(packs: Sequence[Sequence[TrainConfig]]) -> dict[int, int]:
    """{pack size: how many packs}."""
    sizes: dict[int, int] = {}
    for p in packs:
        sizes[len(p)] = sizes.get(len(p), 0) + 1
    return sizes


# ---- labels of packs -------------------------------------------------------------------------
def pack_label(cfgs: Sequence[TrainConfig], axes: Sequence[str]) -> str:
    """What Tune's table shows for a pack: each swept key with the members' values."""
    return " ".join(f"{a}={','.join(_value(v) for v in _distinct([getattr(c, a) for c in cfgs]))}"
                    for a in (*axes, "seed"))


def span(values: Sequence[Any]) -> str:
    """One value, or the smallest and largest of a pack's values."""
    d = _distinct(values)
    return _value(d[0]) if len(d) == 1 else f"{_value(d[0])}-{_value(d[-1])}"


def _distinct(values: Sequence[Any]) -> list[Any]:
    return sorted(set(values), key=lambda v: (str(type(v)), v))


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
