"""Seconds per training step at the cifar10-resnet20-4w4a shape, its FLOPs, and what fraction
of this machine's own conv throughput it reaches.

    python bench/step_time.py --device cpu --threads 2 --steps 10
    python bench/step_time.py --quick                   # seconds: tiny sizes, for tests only
    python bench/step_time.py --method zaq --batch-size 64 --steps 4   # another method's step

Batch 200, pytorchcv ResNet-20 teacher with random weights, synthetic eval data (nothing is
downloaded). Phases: generator forward, teacher forward (+BN statistics), generator backward
through the teacher + Adam step, student (forward + backward + SGD step, or the calibration
forward in warm-up). Each phase boundary synchronises the GPU, so phase times add up to a
slightly slower step than the unmarked timing printed as `step`.

In the same process, between the step measurements, it probes what the machine can do with the
same threads: a square fp32 matmul, and the largest conv of the step (the generator's
128->64 3x3 conv at full resolution) forward and forward+backward, in the step's memory
format. FLOPs come from `torch.utils.flop_counter` with grouped conv backward counted per
group (bench/flops.py; torch's own formula ignores groups there) (convs and matmuls;
elementwise work, BatchNorm and fake-quantization count zero). Each phase's rate is its FLOPs
over its median time; `of conv` is that rate over the conv probe's forward+backward rate.
Compare these fractions, not seconds, between machines.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import flops as flops_mod  # bench/flops.py (this script's folder is on sys.path)
import torch
import torch.nn.functional as F

from qimera_core import quant
from qimera_core.builders import resolve_device
from qimera_core.config import GENERATOR_METHODS, build
from qimera_core.step import Trial


def _sync(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def measure(trial: Trial, steps: int, train_student: bool, calibrate: bool) -> dict[str, float]:
    sync = _sync(trial.device)
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


def count_flops(trial: Trial, train_student: bool, calibrate: bool) -> dict[str, float]:
    """FLOPs of one step, split at the same phase marks as the timing."""
    quant.set_calibration(trial.student, calibrate)
    flops: dict[str, float] = {}
    with flops_mod.counter() as counter:     # grouped conv backward per group
        last = 0

        def mark(name: str) -> None:
            nonlocal last
            total = counter.get_total_flops()
            flops[name] = total - last
            last = total
        trial.step(train_student, calibrate, mark=mark)
        flops["step"] = counter.get_total_flops()
    quant.set_calibration(trial.student, False)
    return flops


def _best_rate(fn: Callable[[], object], flops: float, sync: Callable[[], None],
               reps: int) -> float:
    """GFLOP/s of the median of `reps` timed calls, after two untimed ones."""
    times = []
    for i in range(reps + 2):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return flops / statistics.median(times) / 1e9


def probe(trial: Trial, reps: int = 5, n: int = 2048) -> dict[str, float]:
    """This machine's matmul (n x n) and largest-conv throughput in GFLOP/s, with the step's
    threads."""
    device, sync = trial.device, _sync(trial.device)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    conv = trial.generator.conv2                             # the step's largest conv
    size = trial.generator.h0 * 4
    fmt = torch.channels_last if trial.cfg.channels_last else torch.contiguous_format
    x = torch.randn(trial.cfg.batch_size, conv.in_channels, size, size, device=device)
    x = x.contiguous(memory_format=fmt).requires_grad_(True)
    w = conv.weight.detach().clone().contiguous(memory_format=fmt).requires_grad_(True)
    bias = conv.bias.detach().clone().requires_grad_(True)
    conv_flops = 2.0 * x.shape[0] * w.numel() * size * size          # multiply-adds x 2

    def conv_fwd() -> None:
        with torch.no_grad():
            F.conv2d(x, w, bias, padding=1)

    def conv_fwd_bwd() -> None:
        y = F.conv2d(x, w, bias, padding=1)
        x.grad = w.grad = bias.grad = None
        y.backward(torch.ones_like(y))

    return {"matmul": _best_rate(lambda: a @ b, 2.0 * n**3, sync, reps),
            "conv_fwd": _best_rate(conv_fwd, conv_flops, sync, reps),
            "conv_fwd_bwd": _best_rate(conv_fwd_bwd, 3 * conv_flops, sync, reps)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per phase")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--amp-bf16", action="store_true")
    p.add_argument("--teacher", default="resnet20_cifar10")
    p.add_argument("--method", default="qimera", choices=GENERATOR_METHODS,
                   help="whose training step (the post-training methods have none)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, for tests: CPU, one thread, batch 4, 2 timed steps, a "
                        "256^2 matmul probe of one rep; the figures mean nothing")
    args = p.parse_args(argv)
    if args.quick:
        args.device, args.threads, args.batch_size, args.steps = "cpu", 1, 4, 2
    if args.steps < 2:
        p.error("--steps must be >= 2: the whole step and its phases are timed on alternate "
                "steps, each after an untimed one")
    probe_size = dict(reps=1, n=256) if args.quick else {}
    cfg = build("cifar10-resnet20-4w4a", method=args.method, teacher=args.teacher,
                teacher_weights="random",
                eval_data="synthetic", device=args.device, num_threads=args.threads,
                batch_size=args.batch_size, channels_last=args.channels_last,
                amp_bf16=args.amp_bf16)
    device = resolve_device(cfg.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    trial = Trial(cfg, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        (platform.processor() or platform.machine())
    print(f"device={device.type} ({name}) threads={torch.get_num_threads()} "
          f"method={cfg.method} batch={cfg.batch_size} teacher={cfg.teacher} "
          f"torch={torch.__version__} "
          f"channels_last={cfg.channels_last} amp_bf16={cfg.amp_bf16}")
    probes = [probe(trial, **probe_size)]
    for label, train_student, calibrate in (("warm-up step (calibrating)", False, True),
                                            ("main-phase step", True, False)):
        flops = count_flops(trial, train_student, calibrate)
        r = measure(trial, args.steps, train_student, calibrate)
        probes.append(probe(trial, **probe_size))  # interleaved: load on a shared machine drifts
        conv = statistics.median(q["conv_fwd_bwd"] for q in probes[-2:])
        parts = "  ".join(f"{k}={v:.4f}" for k, v in r.items() if k != "step")
        print(f"{label:28s} median {r['step']:.4f} s/step   [{parts}]")
        for k in r:
            rate = flops.get(k, 0.0) / r[k] / 1e9
            print(f"    {k:20s} {flops.get(k, 0.0) / 1e9:8.2f} GFLOP  {r[k]:8.4f} s  "
                  f"{rate:8.1f} GFLOP/s  {rate / conv:6.1%} of conv")
    med = {k: statistics.median(q[k] for q in probes) for k in probes[0]}
    n = probe_size.get("n", 2048)
    print(f"probes (median of {len(probes)}, GFLOP/s): matmul {n}^2 {med['matmul']:.1f}  "
          f"largest conv fwd {med['conv_fwd']:.1f}  fwd+bwd {med['conv_fwd_bwd']:.1f}")


if __name__ == "__main__":
    main()
