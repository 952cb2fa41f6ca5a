"""Qimera / GDFQ data-free quantization in plain PyTorch (no Ray here; see `sweeps`)."""

from qimera_core.config import PRESETS, TrainConfig, build

__all__ = ["PRESETS", "TrainConfig", "build", "train"]


def __getattr__(name: str):
    # Lazy, so `python -m qimera_core.train` does not import the module twice.
    if name == "train":
        from qimera_core.train import train
        return train
    raise AttributeError(f"module 'qimera_core' has no attribute {name!r}")
