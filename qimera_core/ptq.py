"""The post-training path (method="zeroq" or "dsg"; docs/baselines.md): synthesise a fixed set
of images (qimera_core.synth), calibrate the student's activation ranges on it, freeze them,
evaluate; then, when `epochs` > 0, fine-tune the quantized student on that same set by KD from
the teacher (how IntraQ, HAST and SynQ use synthetic data), evaluating as a training run does.

It reports through the same Reporter as train_pack(), to the same Parquet schema: epoch 0 is the
calibrated model (`start_top1`), the last epoch is `top1`. Checkpoints after every synthesised
batch, after calibration and after every fine-tuning epoch; a run killed at any point resumes
from the last one (a batch cut short is synthesised again from its own seeded stream) and ends
with the same result. A pack (seeds of one setting) optimises its members' batches together.

Metrics: loss_bns and loss_g = the final synthesis loss (mean over the batches), loss_s and
loss_kd = the fine-tuning KD loss (kd_alpha * KD; there are no labels, so no CE term).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from qimera_core import checkpoint, data, models, pack, prepare, quant
from qimera_core.builders import build_networks, resolve_device
from qimera_core.config import TrainConfig
from qimera_core.losses import kd_loss
from qimera_core.report import Reporter, log_reporter
from qimera_core.runstate import (
    Progress,
    check_saved,
    is_evaluated,
    lr_factor,
    pack_metrics,
    set_lr,
    usable_cpus,
)
from qimera_core.synth import Synthesizer, check_memory

log = logging.getLogger(__name__)


def run_pack(cfgs: Sequence[TrainConfig], out_dir: Path, report: Reporter = log_reporter,
             resume_from: Path | None = None) -> list[dict[str, Any]]:
    """One PTQ run, or a pack of them (seeds of one setting), writing only inside `out_dir`.
    Returns each member's last metrics plus `status`."""
    cfgs = list(cfgs)
    pack.check_packable(cfgs)
    cfg, n = cfgs[0], len(cfgs)
    ckpt_dir = Path(out_dir) / "checkpoint"
    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.num_threads or usable_cpus())
    prepare.ensure_ready(cfg)
    shape = models.spec(cfg.teacher).input_shape
    teacher, student = build_networks(cfg, device)
    check_memory(cfgs, teacher, shape, device)        # before any synthesis
    saved = checkpoint.load(resume_from) if resume_from is not None else None
    progs = check_saved(saved, cfgs) if saved else [Progress() for _ in cfgs]
    stacked = n > 1
    s = pack.Stack([student] * n) if stacked else pack.One(student)
    opt = _sgd(cfg, s)
    evalset = data.load_eval(cfg)
    if saved is None:
        teacher_top1 = data.evaluate(teacher, evalset, device)["top1"]
        for p in progs:
            p.teacher_top1 = teacher_top1
        images, losses, stage = None, [], "synth"
    else:
        log.info("resumed from %s (%s)", resume_from, saved["stage"])
        images, losses, stage = saved["images"].to(device), list(saved["synth_loss"]), \
            saved["stage"]
        if stage == "tune":
            s.load_state_dict(saved["student"])
            opt.load_state_dict(saved["opt_s"])

    def save(stage: str, epoch: int) -> None:
        checkpoint.save(ckpt_dir, {"stage": stage, "epoch": epoch, "stacked": stacked,
                                   "images": images.cpu(), "synth_loss": losses,
                                   "student": s.state_dict(), "opt_s": opt.state_dict(),
                                   "configs": [c.to_dict() for c in cfgs],
                                   "progress": [dict(vars(p)) for p in progs]})

    if stage == "synth":
        t0 = time.perf_counter()
        done = 0 if images is None else images.shape[1]
        synth = Synthesizer(cfgs, teacher, shape, device)
        try:
            for k in range(done, cfg.synth_batches):
                batch, last = synth.batch(k)                      # (N, B, C, H, W)
                images = batch[:, None] if images is None else \
                    torch.cat([images, batch[:, None]], 1)
                losses.append(last)
                for p in progs:                 # a pack's time is each member's, as in training
                    p.wall_time_s += time.perf_counter() - t0
                t0 = time.perf_counter()
                save("synth", 0)
                log.info("synthesised batch %d of %d (loss %s)", k + 1, cfg.synth_batches,
                         ", ".join(f"{v:.4g}" for v in last))
        finally:
            synth.close()
        _calibrate(s, images)
        _record(progs, 0, _evaluate(s, n, evalset, device), losses, math.nan, 0.0, t0, cfg)
        save("tune", 0)
        report(pack_metrics(progs, 0), checkpoint_dir=ckpt_dir)
        start = 0
    else:
        quant.set_calibration(s.template, False)
        start = int(saved["epoch"])
    teacher_logits = _teacher_logits(teacher, images, cfg)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        set_lr(opt, cfg.lr_student * lr_factor(cfg, epoch))
        total = torch.zeros(n, device=device)
        for i in range(cfg.steps_per_epoch):
            k = i % images.shape[1]
            kd = kd_loss(s(images[:, k]), teacher_logits[:, k], cfg.kd_temperature,
                         cfg.kd_reduction)
            loss = cfg.kd_alpha * kd
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            total += loss.detach()
        step_s = (time.perf_counter() - t0) / cfg.steps_per_epoch
        accs = _evaluate(s, n, evalset, device) if is_evaluated(cfg, epoch) else None
        _record(progs, epoch + 1, accs, losses, total / cfg.steps_per_epoch, step_s, t0, cfg)
        save("tune", epoch + 1)
        report(pack_metrics(progs, epoch + 1), checkpoint_dir=ckpt_dir)
    return [{**(p.history[-1] if p.history else {}), "status": "diverged" if p.diverged else "ok"}
            for p in progs]


def _sgd(cfg: TrainConfig, s: pack.One | pack.Stack) -> torch.optim.Optimizer:
    return torch.optim.SGD(s.parameters(), lr=cfg.lr_student, momentum=cfg.momentum,
                           nesterov=cfg.student_nesterov, weight_decay=cfg.weight_decay)


@torch.no_grad()
def _calibrate(s: pack.One | pack.Stack, images: torch.Tensor) -> None:
    """Every synthesised batch through the student once with ranges tracking (each member its
    own batches and ranges), then the ranges freeze."""
    quant.set_calibration(s.template, True)
    for k in range(images.shape[1]):
        s(images[:, k])
    quant.set_calibration(s.template, False)


def _evaluate(s: pack.One | pack.Stack, n: int, evalset: data.EvalSet,
              device: torch.device) -> list[dict[str, float]]:
    return data.evaluate_many(s.shared, n, evalset, device)


@torch.no_grad()
def _teacher_logits(teacher: torch.nn.Module, images: torch.Tensor,
                    cfg: TrainConfig) -> torch.Tensor:
    """The teacher's logits on every synthesised image, (N, K, B, classes): computed once, as the
    images never change."""
    if cfg.epochs == 0:
        return images.new_zeros(0)
    flat = images.flatten(0, 2)
    out = torch.cat([teacher(flat[i:i + cfg.batch_size])
                     for i in range(0, flat.shape[0], cfg.batch_size)])
    return out.view(*images.shape[:3], -1)


def _record(progs: list[Progress], epoch: int, accs: list[dict[str, float]] | None,
            synth_losses: list[list[float]], kd: Any, step_s: float, t0: float,
            cfg: TrainConfig) -> None:
    """Append each member's metrics for `epoch` (0 = the calibrated model)."""
    wall = time.perf_counter() - t0
    kd_values = kd.tolist() if torch.is_tensor(kd) else [kd] * len(progs)
    for j, p in enumerate(progs):
        acc = accs[j] if accs else {"top1": math.nan, "top5": math.nan}
        synth = sum(b[j] for b in synth_losses) / len(synth_losses)
        if not math.isfinite(synth) or (epoch > 0 and not math.isfinite(kd_values[j])):
            p.diverged = True
        if epoch == 0:
            p.start_top1 = acc["top1"]
        if accs and not acc["top1"] < p.best_top1:
            p.best_top1, p.best_epoch = acc["top1"], epoch
        p.wall_time_s += wall
        p.epoch = epoch
        p.history.append({"epoch": epoch, **acc, "best_top1": p.best_top1,
                          "best_epoch": p.best_epoch, "teacher_top1": p.teacher_top1,
                          "start_top1": p.start_top1, "wall_time_s": p.wall_time_s,
                          "step_time_s": step_s, "loss_g": synth, "loss_g_ce": math.nan,
                          "loss_bns": synth, "loss_s": kd_values[j], "loss_kd": kd_values[j],
                          "loss_s_ce": math.nan, "diverged": int(p.diverged)})

