"""What the two fidelity benches (generator_fidelity.py, ptq_fidelity.py) share: the akamaster
CIFAR-10 ResNet-20 and the first 1000 CIFAR-10 test images in ../shared/data, one seed pack per
setting, a progress line per epoch on stderr, and the JSON they write. Not a script."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qimera_core import config
from qimera_core.config import TrainConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CHECKPOINT = "resnet20_cifar10_akamaster.th"
IMAGES = "cifar10-test-first1000.npz"


def missing(shared: Path) -> str | None:
    """The one-line error when `shared` lacks the checkpoint or the images, else None."""
    if (shared / CHECKPOINT).is_file() and (shared / IMAGES).is_file():
        return None
    return f"{shared} lacks {CHECKPOINT} or {IMAGES}; pass --shared DIR (see ../shared/data)"


def configs(shared: Path, method: str, seeds: int, **overrides: Any) -> list[TrainConfig]:
    """One config per seed 0..seeds-1 of `method` on the akamaster teacher, 4w4a unless
    `overrides` say otherwise, on the CPU. Looks `build` up at each call, so a test's patch of
    qimera_core.config.build applies."""
    data = dict(teacher="resnet20_cifar10_a", teacher_weights=str(shared / CHECKPOINT),
                eval_data=f"npz:{shared / IMAGES}", device="cpu")
    return [config.build("cifar10-resnet20-4w4a", method=method, seed=s, **data, **overrides)
            for s in range(seeds)]


def progress(label: str, epochs: int) -> Callable[..., None]:
    """A reporter printing, each epoch, every seed's top-1 and the time since it started, on
    stderr (the benches' tables stay alone on stdout)."""
    t0 = time.perf_counter()

    def shown(v: Any) -> str:            # an epoch without evaluation has no top-1
        return f"{v:.2f}" if isinstance(v, int | float) else "-"

    def report(metrics: dict, checkpoint_dir: Path | None = None) -> None:
        top1 = ", ".join(shown(m.get("top1")) for m in metrics.get("members", []))
        print(f"  {label}: epoch {metrics.get('epoch')}/{epochs}  top-1 per seed {top1}  "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return report


def mean(xs: list[float]) -> float:
    return statistics.mean(xs) if xs else float("nan")


def std(xs: list[float]) -> float:
    """The sample standard deviation over seeds (NaN for fewer than two)."""
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


def write_json(path: Path | None, rows: list[dict]) -> None:
    if path is not None:
        path.write_text(json.dumps(rows, indent=2) + "\n")
