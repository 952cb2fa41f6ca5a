"""One checkpoint file per trial, written atomically, and loading a trained trial back."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qimera_core.config import TrainConfig

FILENAME = "state.pt"
FORMAT = 1


def save(ckpt_dir: Path, state: dict[str, Any]) -> Path:
    """Write `state` to `ckpt_dir/state.pt` via a temporary file and an atomic rename, so a
    trial killed mid-write leaves the previous checkpoint intact."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / f".{FILENAME}.{os.getpid()}.tmp"
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, ckpt_dir / FILENAME)
    return ckpt_dir


def exists(ckpt_dir: Path) -> bool:
    return (Path(ckpt_dir) / FILENAME).is_file()


def load(ckpt_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(ckpt_dir) / FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass the directory that holds "
                                f"{FILENAME} (a trial's out_dir/checkpoint)")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if state.get("format") != FORMAT:
        raise ValueError(f"{path} has checkpoint format {state.get('format')!r}; this version "
                         f"reads format {FORMAT}")
    return state


@dataclass
class Trained:
    """A trial's models rebuilt from its checkpoint (for analysis and figures)."""

    cfg: TrainConfig
    teacher: nn.Module
    student: nn.Module
    generator: nn.Module
    epoch: int


def load_trained(ckpt_dir: Path, device: str | torch.device = "cpu") -> Trained:
    """Rebuild teacher (FP, eval), quantized student and generator from a trial checkpoint."""
    from qimera_core.train import build_models   # train imports this module

    state = load(ckpt_dir)
    cfg = TrainConfig.from_dict({**state["config"], "device": str(device)})
    teacher, student, generator = build_models(cfg, torch.device(device))
    student.load_state_dict(state["student"])
    generator.load_state_dict(state["generator"])
    return Trained(cfg, teacher, student, generator, int(state["epoch"]))
