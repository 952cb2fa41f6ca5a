"""What a run's loop keeps between epochs, shared by the training loop (qimera_core.train) and the
post-training path (qimera_core.ptq): each member's progress, the learning-rate schedule, which
epochs are evaluated, the pack's report, and the check that a checkpoint is this run's."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from qimera_core.config import RUN_ONLY_FIELDS, TrainConfig


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                      # macOS, Windows
        return os.cpu_count() or 1


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """Multi-step schedule: gamma^(number of milestones <= epoch) (method doc §5.2)."""
    return cfg.lr_gamma ** sum(epoch >= m for m in cfg.lr_milestones)


@dataclass
class Progress:
    """Everything besides model/optimizer/RNG state that a resumed run must continue from."""

    epoch: int = 0                        # epochs completed
    teacher_top1: float = math.nan
    start_top1: float = math.nan
    best_top1: float = math.nan
    best_epoch: int = 0
    wall_time_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    diverged: bool = False                # a loss became NaN/inf; history[-1] says when


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def is_evaluated(cfg: TrainConfig, epoch: int) -> bool:
    done = epoch + 1
    return (done == cfg.warmup_epochs or done == cfg.epochs
            or (epoch >= cfg.eval_start_epoch and done % cfg.eval_every == 0))


def check_saved(saved: Mapping[str, Any], cfgs: Sequence[TrainConfig]) -> list[Progress]:
    """The members' progress from a checkpoint, after checking it was written by `cfgs`."""
    run_only = {k: getattr(cfgs[0], k) for k in RUN_ONLY_FIELDS}
    was = [TrainConfig.from_dict({**d, **run_only}) for d in saved["configs"]]
    if was != list(cfgs):
        diff = [{k: (v, getattr(now, k)) for k, v in old.to_dict().items() if v != getattr(now, k)}
                for old, now in zip(was, cfgs, strict=False)]
        raise ValueError(f"checkpoint was written by different configs (saved, now): {diff}, "
                         f"{len(was)} saved vs {len(cfgs)} now; resume with the same settings "
                         "or start a new out_dir")
    return [Progress(**p) for p in saved["progress"]]


def pack_metrics(progs: Sequence[Progress], epoch: int) -> dict[str, Any]:
    """The pack's report: a summary over the members evaluated this epoch, and each member."""
    members = [dict(p.history[-1]) if p.history else {} for p in progs]
    top1 = [m["top1"] for m in members
            if m.get("epoch") == epoch and not m.get("diverged") and not math.isnan(m["top1"])]
    return {"epoch": epoch, "top1": sum(top1) / len(top1) if top1 else math.nan,
            "top1_min": min(top1, default=math.nan), "top1_max": max(top1, default=math.nan),
            "live": sum(not p.diverged for p in progs), "members": members}
