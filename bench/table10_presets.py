"""Seconds per training step and peak memory of Table 10's presets on one machine, with the
ResNet-18 preset as the same-run baseline.

    python bench/table10_presets.py --batch-size 16 --steps 2 --threads 2

Each preset runs in its own process (so peak RSS is that preset's own): random teacher weights,
synthetic eval data (nothing is downloaded), one calibrating warm-up step, one untimed
main-phase step, then the median of `--steps` main-phase steps (generator + teacher + student
forward/backward + both optimizer steps). Peak memory is the process's maximum resident set
size (`ru_maxrss`: models, optimizer state and the step's activations).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

PRESETS = ("imagenet-resnet18-4w4a", "imagenet-inceptionv3-4w4a", "imagenet-sqnxt23-6w6a",
           "imagenet-shufflenet-6w6a")


def run_one(preset: str, batch_size: int, steps: int, threads: int) -> dict[str, float]:
    import torch

    from qimera_core import quant
    from qimera_core.config import build
    from qimera_core.step import Trial

    torch.set_num_threads(threads)
    cfg = build(preset, teacher_weights="random", eval_data="synthetic", device="cpu",
                batch_size=batch_size, num_threads=threads)
    t0 = time.perf_counter()
    trial = Trial(cfg, torch.device("cpu"))
    build_s = time.perf_counter() - t0
    quant.set_calibration(trial.student, True)
    trial.step(False, True)                      # warm-up epoch step: ranges track
    quant.set_calibration(trial.student, False)
    trial.step(True, False)                      # first main-phase step (allocations), untimed
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trial.step(True, False)
        times.append(time.perf_counter() - t0)
    return {"build_s": build_s, "step_s": statistics.median(times),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=2, help="timed main-phase steps per preset")
    p.add_argument("--threads", type=int, default=2, help="torch threads per preset")
    p.add_argument("--preset", nargs="+", default=list(PRESETS))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:  # one preset, result as JSON on stdout
        print(json.dumps(run_one(args.preset[0], args.batch_size, args.steps, args.threads)))
        return
    import torch
    print(f"cpu={platform.processor() or platform.machine()} threads={args.threads} "
          f"batch={args.batch_size} timed_steps={args.steps} torch={torch.__version__}")
    base = None
    for preset in args.preset:
        cmd = [sys.executable, __file__, "--child", "--preset", preset, "--batch-size",
               str(args.batch_size), "--steps", str(args.steps), "--threads", str(args.threads)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                      text=True).stdout.splitlines()[-1])
        base = base or r["step_s"]
        print(f"{preset:28s} step {r['step_s']:8.2f} s  ({r['step_s'] / base:5.2f}x "
              f"{args.preset[0]})  peak RSS {r['peak_rss_gib']:6.2f} GiB  "
              f"build {r['build_s']:.1f} s",
              flush=True)


if __name__ == "__main__":
    main()
