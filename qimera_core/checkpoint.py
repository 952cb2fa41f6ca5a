"""A trial's checkpoint (the latest and the one before, each written atomically; a pack's holds
all its members), and loading a trained run back."""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qimera_core.builders import build_models, build_networks
from qimera_core.config import TrainConfig
from qimera_core.taps import Tapped, stage_names

log = logging.getLogger(__name__)

FILENAME = "state.pt"
PREVIOUS = "state.prev.pt"  # the checkpoint before: load() falls back to it if the latest is bad
FORMAT = 2      # 2: per-member configs and progress, a pack's tensors stacked


def save(ckpt_dir: Path, state: dict[str, Any]) -> Path:
    """Write `state` to `ckpt_dir/state.pt` via a temporary file and an atomic rename, keeping
    the previous one as state.prev.pt: a trial killed mid-write, or a latest file damaged in a
    copy, still leaves a checkpoint to resume from."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / f".{FILENAME}.{os.getpid()}.tmp"
    torch.save({"format": FORMAT, **state}, tmp)
    if (ckpt_dir / FILENAME).is_file():
        os.replace(ckpt_dir / FILENAME, ckpt_dir / PREVIOUS)
    os.replace(tmp, ckpt_dir / FILENAME)
    return ckpt_dir


def exists(ckpt_dir: Path) -> bool:
    return any((Path(ckpt_dir) / name).is_file() for name in (FILENAME, PREVIOUS))


def load(ckpt_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The latest checkpoint in `ckpt_dir`; the previous one, with a warning, if the latest is
    missing or unreadable (truncated, empty, not a checkpoint)."""
    path, previous = Path(ckpt_dir) / FILENAME, Path(ckpt_dir) / PREVIOUS
    if not path.is_file() and not previous.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass the directory that holds "
                                f"{FILENAME} (a trial's out_dir/checkpoint)")
    try:
        state = _read(path, map_location)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        if not previous.is_file():
            raise ValueError(f"checkpoint {path} is unreadable ({e}) and there is no "
                             f"{PREVIOUS} to fall back to; start the run again in a new "
                             "out_dir") from None
        log.warning("checkpoint %s is unreadable (%s); falling back to %s, one epoch earlier",
                    path, str(e).splitlines()[0] if str(e) else type(e).__name__, previous)
        state = _read(previous, map_location)
    if state.get("format") != FORMAT:
        raise ValueError(f"{path} has checkpoint format {state.get('format')!r}; this version "
                         f"reads format {FORMAT}")
    return state


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise RuntimeError(f"holds a {type(state).__name__}, not a checkpoint dict")
    return state


@dataclass
class Trained:
    """A trial's models rebuilt from its checkpoint (for analysis and figures)."""

    cfg: TrainConfig
    teacher: nn.Module
    student: nn.Module
    generator: nn.Module | None     # None for a post-training run (zeroq, dsg)
    epoch: int


def load_trained(ckpt_dir: Path, device: str | torch.device = "cpu", member: int = 0) -> Trained:
    """Rebuild teacher (FP, eval), quantized student and generator of one run from its
    checkpoint; `member` picks a run of a pack (its index in the pack's configs)."""
    state = load(ckpt_dir)
    configs = state["configs"]
    if not 0 <= member < len(configs):
        raise ValueError(f"member {member} is not in this checkpoint's pack of {len(configs)}")
    progress = state["progress"]
    live = [i for i, p in enumerate(progress) if not p["diverged"]]
    if member not in live:
        epoch = progress[member]["history"][-1]["epoch"]
        raise ValueError(f"member {member} diverged at epoch {epoch}; "
                         "the checkpoint keeps no state for it")
    cfg = TrainConfig.from_dict({**configs[member], "device": str(device)})
    row = live.index(member)
    if "stage" in state:                                   # a post-training run: no generator
        if state["stage"] != "tune":
            raise ValueError(f"{ckpt_dir} holds a run still synthesising its images; resume it "
                             "first, its student is not calibrated yet")
        teacher, student = build_networks(cfg, torch.device(device))
        sd = state["student"]
        student.load_state_dict({k: v[row] for k, v in sd.items()} if state["stacked"] else sd)
        return Trained(cfg, teacher, student, None, int(state["epoch"]))
    teacher, student, generator = build_models(cfg, torch.device(device))
    # a ZAQ trial trains its student wrapped with stage taps (its keys start with "model.")
    holder = Tapped(student, stage_names(teacher)) if cfg.method == "zaq" else student
    for module, key in ((holder, "student"), (generator, "generator")):
        sd = state[key]
        module.load_state_dict({k: v[row] for k, v in sd.items()} if state["stacked"] else sd)
    return Trained(cfg, teacher, student, generator, int(state["epoch"]))
