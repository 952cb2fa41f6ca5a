"""What live rows cost: writing one epoch's curve row, and reading a results directory while
its trials run against after they end, for three layouts of the same rows: one file per epoch
(no merging), the live files as `sweeps.rows.write_live_curve` leaves them (merged once a trial
has more than LIVE_FILES_MAX), and one final file per trial. Also the live page's state.

    python bench/live_rows.py [--trials 24] [--epochs 20] [--repeat 5]

Prints median seconds for each and the ratios to the final layout, all measured in this one
run on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from analysis import pagestate
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
        single, live, final = Path(tmp, "single"), Path(tmp, "live"), Path(tmp, "final")
        t = time.perf_counter()
        for i, c in enumerate(cfgs):
            for e in range(1, args.epochs + 1):
                rows.write_live_curve("table9", live, f"t{i}", c, metrics(e))
        write_s = (time.perf_counter() - t) / (args.trials * args.epochs)
        for i, c in enumerate(cfgs):
            reports = [metrics(e) for e in range(1, args.epochs + 1)]
            for r in rows.curve_rows("table9", f"t{i}", c, reports, status="running"):
                results.write([r], single, rows.live_stem(f"t{i}", int(r["epoch"])))
            results.write(rows.curve_rows("table9", f"t{i}", c, reports, status="ok"), final,
                          rows.CURVES)
        secs = {name: median_s(lambda d=d: rows.read_curves(d), args.repeat)
                for name, d in (("single", single), ("live", live), ("final", final))}
        files = {name: len(list(d.glob("*.parquet")))
                 for name, d in (("single", single), ("live", live), ("final", final))}
        state_live = median_s(lambda: pagestate.page_state(live), args.repeat)
    n = args.trials * args.epochs
    print(f"{args.trials} trials x {args.epochs} epochs = {n} curve rows")
    print(f"write one live row (own file, atomic rename, merge when due): {write_s * 1e3:.2f} ms")
    for name, what in (("single", "one file per epoch, never merged"),
                       ("live", f"live, merged past {rows.LIVE_FILES_MAX} files a trial"),
                       ("final", "one final file per trial")):
        print(f"read_curves, {what} ({files[name]} files): {secs[name]:.3f} s "
              f"= {secs[name] / secs['final']:.1f}x final")
    print(f"page_state while all {args.trials} trials run: {state_live:.3f} s")


if __name__ == "__main__":
    main()
