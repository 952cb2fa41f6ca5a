"""What live rows cost: writing one epoch's curve row, reading a results directory while its
trials are running (one small file per reported epoch) against after they end (one merged file
per trial), and building the live page's state from it.

    python bench/live_rows.py [--trials 24] [--epochs 20] [--repeat 5]

Prints median seconds for each, and the ratio of reading per-epoch files to merged files,
measured in this one run on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from analysis import serve
from qimera_core import results
from qimera_core.config import build
from sweeps import rows


def metrics(epoch: int) -> dict:
    return {"epoch": epoch, "top1": 40.0 + epoch * 0.1, "best_top1": 41.0, "loss_s": 1.0,
            "wall_time_s": 5.0 * epoch, "time_total_s": 5.0 * epoch}


def median_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    ks, ps = [2, 10, 25, 100], [0.10, 0.25, 0.40, 0.55, 0.70, 0.85]
    cfgs = [build("digits-smoke", mix_classes=ks[i % 4], mix_prob=ps[(i // 4) % 6], seed=i // 24)
            for i in range(args.trials)]
    with tempfile.TemporaryDirectory() as tmp:
        live, merged = Path(tmp, "live"), Path(tmp, "merged")
        t = time.perf_counter()
        for i, c in enumerate(cfgs):
            for e in range(1, args.epochs + 1):
                rows.write_live_curve("table9", live, f"t{i}", c, metrics(e))
        write_s = (time.perf_counter() - t) / (args.trials * args.epochs)
        for i, c in enumerate(cfgs):
            reports = [metrics(e) for e in range(1, args.epochs + 1)]
            results.write(rows.curve_rows("table9", f"t{i}", c, reports, status="ok"), merged,
                          rows.CURVES)
        read_live = median_s(lambda: rows.read_curves(live), args.repeat)
        read_merged = median_s(lambda: rows.read_curves(merged), args.repeat)
        state_live = median_s(lambda: serve.page_state(live), args.repeat)
    n = args.trials * args.epochs
    print(f"{args.trials} trials x {args.epochs} epochs = {n} curve rows")
    print(f"write one live row (own file, atomic rename): {write_s * 1e3:.2f} ms")
    print(f"read_curves, {n} per-epoch files: {read_live:.3f} s")
    print(f"read_curves, {args.trials} merged files: {read_merged:.3f} s")
    print(f"ratio per-epoch / merged: {read_live / read_merged:.1f}x")
    print(f"page_state while all {args.trials} trials run: {state_live:.3f} s")


if __name__ == "__main__":
    main()
