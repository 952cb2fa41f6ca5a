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

from qimera_core.config import (
    FIELD_NAMES,
    PRESETS,
    ArgumentParser,
    TrainConfig,
    add_config_flags,
    build,
)
from sweeps.grid import GridError

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


def plan(args: argparse.Namespace) -> tuple[TrainConfig, dict[str, Dim]]:
    from qimera_core.config import overrides_from_args
    from sweeps.plan import check_overrides
    if args.smoke_test:
        args.preset = args.preset or SMOKE["preset"]
        args.num_samples = args.num_samples or SMOKE["num_samples"]
    if not args.preset:
        raise GridError("--preset is required (or --smoke-test)")
    args.num_samples = args.num_samples or 32
    overrides = overrides_from_args(args)
    check_overrides(overrides)
    try:
        base = build(args.preset, **overrides)
    except ValueError as err:
        raise GridError(f"preset {args.preset}: {err}") from None
    space = parse_space(args.space)
    check_space(base, space)
    return base, space


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from sweeps.launch import run_search
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        base, space = plan(args)
    except GridError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return run_search(args, base, space)


if __name__ == "__main__":
    sys.exit(main())
