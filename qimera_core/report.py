"""The reporter seam: `train()` hands its metrics to one callable and never knows who listens."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def __call__(self, metrics: Mapping[str, Any], checkpoint_dir: Path | None = None) -> None: ...


def format_metrics(metrics: Mapping[str, Any]) -> str:
    parts = []
    for k, v in metrics.items():
        if isinstance(v, float):
            parts.append(f"{k}={'nan' if math.isnan(v) else f'{v:.4g}'}")
        else:
            parts.append(f"{k}={v}")
    return "  ".join(parts)


def log_reporter(metrics: Mapping[str, Any], checkpoint_dir: Path | None = None) -> None:
    """Default reporter: one INFO line per epoch."""
    log.info(format_metrics(metrics))
