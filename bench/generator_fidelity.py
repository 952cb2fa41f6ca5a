"""The generator methods (Qimera, GDFQ, AdaDFQ, ZAQ) on the akamaster CIFAR-10 ResNet-20 and the
first 1000 CIFAR-10 test images (../shared/data), on a short CPU schedule: batch 64, 25 steps per
epoch, 12 epochs, warm-up 4, 4w4a. Each method's seeds run as one pack; prints each method's
start top-1 (the end of the warm-up) and final top-1 per seed (and --json).

    python bench/generator_fidelity.py [--shared ../shared/data] [--seeds 3] [--json out.json]
    python bench/generator_fidelity.py --methods zaq --work-dir /work/runs/gf   # resumable

With `--work-dir`, each method's pack writes its checkpoints to DIR/<method> and a later run with
the same flags continues from there (a kill at any point ends with the same figures as an
uninterrupted run, as every trial does); without it, a temporary directory.

Every method keeps its own losses and constants from build(method=...); the schedule above
replaces each one's own (AdaDFQ's batch 16, ZAQ's 300 epochs of 60 steps at batch 256), so the
methods differ only in what they are. A pipeline check on a short schedule: not the paper's
numbers (400 epochs of 200 steps).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import akamaster  # bench/akamaster.py (this script's folder is on sys.path)

from qimera_core.train import train_pack

METHODS = ("qimera", "gdfq", "adadfq", "zaq")
SHORT = dict(batch_size=64, steps_per_epoch=25, epochs=12, warmup_epochs=4, act_range_epochs=4,
             w_bits=4, a_bits=4)


def run(shared: Path, seeds: int, methods: list[str], short: dict,
        work: Path | None = None) -> list[dict]:
    out = []
    for method in methods:
        cfgs = akamaster.configs(shared, method, seeds, **short)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            out_dir = Path(work) / method if work else Path(tmp)
            out_dir.mkdir(parents=True, exist_ok=True)
            ckpt = out_dir / "checkpoint"
            resume = ckpt if (ckpt / "state.pt").is_file() or (ckpt / "state.prev.pt").is_file() \
                else None
            finals = train_pack(cfgs, out_dir, report=akamaster.progress(method, short["epochs"]),
                                resume_from=resume)
        top1, start = [f["top1"] for f in finals], [f["start_top1"] for f in finals]
        row = dict(method=method, teacher=finals[0]["teacher_top1"], start=start, top1=top1,
                   start_mean=akamaster.mean(start), top1_mean=akamaster.mean(top1),
                   top1_std=akamaster.std(top1),
                   status=[f["status"] for f in finals], wall_s=time.perf_counter() - t0)
        out.append(row)
        print(f"{method:7s} teacher {row['teacher']:.2f}  start {row['start_mean']:6.2f}  final "
              f"{row['top1_mean']:6.2f} ± {row['top1_std']:.2f}  "
              f"({', '.join(f'{v:.2f}' for v in top1)})  {row['wall_s']:.0f} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", type=Path, default=akamaster.SHARED)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--epochs", type=int, default=SHORT["epochs"])
    p.add_argument("--steps-per-epoch", type=int, default=SHORT["steps_per_epoch"])
    p.add_argument("--json", type=Path)
    p.add_argument("--work-dir", type=Path, default=None,
                   help="keep each method's checkpoints in DIR/<method> and continue from them")
    args = p.parse_args(argv)
    error = akamaster.missing(args.shared)
    if error:
        print(error, file=sys.stderr)
        return 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        print(f"unknown --methods {bad}; choose from {list(METHODS)}", file=sys.stderr)
        return 2
    short = {**SHORT, "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
             "warmup_epochs": min(SHORT["warmup_epochs"], args.epochs),
             "act_range_epochs": min(SHORT["act_range_epochs"], args.epochs)}
    logging.basicConfig(level=logging.WARNING)
    rows = run(args.shared, args.seeds, methods, short, args.work_dir)
    akamaster.write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    code = main()
    if code:
        sys.exit(code)
