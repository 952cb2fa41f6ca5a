"""ZeroQ and DSG on the akamaster CIFAR-10 ResNet-20 and the first 1000 CIFAR-10 test images
(../shared/data): final top-1 per seed at 8w8a and 4w4a, under the official protocol switches
(ZeroQ's uniform init, one range per ReLU module) and our defaults (the papers' N(0, 1) init,
one range per ReLU call). Each setting's seeds run as one pack. Prints a table (and --json).

    python bench/ptq_fidelity.py [--shared ../shared/data] [--seeds 3] [--json out.json]

The teacher scores 91.50 on these 1000 images. ZeroQ's README shows W8A8 within 0.2 points of
FP on every model; GDFQ quotes ZeroQ at 79.30 for CIFAR-10 4w4a with pytorchcv's ResNet-20.
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

SETTINGS = {
    # label: (method, overrides)
    "zeroq official": ("zeroq", dict(synth_init="uniform", act_quant_sites="module")),
    "zeroq default": ("zeroq", {}),
    "dsg default": ("dsg", {}),
}


def run(shared: Path, seeds: int, bits: list[int], which: list[str]) -> list[dict]:
    out = []
    for b in bits:
        for label in which:
            method, kw = SETTINGS[label]
            cfgs = akamaster.configs(shared, method, seeds, w_bits=b, a_bits=b, **kw)
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as d:
                finals = train_pack(cfgs, Path(d),
                                    report=akamaster.progress(f"{label} {b}w{b}a", cfgs[0].epochs))
            top1 = [f["top1"] for f in finals]
            row = dict(setting=label, bits=f"{b}w{b}a", batch=cfgs[0].batch_size,
                       teacher=finals[0]["teacher_top1"], top1=top1,
                       mean=akamaster.mean(top1), std=akamaster.std(top1),
                       synth_loss=[f["loss_bns"] for f in finals],
                       wall_s=time.perf_counter() - t0)
            out.append(row)
            print(f"{label:16s} {row['bits']}  batch {row['batch']:3d}  teacher "
                  f"{row['teacher']:.2f}  top-1 {row['mean']:.2f} ± {row['std']:.2f}  "
                  f"({', '.join(f'{v:.2f}' for v in top1)})  {row['wall_s']:.0f} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", type=Path, default=akamaster.SHARED)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--bits", default="8,4")
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help=f"comma list of {', '.join(SETTINGS)}")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    error = akamaster.missing(args.shared)
    if error:
        print(error, file=sys.stderr)
        return 2
    which = [s.strip() for s in args.settings.split(",") if s.strip()]
    bad = [s for s in which if s not in SETTINGS]
    if bad:
        print(f"unknown --settings {bad}; choose from {list(SETTINGS)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    rows = run(args.shared, args.seeds, [int(b) for b in args.bits.split(",")], which)
    akamaster.write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    code = main()
    if code:
        sys.exit(code)
