"""The offline example (README; docs/training.md) as mean ± std over seeds: `--preset digits-2w2a`
per seed.

    python bench/digits_seeds.py --seeds 0 1 2 --out runs/digits-seeds

Each seed is one `python -m qimera_core.train --preset digits-2w2a --seed S` run in its own
directory (an existing run is resumed, not repeated). The digits teacher is trained once into
the cache and is the same for every seed; the seed changes the generator, the latents and the
student's training. The floats, and so the accuracies, also change with the CPU and the torch
build, so compare these figures with a run on the same machine, not across machines.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

KEYS = ("teacher_top1", "start_top1", "top1", "best_top1")


def run_seed(seed: int, out: Path, extra: list[str]) -> dict[str, float]:
    run = out / f"seed{seed}"
    result = run / "result.json"
    if not result.exists():
        cmd = [sys.executable, "-m", "qimera_core.train", "--preset", "digits-2w2a",
               "--seed", str(seed), "--out", str(run), *extra]
        if (run / "checkpoint").exists():
            cmd.append("--resume")
        subprocess.run(cmd, check=True)
    return json.loads(result.read_text())["metrics"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("runs/digits-seeds"))
    p.add_argument("extra", nargs="*", help="more train flags after --, e.g. -- --cache-dir D")
    args = p.parse_args()
    rows = {s: run_seed(s, args.out, args.extra) for s in args.seeds}
    print(f"digits-2w2a, {len(rows)} seeds, cpu ({platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}")
    for s, m in rows.items():
        print(f"  seed {s}: " + "  ".join(f"{k} {m[k]:.2f}" for k in KEYS)
              + f"  best_epoch {m['best_epoch']:.0f}")
    for k in KEYS:
        vals = [m[k] for m in rows.values()]
        std = statistics.stdev(vals) if len(vals) > 1 else float("nan")
        print(f"  {k:13s} {statistics.mean(vals):6.2f} ± {std:.2f}  (mean ± std over seeds)")


if __name__ == "__main__":
    main()
