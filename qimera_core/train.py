"""train(): Qimera/GDFQ data-free quantization of a teacher, one trial (or a pack of trials),
resumable: the epoch loop around `qimera_core.step.Trial` (learning-rate schedule, calibration
and warm-up epochs, divergence checks, evaluation, checkpoints, one report per epoch).

`main` is the command line, `python -m qimera_core.train --preset digits-2w2a --out runs/digits`
(see `qimera_core.cli`).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qimera_core import checkpoint, cli, data, pack, prepare, ptq
from qimera_core.builders import resolve_device
from qimera_core.config import PTQ_METHODS, TrainConfig
from qimera_core.report import Reporter, log_reporter
from qimera_core.runstate import (
    Progress,
    check_saved,
    is_evaluated,
    lr_factor,  # noqa: F401  (part of this module's interface: tests, benchmarks)
    pack_metrics,
    set_lr,
    usable_cpus,
)
from qimera_core.step import Trial

log = logging.getLogger(__name__)
_CHECK_EVERY = 10      # steps between finiteness checks of the losses (each check syncs a GPU)
_G_LOSSES = ("loss_g", "loss_g_ce", "loss_bns")
_LOSSES = (*_G_LOSSES, "loss_s", "loss_kd", "loss_s_ce")


def train(cfg: TrainConfig, out_dir: Path, report: Reporter = log_reporter,
          resume_from: Path | None = None) -> dict[str, Any]:
    """Run one trial, writing only inside `out_dir`; report metrics once per epoch.

    Returns the last epoch's metrics plus `status` ("ok", or "diverged" when a loss became
    NaN/inf; the run stops there and keeps its last good checkpoint).
    """
    def one(metrics: Mapping[str, Any], checkpoint_dir: Path | None = None) -> None:
        report(metrics["members"][0], checkpoint_dir=checkpoint_dir)

    return train_pack([cfg], out_dir, report=one, resume_from=resume_from)[0]


def train_pack(cfgs: Sequence[TrainConfig], out_dir: Path, report: Reporter = log_reporter,
               resume_from: Path | None = None) -> list[dict[str, Any]]:
    """Train a pack (configs that build the same shapes, see `qimera_core.pack`) in this process,
    writing only inside `out_dir`. A pack of one is a plain run (no vmap). Post-training methods
    (zeroq, dsg) run qimera_core.ptq's path instead, with the same reports and results.

    Each epoch `report` gets the pack's summary (`epoch`, `top1` = mean over the members
    evaluated, `top1_min`, `top1_max`, `live`) and `members`: every member's latest metrics, in
    the order of `cfgs` (a diverged member's stay at its last report, `diverged` = 1). A member
    whose loss becomes NaN/inf is dropped from the pack; the others go on. Returns each
    member's last metrics plus `status` ("ok" or "diverged").
    """
    cfgs = list(cfgs)
    pack.check_packable(cfgs)
    cfg = cfgs[0]
    if cfg.method in PTQ_METHODS:                  # zeroq, dsg: no generator, no student loop
        return ptq.run_pack(cfgs, out_dir, report=report, resume_from=resume_from)
    ckpt_dir = Path(out_dir) / "checkpoint"
    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.num_threads or usable_cpus())
    prepare.ensure_ready(cfg)                       # fail before any expensive work
    saved = checkpoint.load(resume_from) if resume_from is not None else None
    progs = check_saved(saved, cfgs) if saved else [Progress() for _ in cfgs]
    live = [i for i, p in enumerate(progs) if not p.diverged]
    trial = Trial([cfgs[i] for i in live], device,
                  stacked=saved["stacked"] if saved else None) if live else None
    evalset = data.load_eval(cfg)
    if saved is not None:
        if trial is not None:
            trial.restore(saved)
        log.info("resumed from %s at epoch %d", resume_from, saved["epoch"])
    else:
        teacher_top1 = data.evaluate(trial.teacher, evalset, device)["top1"]
        for p in progs:
            p.teacher_top1 = teacher_top1
    start = saved["epoch"] if saved else 0
    for epoch in range(start, cfg.epochs):
        if trial is None:
            break
        t0 = time.perf_counter()
        for opt, base in ((trial.opt_s, cfg.lr_student), (trial.opt_g, cfg.lr_generator)):
            set_lr(opt, base * lr_factor(cfg, epoch))
        calibrate = epoch < cfg.act_range_epochs
        train_student = epoch >= cfg.warmup_epochs
        trial.set_calibration(calibrate)
        sums = {k: torch.zeros(trial.size, device=device) for k in _LOSSES}
        steps = 0
        for i in range(cfg.steps_per_epoch):
            for k, v in trial.step(train_student, calibrate).items():
                sums[k] += v
            steps += 1
            if (i + 1) % _CHECK_EVERY == 0 or i + 1 == cfg.steps_per_epoch:
                finite = torch.isfinite(torch.stack(list(sums.values()))).all(0).tolist()
                if not all(finite):                                  # one sync per check
                    step_s = (time.perf_counter() - t0) / steps
                    for j in (j for j, ok in enumerate(finite) if not ok):
                        losses = {k: float(v[j]) / steps if train_student or k in _G_LOSSES
                                  else math.nan for k, v in sums.items()}
                        _diverge(progs[live[j]], epoch, losses, step_s * steps, step_s, ckpt_dir)
                    rows = [j for j, ok in enumerate(finite) if ok]
                    live = [live[j] for j in rows]
                    if not live:
                        trial.teacher_bn.close()
                        trial = None
                        break
                    trial.keep(rows)
                    sums = {k: v[rows] for k, v in sums.items()}
        if trial is not None:
            _finish_epoch(trial, [progs[i] for i in live], epoch, sums, steps, evalset, t0,
                          train_student)
            checkpoint.save(ckpt_dir, {"epoch": epoch + 1, **trial.state(),
                                       "configs": [c.to_dict() for c in cfgs],
                                       "progress": [dict(vars(p)) for p in progs]})
        report(pack_metrics(progs, epoch + 1),
               checkpoint_dir=ckpt_dir if checkpoint.exists(ckpt_dir) else None)
    if trial is not None:
        trial.teacher_bn.close()
    return [{**(p.history[-1] if p.history else {}), "status": "diverged" if p.diverged else "ok"}
            for p in progs]


def _finish_epoch(trial: Trial, progs: list[Progress], epoch: int, sums: dict[str, Tensor],
                  steps: int, evalset: data.EvalSet, t0: float, train_student: bool) -> None:
    """Evaluate the live members (when scheduled) and append each one's epoch metrics."""
    cfg = trial.cfg
    trial.set_calibration(False)
    if trial.device.type == "cuda":
        torch.cuda.synchronize(trial.device)
    train_s = time.perf_counter() - t0
    evaluated = is_evaluated(cfg, epoch)
    accs = trial.evaluate(evalset) if evaluated else [None] * len(progs)
    eval_s = time.perf_counter() - t0 - train_s
    means = {k: (v / steps).tolist() for k, v in sums.items()}
    for j, (prog, acc) in enumerate(zip(progs, accs, strict=True)):
        losses = {k: means[k][j] if train_student or k in _G_LOSSES else math.nan
                  for k in _LOSSES}
        acc = acc or {"top1": math.nan, "top5": math.nan}
        if evaluated:
            if epoch + 1 == cfg.warmup_epochs:
                prog.start_top1 = acc["top1"]   # before any student update
            if not acc["top1"] < prog.best_top1:  # ties move to the later epoch; NaN start
                prog.best_top1, prog.best_epoch = acc["top1"], epoch + 1
        prog.wall_time_s += train_s + eval_s
        prog.epoch = epoch + 1
        prog.history.append({"epoch": epoch + 1, **acc, "best_top1": prog.best_top1,
                             "best_epoch": prog.best_epoch, "teacher_top1": prog.teacher_top1,
                             "start_top1": prog.start_top1, "wall_time_s": prog.wall_time_s,
                             "step_time_s": train_s / steps, **losses, "diverged": 0})


def _diverge(prog: Progress, epoch: int, losses: dict[str, float], train_s: float,
             step_s: float, ckpt_dir: Path) -> None:
    prog.diverged = True
    prog.wall_time_s += train_s
    prog.history.append({"epoch": epoch + 1, "top1": math.nan, "top5": math.nan,
                         "best_top1": prog.best_top1, "best_epoch": prog.best_epoch,
                         "teacher_top1": prog.teacher_top1, "start_top1": prog.start_top1,
                         "wall_time_s": prog.wall_time_s, "step_time_s": step_s, **losses,
                         "diverged": 1})
    log.error("epoch %d: a loss became NaN/inf (%s); this run stops, its last good checkpoint "
              "stays in %s", epoch + 1, _fmt(losses), ckpt_dir)


def _fmt(d: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in d.items())


def main(argv: list[str] | None = None) -> int:
    """The command line (`python -m qimera_core.train`, `qimera-train`): `qimera_core.cli`
    parses, checks and writes the results; this module's train() runs the trial."""
    return cli.main(argv, train)


if __name__ == "__main__":
    sys.exit(main())
