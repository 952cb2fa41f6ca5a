"""Qimera/GDFQ data-free quantization of a teacher, one trial, resumable.

    python -m qimera_core.train --preset digits-2w2a --out runs/digits

Per step (method doc §5.1): sample latents (superposed with probability p), generate a batch,
teacher forward with BN statistics, generator step on soft CE + bns_weight * BNS, then the
quantized student distils from the teacher on the detached batch (after the warm-up).
"""
# This docstring is the command's --help text. The command is qimera_core.train's `main`; it
# hands its train() to main() here, so this module sits below qimera_core.train and never
# imports it (no import circle, and `python -m qimera_core.train` loads that module once).

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from qimera_core import checkpoint, prepare, results
from qimera_core.builders import resolve_device
from qimera_core.config import (
    PRESETS,
    ArgumentParser,
    TrainConfig,
    add_config_flags,
    build,
    overrides_from_args,
)
from qimera_core.report import log_reporter

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, TrainConfig]:
    p = ArgumentParser(prog="python -m qimera_core.train", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a named setting")
    p.add_argument("--out", type=Path, required=True,
                   help="run directory (result.json, checkpoint/)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    add_config_flags(p)
    args = p.parse_args(argv)
    try:
        cfg = build(args.preset, **overrides_from_args(args))
    except ValueError as e:
        p.error(str(e))
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} is a file; pass a directory for the run (it is created)")
    ckpt = args.out / "checkpoint"
    if checkpoint.exists(ckpt) and not args.resume:
        p.error(f"{ckpt} already holds a checkpoint; pass --resume to continue it, or choose "
                "another --out (nothing was overwritten)")
    if args.resume and not checkpoint.exists(ckpt):
        p.error(f"--resume given but {ckpt} holds no checkpoint")
    return args, cfg


def _get_ready(cfg: TrainConfig, out: Path) -> None:
    """Everything the run needs, checked (and the digits teacher trained) before any training;
    raises ValueError or OSError with a message for the user."""
    prepare.check_inputs(cfg)
    try:
        prepare.ensure_ready(cfg)
    except ValueError:
        if not (cfg.teacher.startswith("digits") and cfg.teacher_weights == ""):
            raise                     # everything else needs `python -m qimera_core.prepare`
        log.info("first run: preparing %s into %s (offline)", cfg.teacher, cfg.cache)
        prepare.prepare(cfg)
    out.mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None, train: Callable[..., dict[str, Any]]) -> int:
    """Parse and check the flags, prepare what the run needs, run `train` (qimera_core.train's,
    which calls this from its own `main`) and write result.json and the trials table."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args, cfg = parse_args(argv)
    try:
        _get_ready(cfg, args.out)
    except ValueError as e:
        print(f"python -m qimera_core.train: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"python -m qimera_core.train: error: {e.filename}: {e.strerror}; --out and "
              "--cache-dir must be directories this user can write", file=sys.stderr)
        return 2
    history: list[dict[str, Any]] = []

    def report(metrics: Mapping[str, Any], checkpoint_dir: Path | None = None) -> None:
        history.append(dict(metrics))
        log_reporter(metrics, checkpoint_dir)

    final = train(cfg, args.out, report=report,
                  resume_from=args.out / "checkpoint" if args.resume else None)
    status = final.pop("status")
    summary = {"status": status, "config": cfg.to_dict(), "config_hash": cfg.config_hash,
               "metrics": final}
    tmp = args.out / ".result.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=list) + "\n")
    os.replace(tmp, args.out / "result.json")
    row = results.make_row(cfg, final, table="cli", trial_id=args.out.name, status=status,
                           device_name=_device_name(resolve_device(cfg.device)))
    results.write([row], args.out, "trials")
    print(f"teacher top-1 {final.get('teacher_top1', math.nan):.2f}%  "
          f"start top-1 {final.get('start_top1', math.nan):.2f}%  "
          f"final top-1 {final.get('top1', math.nan):.2f}%  "
          f"(best-epoch {final.get('best_top1', math.nan):.2f}% at epoch "
          f"{final.get('best_epoch', 0):.0f}, chosen on the test set)  status {status}  "
          f"-> {args.out / 'result.json'}")
    return 0 if status == "ok" else 2


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
