"""The flags of the sweep scripts: a table script's (build_parser), and the storage, Ray and
resource flags that `sweeps.search` shares (add_run_flags). No Ray."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qimera_core.config import ArgumentParser, add_config_flags
from sweeps import trackers
from sweeps.page import add_page_flags
from sweeps.plan import IMAGENET_TRIAL_GPUS, SMALL_TRIAL_GPUS


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
    g.add_argument("--seeds", type=_seeds_flag, default=None, metavar="N|auto",
                   help="seeds per cell (default 3; 1 with --smoke-test); auto = race: seeds "
                        "go to the cells still in contention (see 'racing seeds' below)")
    g.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], default=[],
                   metavar="ROW[,ROW]", help="rows to run, by substring (e.g. cifar100)")
    g.add_argument("--dry-run", action="store_true",
                   help="validate, list the trials still to run, and stop before Ray")
    add_race_flags(p)
    add_run_flags(p)
    add_config_flags(p.add_argument_group(
        "trial settings (override every block; overriding a swept key narrows that axis)"))
    return p


def add_race_flags(p: argparse.ArgumentParser) -> None:
    """--seeds auto: rounds of seeds, cells out when a test finds them worse than the best
    (docs/statistics.md). Every flag defaults to None here so that giving one without
    --seeds auto can be refused."""
    g = p.add_argument_group("racing seeds (--seeds auto)")
    g.add_argument("--n0", type=int, default=None, help="seeds every cell gets in round 0 "
                   "(default 3)")
    g.add_argument("--max-seeds", type=int, default=None,
                   help="seeds a cell gets at most (default 20)")
    g.add_argument("--alpha", type=float, default=None,
                   help="level of the whole race: every cell put out and the stop hold "
                        "together at this level, spent over the looks (default 0.05)")
    g.add_argument("--delta", type=float, default=None,
                   help="points: the race stops when no cell can beat its pick by delta or "
                        "more (default 0.25)")
    g.add_argument("--race-width", dest="width", type=int, default=None,
                   help="challengers that get seeds each round beside the pick, those with "
                        "the highest upper bound (default 0 = every cell that could still "
                        "beat the pick; 3 makes a round of 4 cells, one pack on a GPU)")
    g.add_argument("--race-step", dest="step", type=int, default=None,
                   help="seeds per chosen cell per round, at least (default 1)")
    g.add_argument("--race-growth", dest="growth", type=float, default=None,
                   help="a chosen cell's seeds grow by this fraction a round when that is "
                        "more than --race-step (default 0.25: fewer, larger rounds)")
    g.add_argument("--race-screen", dest="screen", type=float, default=None,
                   help="where seeds go: a cell gets more only while its per-comparison upper "
                        "bound at this level says it could beat the pick by delta (default "
                        "0.01; 0 = the race's own simultaneous bounds). It decides nothing: "
                        "cells go out only by the race's bounds")
    g.add_argument("--race-stop", dest="stop", choices=("best", "tost"), default=None,
                   help="best (default): stop when no cell can beat the pick by delta; tost: "
                        "when every survivor is within ±delta of it")
    g.add_argument("--budget-gpu-hours", type=float, default=None,
                   help="stop before a round that would pass this many GPU-hours (the whole "
                        "race: every group and the re-measure)")
    g.add_argument("--budget-hours", type=float, default=None,
                   help="stop before a round that would pass this many wall-clock hours")
    g.add_argument("--remeasure", type=int, default=None, metavar="N",
                   help="after the race, N fresh seeds for each group's winner (its race mean "
                        "is biased up by the selection)")
    g.add_argument("--max-rounds", type=int, default=None, metavar="R",
                   help="stop the driver after R rounds; --resume continues the race")
    g.add_argument("--kill-after-round", type=int, default=None, metavar="R",
                   help="testing: the driver kills itself (SIGKILL) after round R's trials "
                        "end, to exercise --resume between rounds")


def _seeds_flag(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes a number or auto, got {text!r}"
                                         ) from None
    return n


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
                        "for tables) picks N from the device, see docs/packs.md; off = 1. "
                        "Search mode always runs trials alone")
    g.add_argument("--recalibrate", action="store_true",
                   help="with --pack auto: measure the pack curves again and replace the "
                        "cached ones (after a driver or hardware change, or a measurement "
                        "taken while other jobs loaded the node)")
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
    g = p.add_argument_group("trackers (the trackers extra: pip install -e \".[trackers]\")")
    g.add_argument("--wandb", type=trackers.wandb_project, default=None, metavar="PROJECT",
                   help="log every trial's config and per-epoch metrics to this Weights & "
                        "Biases project (Ray Tune's WandbLoggerCallback; WANDB_MODE=offline "
                        "works without a login)")
    g.add_argument("--mlflow", type=trackers.mlflow_uri, default=None, metavar="URI",
                   help="log them to the MLflow tracking server or store at URI, one MLflow "
                        "experiment per sweep (Ray Tune's MLflowLoggerCallback): http(s)://..., "
                        "sqlite:///PATH/mlflow.db, databricks, file:///PATH")
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


class Options:
    """The parsed flags, read-only: `opts.seeds` reads a flag, `opts.replace(storage=...)` is a
    new Options with values resolved after parsing. Nothing downstream changes a flag in place,
    so what a function was given is what the user asked for (or what `replace` said)."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", dict(values))

    @classmethod
    def of(cls, namespace: argparse.Namespace) -> Options:
        return cls(vars(namespace))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no flag {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"the flags are read-only: use replace({name}=...) for a new "
                             "Options")

    def replace(self, **changes: Any) -> Options:
        unknown = sorted(set(changes) - set(self._values))
        if unknown:
            raise AttributeError(f"no flag {', '.join(unknown)}")
        return Options({**self._values, **changes})

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __repr__(self) -> str:
        return f"Options({self._values!r})"

