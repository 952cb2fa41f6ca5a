"""Search mode: Optuna's TPE proposes values for continuous or integer knobs (p, K, sigma, ...)
of one preset, ASHA stops weak trials early, within a trial budget. Rows land in --results like
a table's, with table "search". (Optuna cannot take grid axes, so the paper tables stay grids.)

    python -m sweeps.search --preset digits-2w2a \
        --space mix_prob=uniform:0.05:0.95,mix_classes=int:2:10 --num-samples 16
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray
from ray import tune

from qimera_core import results
from qimera_core.config import (
    FIELD_NAMES,
    PRESETS,
    ArgumentParser,
    TrainConfig,
    add_config_flags,
    build,
)
from sweeps import grid, shared
from sweeps.cli import Options
from sweeps.experiment import (
    experiment_name,
    launch,
    resume,
    start_ray,
    storage_path,
)
from sweeps.grid import GridError
from sweeps.page import keep_open, open_page
from sweeps.plan import gpus_by_teacher, place, prepare_all
from sweeps.trial import gpus_for, pack_params

log = logging.getLogger(__name__)

KINDS = ("uniform", "loguniform", "int", "choice")
SMOKE = dict(preset="digits-smoke", num_samples=4)


@dataclass(frozen=True)
class Dim:
    """One searched knob: `uniform:LO:HI`, `loguniform:LO:HI`, `int:LO:HI` (both ends
    included) or `choice:A|B|C`."""

    key: str
    kind: str
    values: tuple[Any, ...]

    def corners(self) -> tuple[Any, ...]:
        """The values that bound the range: if these validate, every sample does."""
        return self.values if self.kind == "choice" else (self.values[0], self.values[1])


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def parse_dim(item: str) -> Dim:
    key, sep, spec = item.partition("=")
    kind, _, rest = spec.partition(":")
    if not sep or kind not in KINDS:
        raise GridError(f"--space item {item!r} must look like KEY=KIND:ARGS with KIND one of "
                        f"{KINDS}, e.g. mix_prob=uniform:0.1:0.9 or mix_classes=int:2:10")
    if key not in FIELD_NAMES:
        raise GridError(f"--space key {key!r} is not a TrainConfig field")
    if kind == "choice":
        return Dim(key, kind, tuple(_number(v) if _is_number(v) else v for v in rest.split("|")))
    bounds = rest.split(":")
    if len(bounds) != 2 or not all(_is_number(b) for b in bounds):
        raise GridError(f"--space {key}: {kind} needs two numbers LO:HI, got {rest!r}")
    lo, hi = (_number(b) for b in bounds)
    if kind == "int":
        lo, hi = int(lo), int(hi)
    if not lo < hi or (kind == "loguniform" and lo <= 0):
        raise GridError(f"--space {key}: need 0 < LO < HI for loguniform and LO < HI otherwise, "
                        f"got {lo}:{hi}")
    return Dim(key, kind, (lo, hi))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_space(text: str) -> dict[str, Dim]:
    dims = [parse_dim(item) for item in text.split(",") if item]
    if not dims:
        raise GridError("--space is empty; e.g. --space mix_prob=uniform:0.1:0.9")
    return {d.key: d for d in dims}


def check_space(base: TrainConfig, space: Mapping[str, Dim]) -> None:
    """Every range end must make a valid config, so no sampled trial fails inside Ray."""
    for dim in space.values():
        for value in dim.corners():
            try:
                TrainConfig.from_dict({**base.to_dict(), dim.key: value})
            except ValueError as err:
                raise GridError(f"--space {dim.key}: value {value!r} is invalid: {err}") from None


def build_parser() -> argparse.ArgumentParser:
    from sweeps.cli import add_run_flags
    p = ArgumentParser(prog="python -m sweeps.search", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       allow_abbrev=False)
    g = p.add_argument_group("what to search")
    g.add_argument("--preset", choices=sorted(PRESETS), help="the setting to search in")
    g.add_argument("--space", default="mix_prob=uniform:0.05:0.95,mix_classes=int:2:10",
                   help="comma-separated KEY=KIND:ARGS, KIND one of uniform, loguniform, int "
                        "(ends included), choice (A|B|C) (default: %(default)s)")
    g.add_argument("--num-samples", type=int, default=None, help="trial budget (default 32)")
    g.add_argument("--metric", default="top1",
                   help="reported metric to maximise (default: final-epoch top1)")
    g.add_argument("--grace-epochs", type=int, default=None,
                   help="ASHA lets every trial run this many epochs (default: epochs // 8, at "
                        "least the first evaluated epoch)")
    g.add_argument("--search-seed", type=int, default=0, help="seed of the TPE sampler")
    g.add_argument("--table", default="search", help="`table` column of the rows")
    g.add_argument("--smoke-test", action="store_true",
                   help=f"preset {SMOKE['preset']}, {SMOKE['num_samples']} samples, offline")
    add_run_flags(p)
    add_config_flags(p.add_argument_group("trial settings (override the preset)"))
    return p


def plan(args: Options) -> tuple[Options, TrainConfig, dict[str, Dim]]:
    """The flags with the defaults --smoke-test implies, the base config and the space."""
    from qimera_core.config import overrides_from_args
    from sweeps.plan import check_overrides
    if args.smoke_test:
        args = args.replace(preset=args.preset or SMOKE["preset"],
                            num_samples=args.num_samples or SMOKE["num_samples"])
    if not args.preset:
        raise GridError("--preset is required (or --smoke-test)")
    args = args.replace(num_samples=args.num_samples or 32)
    overrides = overrides_from_args(args)
    check_overrides(overrides)
    try:
        base = build(args.preset, **overrides)
    except ValueError as err:
        raise GridError(f"preset {args.preset}: {err}") from None
    space = parse_space(args.space)
    check_space(base, space)
    return args, base, space


# ---- the Tune run -----------------------------------------------------------------------------
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
    args = args.replace(storage=storage_path(args.storage))
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
    space = {"pack": pack_params([{**cfg.to_dict(),
                                   **{k: to_domain(d) for k, d in dims.items()}}],
                                 gpus_for(gpus[cfg.teacher], 1), "search")}
    grace = args.grace_epochs or max(1, cfg.epochs // 8, cfg.eval_start_epoch + 1)
    searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=args.search_seed))
    scheduler = ASHAScheduler(time_attr="epoch", max_t=cfg.epochs,
                              grace_period=min(grace, cfg.epochs))
    print(f"{args.table}: {args.num_samples} trials of {args.preset}, searching "
          f"{', '.join(dims)} for the highest {args.metric}")
    return keep_open(page, args.table, launch(
        args.table, experiment_name(args, prefix), space, list(dims), args, results_dir,
        search=True, metric=args.metric, mode="max", search_alg=searcher, scheduler=scheduler,
        num_samples=args.num_samples))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    parser = build_parser()
    args = Options.of(parser.parse_args(argv))
    try:
        args, base, space = plan(args)
    except GridError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return run_search(args, base, space)


if __name__ == "__main__":
    sys.exit(main())
