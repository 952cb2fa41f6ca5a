"""Per-trial overhead of running trials through Ray Tune (`sweeps.launch`) against calling the
same `train()` directly, one trial at a time on one CPU thread each.

    python bench/sweep_overhead.py [--preset digits-smoke] [--trials 6]

Prints seconds per trial for: direct train(); Tune with reused worker processes (the sweeps'
default); Tune with a fresh worker per trial. Each Tune mode runs a 2-trial and an N-trial
sweep: the difference gives the marginal cost of a trial (its checkpoint copies to storage and
Parquet rows included), the rest is the sweep's fixed setup (Tuner, first worker, teardown).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import ray

from qimera_core import prepare
from qimera_core.config import build
from qimera_core.train import train
from sweeps.grid import Block
from sweeps.launch import main as sweep


def direct(configs: list, tmp: Path) -> float:
    """Seconds per trial calling train() in this process."""
    train(configs[0], tmp / "warm-up", report=lambda m, checkpoint_dir=None: None)
    t0 = time.perf_counter()
    for i, cfg in enumerate(configs):
        train(cfg, tmp / f"direct-{i}", report=lambda m, checkpoint_dir=None: None)
    return (time.perf_counter() - t0) / len(configs)


def through_tune(preset: str, trials: int, cache: str, tmp: Path, *extra: str) -> float:
    """Seconds for a sweep of `trials` seeds run one at a time (Ray already started)."""
    out = Path(tempfile.mkdtemp(dir=tmp))
    argv = ["--seeds", str(trials), "--max-concurrent", "1", "--cache-dir", cache,
            "--storage", str(out / "storage"), "--results", str(out / "results"), *extra]
    t0 = time.perf_counter()
    assert sweep("bench", [Block(preset, build(preset))], argv) == 0
    return time.perf_counter() - t0


def marginal(preset: str, trials: int, cache: str, tmp: Path, *extra: str
             ) -> tuple[float, float]:
    """(seconds per extra trial, fixed seconds per sweep) from a 2- and an N-trial sweep."""
    small, big = (through_tune(preset, n, cache, tmp, *extra) for n in (2, trials))
    per_trial = (big - small) / (trials - 2)
    return per_trial, small - 2 * per_trial


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="digits-smoke")
    p.add_argument("--trials", type=int, default=8, help="N (>= 3)")
    p.add_argument("--cache-dir", default=None, help="teacher cache (default: a temporary one)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cache = args.cache_dir or str(tmp / "cache")
        base = build(args.preset, cache_dir=cache, device="cpu", num_threads=1)
        prepare.prepare(base)
        configs = [dataclasses.replace(base, seed=s) for s in range(args.trials)]
        t_direct = direct(configs, tmp)
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
        t_init = time.perf_counter() - t0
        reuse = marginal(args.preset, args.trials, cache, tmp)
        fresh = marginal(args.preset, args.trials, cache, tmp, "--no-reuse-actors")
        ray.shutdown()
    print(f"\n{args.preset}, one trial at a time, 1 CPU thread each")
    print(f"  ray.init (once per sweep)            {t_init:6.2f} s")
    print(f"  direct train()                       {t_direct:6.2f} s per trial")
    for name, (t, fixed) in (("Tune, reused workers (default)", reuse),
                             ("Tune, fresh worker per trial", fresh)):
        print(f"  {name:<36} {t:6.2f} s per trial  (overhead {t - t_direct:+.2f} s, "
              f"{100 * (t - t_direct) / t_direct:+.0f}%), plus {fixed:.1f} s per sweep")


if __name__ == "__main__":
    main()
