"""ZeroQ's image synthesis, lone seeds against a pack: seconds per synthesised batch and images
per second, in one process (same machine, same run), with the ratio.

    python bench/synthesis.py [--teacher resnet20_cifar10] [--seeds 4] [--iters 50] [--threads 2]
    farm-bench --vs 'python bench/synthesis.py --mode lone' -- \
        python bench/synthesis.py --mode packed

Lone: each of --seeds seeds optimises its own batch in turn (one teacher forward per seed and
iteration). Packed: the seeds' batches go through the teacher as one batch per iteration
(qimera_core.synth.Synthesizer with every seed). Random teacher weights (no download): the
work per iteration does not depend on the weights. --iters iterations per batch (ZeroQ runs 500;
the time per iteration is what scales). `--mode lone` or `packed` times one of the two only (for
farm-bench, which times whole processes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from qimera_core import models
from qimera_core.builders import build_networks
from qimera_core.config import build
from qimera_core.synth import Synthesizer


def timed(cfgs, teacher, shape, device) -> float:
    s = Synthesizer(cfgs, teacher, shape, device)
    try:
        t0 = time.perf_counter()
        s.batch(0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0
    finally:
        s.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="resnet20_cifar10")
    p.add_argument("--method", default="zeroq", choices=("zeroq", "dsg"))
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", choices=("both", "lone", "packed"), default="both")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfgs = [build(method=args.method, teacher=args.teacher, teacher_weights="random",
                  eval_data="synthetic", synth_iters=args.iters, batch_size=args.batch_size,
                  device=args.device, seed=s) for s in range(args.seeds)]
    teacher, _ = build_networks(cfgs[0], device)
    shape = models.spec(args.teacher).input_shape
    if args.mode != "both":                 # one of the two, for farm-bench
        t = (sum(timed([c], teacher, shape, device) for c in cfgs) if args.mode == "lone"
             else timed(cfgs, teacher, shape, device))
        print(f"{args.mode}: {t:.2f} s for {args.seeds} seeds' batches")
        return 0
    timed(cfgs[:1], teacher, shape, device)                     # warm-up (allocator, kernels)
    lone = sum(timed([c], teacher, shape, device) for c in cfgs)
    packed = timed(cfgs, teacher, shape, device)
    images = args.seeds * args.batch_size
    row = dict(teacher=args.teacher, method=args.method, seeds=args.seeds, iters=args.iters,
               batch=args.batch_size, threads=torch.get_num_threads(), device=args.device,
               lone_s_per_batch=lone / args.seeds, packed_s_per_batch=packed / args.seeds,
               lone_images_per_s=images * args.iters / lone,
               packed_images_per_s=images * args.iters / packed, speedup=lone / packed)
    print(f"{args.method} synthesis, {args.teacher}, batch {args.batch_size}, {args.iters} "
          f"iterations, {args.seeds} seeds, {row['threads']} threads on {args.device}")
    print(f"  lone   : {row['lone_s_per_batch']:.2f} s per seed's batch, "
          f"{row['lone_images_per_s']:.0f} image-iterations/s")
    print(f"  packed : {row['packed_s_per_batch']:.2f} s per seed's batch, "
          f"{row['packed_images_per_s']:.0f} image-iterations/s")
    print(f"  packed / lone throughput: {row['speedup']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    code = main()
    if code:
        sys.exit(code)
