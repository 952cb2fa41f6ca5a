"""Trials per hour against pack size: packed training vs one trial at a time, in one run.

    python bench/pack_throughput.py direct --device cpu --threads 2             # digits + CIFAR
    python bench/pack_throughput.py direct --device cuda --shape cifar --sizes 1,2,4,8,16
    python bench/pack_throughput.py fractional --procs 4                       # GPU baseline
    python bench/pack_throughput.py tune --epochs 4 --steps-per-epoch 25       # through Ray Tune
    python bench/pack_throughput.py direct --quick            # seconds: tiny sizes, for tests

`direct` times training steps in this process (warm-up and main phase, median of --steps) for
packs of each size and turns them into trials per hour of the given schedule (evaluation left
out); every figure is compared with the pack of one measured in the same run.
GFLOP/member is one main-phase step's FLOPs per member (grouped conv backward counted per
group, bench/flops.py) and `of conv` the pack's achieved rate over the same run's conv probe
(bench/step_time.py's largest-conv forward+backward). Members differ
in p, K and sigma, as a table's do. `fractional` runs --procs separate processes of one trial
each on one GPU at once (what `--gpus-per-trial 0.25` does) and prints their summed rate.
`tune` runs the Table 9 smoke sweep (24 trials) through Ray Tune with --pack off, --pack
auto and one pack of 24 on all CPUs, and prints each wall-clock ratio to unpacked.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import flops  # bench/flops.py (this script's folder is on sys.path)
import step_time as step_bench  # bench/step_time.py: the conv probe
import torch

from qimera_core.builders import resolve_device
from qimera_core.config import build
from qimera_core.step import Trial

P = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)
K = (2, 10, 25, 100)
SHAPES = {   # name: (preset, extra settings, default sizes on CPU)
    "digits": ("digits-offline", {}, (1, 4, 8, 16, 24)),
    "cifar": ("cifar10-resnet20-4w4a", {"teacher_weights": "random", "eval_data": "synthetic",
                                        "batch_size": 200}, (1, 2, 4)),
}


def members(shape: str, n: int, device: str, threads: int) -> list:
    preset, extra, _ = SHAPES[shape]
    cache = {} if extra.get("teacher_weights") == "random" else {"cache_dir": _cache()}
    return [build(preset, **extra, **cache, device=device, num_threads=threads,
                  mix_prob=P[i % len(P)], mix_classes=K[(i // len(P)) % len(K)],
                  noise_sigma=1.0 + 0.1 * (i // (len(P) * len(K))))
            for i in range(n)]


def _cache() -> str:
    """The digits teacher, trained offline into a temporary cache once per run."""
    if "QIMERA_BENCH_CACHE" not in os.environ:
        from qimera_core import prepare
        path = tempfile.mkdtemp(prefix="qimera-bench-cache-")
        prepare.prepare(build("digits-offline", cache_dir=path))
        os.environ["QIMERA_BENCH_CACHE"] = path
    return os.environ["QIMERA_BENCH_CACHE"]


def step_time(trial: Trial, steps: int, train_student: bool) -> float:
    sync = torch.cuda.synchronize if trial.device.type == "cuda" else (lambda: None)
    trial.set_calibration(not train_student)
    times = []
    for i in range(steps + 2):                 # two untimed warm-up steps
        sync()
        t0 = time.perf_counter()
        trial.step(train_student, calibrate=not train_student)
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    trial.set_calibration(False)
    return statistics.median(times)


def main_step_flops(trial: Trial) -> float:
    """FLOPs of one main-phase step of the whole pack, grouped conv backward counted per group
    (bench/flops.py): per member, it equals the unpacked step's."""
    with flops.counter() as counter:
        trial.step(True, calibrate=False)
    return float(counter.get_total_flops())


def direct(args: argparse.Namespace) -> None:
    if args.quick:
        args.device, args.threads, args.shape, args.sizes, args.steps = "cpu", 1, "digits", "1,2", 1
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={name} threads={torch.get_num_threads()} torch={torch.__version__}")
    for shape in args.shape.split(","):
        sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes else SHAPES[shape][2])
        cfg = members(shape, 1, args.device, args.threads)[0]
        warm = cfg.warmup_epochs * cfg.steps_per_epoch
        main = (cfg.epochs - cfg.warmup_epochs) * cfg.steps_per_epoch
        print(f"\n{shape}: {cfg.teacher} {cfg.w_bits}w{cfg.a_bits}a batch {cfg.batch_size}, "
              f"schedule {warm} warm-up + {main} main steps per trial")
        print(f"{'pack':>5} {'warm-up s/step':>15} {'main s/step':>12} {'trials/h':>9} "
              f"{'x unpacked':>11} {'peak MiB/member':>16} {'GFLOP/member':>13} "
              f"{'of conv':>8}")
        base, conv = None, None
        for n in sizes:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            trial = Trial(members(shape, n, args.device, args.threads), device)
            tw = step_time(trial, args.steps, train_student=False)
            tm = step_time(trial, args.steps, train_student=True)
            if conv is None:         # the same run's conv probe (fwd + bwd, GFLOP/s)
                quick = dict(reps=1, n=256) if args.quick else {}
                conv = step_bench.probe(trial, **quick)["conv_fwd_bwd"]
            gflop = main_step_flops(trial) / n / 1e9
            per_hour = 3600 * n / (warm * tw + main * tm)
            if n == 1:
                base = per_hour
            mem = (f"{torch.cuda.max_memory_allocated(device) / n / 2**20:16.0f}"
                   if device.type == "cuda" else f"{'-':>16}")
            ratio = f"{per_hour / base:11.2f}" if base else f"{'(no n=1)':>11}"
            print(f"{n:5d} {tw:15.4f} {tm:12.4f} {per_hour:9.3g} {ratio} {mem} "
                  f"{gflop:13.3f} {gflop * n / tm / conv:8.1%}", flush=True)
            del trial


def _one_process(args: argparse.Namespace) -> None:
    """Child of `fractional`: one trial's main-phase steps; prints steps per second."""
    device = resolve_device("cuda")
    torch.cuda.set_per_process_memory_fraction(1.0 / args.procs)
    trial = Trial(members("cifar", 1, "cuda", 0)[0], device)
    step_time(trial, 3, train_student=True)                     # warm up before the barrier
    while time.time() < args.start_at:
        time.sleep(0.01)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trial.step(True, False)
    torch.cuda.synchronize()
    print(f"{args.steps / (time.perf_counter() - t0):.4f}")


def fractional(args: argparse.Namespace) -> None:
    start_at = time.time() + args.start_in
    procs = [subprocess.Popen([sys.executable, __file__, "_one", "--procs", str(args.procs),
                               "--steps", str(args.steps), "--start-at", str(start_at)],
                              stdout=subprocess.PIPE, text=True) for _ in range(args.procs)]
    rates = [float(p.communicate()[0].split()[-1]) for p in procs]
    print(f"{args.procs} processes of one CIFAR trial on one GPU: main-phase steps/s "
          f"{' + '.join(f'{r:.2f}' for r in rates)} = {sum(rates):.2f} trial-steps/s "
          f"(compare with `direct`: pack size / main s/step)")


def tune_sweeps(args: argparse.Namespace) -> None:
    """The Table 9 smoke sweep (24 trials) through Tune: unpacked, --pack auto (packs dealt
    over the CPUs), and one pack of 24 given every CPU."""
    flags = ["--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps_per_epoch),
             "--warmup-epochs", "1", "--act-range-epochs", "1"]
    variants = {"off": ["--pack", "off"], "auto": ["--pack", "auto"],
                "24 x all CPUs": ["--pack", "24", "--cpus-per-trial", str(args.num_cpus)]}
    times = {}
    with tempfile.TemporaryDirectory(prefix="qimera-bench-") as tmp:
        for i, (name, extra) in enumerate(variants.items()):
            out = Path(tmp) / f"v{i}"
            cmd = [sys.executable, "-m", "sweeps.table9", "--smoke-test", *extra,
                   "--storage", str(out / "s"), "--results", str(out / "r"),
                   "--address", "local", "--num-cpus", str(args.num_cpus), *flags,
                   *(["--dry-run"] if args.dry_run else [])]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name] = time.perf_counter() - t0
            print(f"--pack {name:>13}: 24 trials in {times[name]:6.1f} s "
                  f"({24 * 3600 / times[name]:5.0f} trials/h, "
                  f"{times['off'] / times[name]:.2f}x unpacked)", flush=True)
    print(f"({' '.join(flags)}, {args.num_cpus} CPUs, whole sweeps including Ray's start)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    d = sub.add_parser("direct", help="step times per pack size, in this process")
    d.add_argument("--device", default="cpu")
    d.add_argument("--threads", type=int, default=0, help="torch threads (0 = all)")
    d.add_argument("--shape", default="digits,cifar", help="digits, cifar or both")
    d.add_argument("--sizes", default="", help="pack sizes (default per shape, see SHAPES)")
    d.add_argument("--steps", type=int, default=6, help="timed steps per phase and size")
    d.add_argument("--quick", action="store_true",
                   help="tiny sizes, for tests: CPU, one thread, digits packs of 1 and 2, one "
                        "timed step, a small conv probe; the figures mean nothing")
    f = sub.add_parser("fractional", help="N single-trial processes sharing one GPU")
    f.add_argument("--procs", type=int, default=4)
    f.add_argument("--steps", type=int, default=30)
    f.add_argument("--start-in", type=float, default=60.0,
                   help="seconds until all processes start stepping together (each builds its "
                        "trial and warms up before)")
    o = sub.add_parser("_one")
    o.add_argument("--procs", type=int, default=4)
    o.add_argument("--steps", type=int, default=30)
    o.add_argument("--start-at", type=float, default=0.0)
    t = sub.add_parser("tune", help="the Table 9 smoke sweep through Tune, packed and not")
    t.add_argument("--epochs", type=int, default=4)
    t.add_argument("--steps-per-epoch", type=int, default=25)
    t.add_argument("--num-cpus", type=int, default=2)
    t.add_argument("--dry-run", action="store_true",
                   help="pass --dry-run to each sweep (they plan and stop before Ray): checks the "
                        "commands, for tests; the times mean nothing")
    args = p.parse_args(argv)
    {"direct": direct, "fractional": fractional, "_one": _one_process,
     "tune": tune_sweeps}[args.mode](args)


if __name__ == "__main__":
    main()
