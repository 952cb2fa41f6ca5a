"""Qimera / GDFQ data-free quantization in plain PyTorch (no Ray here; see `sweeps`)."""

from qimera_core.config import PRESETS, TrainConfig, build
from qimera_core.train import train

__all__ = ["PRESETS", "TrainConfig", "build", "train"]
