"""Median seconds per training step at the cifar10-resnet20-4w4a shape, split into phases.

    python bench/step_time.py --device cpu --threads 2 --steps 10

Batch 200, pytorchcv ResNet-20 teacher with random weights, synthetic eval data (nothing is
downloaded). Phases: generator forward, teacher forward (+BN statistics), generator backward
through the teacher + Adam step, student (forward + backward + SGD step, or the calibration
forward in warm-up). Each phase boundary synchronises the GPU, so phase times add up to a
slightly slower step than the unmarked timing printed as `step`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

from qimera_core import quant
from qimera_core.config import build
from qimera_core.train import Trial, resolve_device


def measure(trial: Trial, steps: int, train_student: bool, calibrate: bool) -> dict[str, float]:
    device = trial.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    quant.set_calibration(trial.student, calibrate)
    phases: dict[str, list[float]] = defaultdict(list)
    totals = []
    for i in range(steps + 2):                # two untimed warm-up iterations
        sync()
        t0 = last = time.perf_counter()

        def mark(name: str) -> None:
            nonlocal last
            sync()
            now = time.perf_counter()
            phases[name].append(now - last)
            last = now
        trial.step(train_student, calibrate, mark=mark if i % 2 else None)
        sync()
        if i >= 2 and not i % 2:
            totals.append(time.perf_counter() - t0)
    quant.set_calibration(trial.student, False)
    out = {"step": statistics.median(totals)}
    out.update({k: statistics.median(v[1:]) for k, v in phases.items()})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per phase")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--amp-bf16", action="store_true")
    p.add_argument("--teacher", default="resnet20_cifar10")
    args = p.parse_args()
    cfg = build("cifar10-resnet20-4w4a", teacher=args.teacher, teacher_weights="random",
                eval_data="synthetic", device=args.device, num_threads=args.threads,
                batch_size=args.batch_size, channels_last=args.channels_last,
                amp_bf16=args.amp_bf16)
    device = resolve_device(cfg.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    trial = Trial(cfg, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={name} threads={torch.get_num_threads()} batch={cfg.batch_size} "
          f"teacher={cfg.teacher} torch={torch.__version__} channels_last={cfg.channels_last} "
          f"amp_bf16={cfg.amp_bf16}")
    for label, train_student, calibrate in (("warm-up step (calibrating)", False, True),
                                            ("main-phase step", True, False)):
        r = measure(trial, args.steps, train_student, calibrate)
        parts = "  ".join(f"{k}={v:.4f}" for k, v in r.items() if k != "step")
        print(f"{label:28s} median {r['step']:.4f} s/step   [{parts}]")


if __name__ == "__main__":
    main()
