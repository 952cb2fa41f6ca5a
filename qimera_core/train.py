"""train(): Qimera/GDFQ data-free quantization of a teacher, one trial, resumable. Also the CLI.

    python -m qimera_core.train --preset digits-2w2a --out runs/digits

Per step (method doc §5.1): sample latents (superposed with probability p), generate a batch,
teacher forward with BN statistics, generator step on soft CE + bns_weight * BNS, then the
quantized student distils from the teacher on the detached batch (after the warm-up).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qimera_core import checkpoint, data, models, prepare, quant, results
from qimera_core.config import (PRESETS, RUN_ONLY_FIELDS, TrainConfig, add_config_flags, build,
                                overrides_from_args)
from qimera_core.generator import Generator, sample_latents
from qimera_core.losses import TeacherWithBNStats, kd_loss, soft_cross_entropy
from qimera_core.report import Reporter, log_reporter

log = logging.getLogger(__name__)
_CHECK_EVERY = 10      # steps between finiteness checks of the losses (each check syncs a GPU)
_LOSSES = ("loss_g", "loss_g_ce", "loss_bns", "loss_s", "loss_kd", "loss_s_ce")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device='cpu' "
                         "or 'auto'")
    return torch.device(name)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                      # macOS, Windows
        return os.cpu_count() or 1


def build_models(cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, nn.Module, Generator]:
    """Teacher (FP, eval, frozen), its quantized copy (eval mode throughout, §2.4), generator."""
    spec = models.spec(cfg.teacher)
    teacher = models.load_teacher(cfg).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = quant.quantize(copy.deepcopy(teacher), w_bits=cfg.w_bits, a_bits=cfg.a_bits,
                             act_mode=cfg.act_range_mode, act_beta=cfg.act_ema_beta,
                             sites=cfg.act_quant_sites)
    quant.audit_activations(student, torch.zeros(2, *spec.input_shape, device=device),
                            sites=cfg.act_quant_sites)
    for p in student.parameters():
        p.requires_grad_(True)
    student.eval()
    generator = build_generator(cfg, spec, teacher).to(device).train()
    if cfg.channels_last:
        for m in (teacher, student, generator):
            m.to(memory_format=torch.channels_last)
    return teacher, student, generator


def build_generator(cfg: TrainConfig, spec: models.TeacherSpec, teacher: nn.Module) -> Generator:
    weight = models.classifier_weight(teacher)                  # (C, D)
    multiplicative = cfg.latent_input == "multiplicative"
    channels, height, _ = spec.input_shape
    return Generator(
        num_classes=spec.num_classes, latent_dim=100 if multiplicative else weight.shape[1],
        img_size=height, channels=channels, noise_sigma=cfg.noise_sigma,
        dm_layers=cfg.dm_layers, dm_width=cfg.dm_width, dm_activation=cfg.dm_activation,
        embeddings=weight if cfg.emb_init == "extracted" else None,
        freeze_embeddings=cfg.freeze_embeddings, conditional_bn=height >= 64,
        latent_input=cfg.latent_input, cbn_mix=cfg.cbn_mix)


def _no_mark(_phase: str) -> None:
    pass


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


class Trial:
    """The objects of one run, built once; `step()` is the hot path."""

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        torch.manual_seed(cfg.seed)
        self.teacher, self.student, self.generator = build_models(cfg, device)
        self.num_classes = models.spec(cfg.teacher).num_classes
        self.teacher_bn = TeacherWithBNStats(self.teacher)
        self.opt_g = torch.optim.Adam([p for p in self.generator.parameters() if p.requires_grad],
                                      lr=cfg.lr_generator, betas=(cfg.adam_beta1, cfg.adam_beta2))
        self.opt_s = torch.optim.SGD(self.student.parameters(), lr=cfg.lr_student,
                                     momentum=cfg.momentum, nesterov=True,
                                     weight_decay=cfg.weight_decay)
        self.rng = torch.Generator(device=device).manual_seed(cfg.seed)
        self.coin = torch.Generator().manual_seed(cfg.seed + 1)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                                       enabled=cfg.amp_bf16 and device.type == "cuda")

    def step(self, train_student: bool, calibrate: bool,
             mark: Callable[[str], None] | None = None) -> dict[str, Tensor]:
        """One iteration; `mark(phase)` (benchmarks only) is called as each phase ends."""
        cfg, g = self.cfg, self.generator
        mark = mark or _no_mark
        lat = sample_latents(cfg.batch_size, self.num_classes, g.latent_dim,
                             mix_prob=cfg.mix_prob, mix_classes=cfg.mix_classes,
                             mix_mode=cfg.mix_mode, rng=self.rng, coin=self.coin,
                             device=self.device)
        with self.autocast:
            images = g.generate(lat)
            mark("generator_fwd")
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            t_logits, bns = self.teacher_bn(images)
        mark("teacher_fwd")
        g_ce = soft_cross_entropy(t_logits, lat.targets)
        loss_g = g_ce + cfg.bns_weight * bns
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        mark("generator_bwd_step")
        out = {"loss_g": loss_g.detach(), "loss_g_ce": g_ce.detach(), "loss_bns": bns.detach()}
        x = images.detach().float()       # the student must not push gradients into G
        if train_student:
            s_logits = self.student(x)
            kd = kd_loss(s_logits, t_logits.detach(), cfg.kd_temperature, cfg.kd_reduction)
            s_ce = soft_cross_entropy(s_logits, lat.targets)
            loss_s = cfg.kd_alpha * kd + s_ce
            self.opt_s.zero_grad(set_to_none=True)
            loss_s.backward()
            self.opt_s.step()
            out.update(loss_s=loss_s.detach(), loss_kd=kd.detach(), loss_s_ce=s_ce.detach())
        elif calibrate:                    # warm-up: the forward only moves activation ranges
            with torch.no_grad():
                self.student(x)
        mark("student")
        return out

    def state(self, progress: Progress) -> dict[str, Any]:
        return {"config": self.cfg.to_dict(), "epoch": progress.epoch,
                "student": self.student.state_dict(), "generator": self.generator.state_dict(),
                "opt_s": self.opt_s.state_dict(), "opt_g": self.opt_g.state_dict(),
                "rng": self.rng.get_state(), "coin": self.coin.get_state(),
                "progress": dict(vars(progress))}

    def restore(self, state: Mapping[str, Any]) -> Progress:
        saved = TrainConfig.from_dict({**state["config"],
                                       **{k: getattr(self.cfg, k) for k in RUN_ONLY_FIELDS}})
        if saved != self.cfg:
            diff = {k: (v, getattr(self.cfg, k)) for k, v in saved.to_dict().items()
                    if v != getattr(self.cfg, k)}
            raise ValueError(f"checkpoint was written by a different config (saved, now): {diff}; "
                             "resume with the same settings or start a new out_dir")
        self.student.load_state_dict(state["student"])
        self.generator.load_state_dict(state["generator"])
        self.opt_s.load_state_dict(state["opt_s"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.rng.set_state(state["rng"])
        self.coin.set_state(state["coin"])
        return Progress(**state["progress"])


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _evaluated(cfg: TrainConfig, epoch: int) -> bool:
    done = epoch + 1
    return (done == cfg.warmup_epochs or done == cfg.epochs
            or (epoch >= cfg.eval_start_epoch and done % cfg.eval_every == 0))


def train(cfg: TrainConfig, out_dir: Path, report: Reporter = log_reporter,
          resume_from: Path | None = None) -> dict[str, Any]:
    """Run one trial, writing only inside `out_dir`; report metrics once per epoch.

    Returns the last epoch's metrics plus `status` ("ok", or "diverged" when a loss became
    NaN/inf; the run stops there and keeps its last good checkpoint).
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoint"
    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.num_threads or _usable_cpus())
    prepare.ensure_ready(cfg)                       # fail before any expensive work
    trial = Trial(cfg, device)
    evalset = data.load_eval(cfg)
    if resume_from is not None:
        prog = trial.restore(checkpoint.load(resume_from))   # CPU: RNG states stay CPU tensors
        log.info("resumed from %s at epoch %d", resume_from, prog.epoch)
    else:
        prog = Progress(teacher_top1=data.evaluate(trial.teacher, evalset, device)["top1"])
    if prog.epoch >= cfg.epochs and prog.history:
        return {**prog.history[-1], "status": "ok"}
    metrics: dict[str, Any] = {}
    for epoch in range(prog.epoch, cfg.epochs):
        t0 = time.perf_counter()
        for opt, base in ((trial.opt_s, cfg.lr_student), (trial.opt_g, cfg.lr_generator)):
            _set_lr(opt, base * lr_factor(cfg, epoch))
        calibrate = epoch < cfg.act_range_epochs
        train_student = epoch >= cfg.warmup_epochs
        quant.set_calibration(trial.student, calibrate)
        sums = {k: torch.zeros((), device=device) for k in _LOSSES}
        diverged = False
        for i in range(cfg.steps_per_epoch):
            for k, v in trial.step(train_student, calibrate).items():
                sums[k] += v
            if (i + 1) % _CHECK_EVERY == 0 or i + 1 == cfg.steps_per_epoch:
                if not bool(torch.isfinite(sum(sums.values()))):
                    diverged = True
                    break
        quant.set_calibration(trial.student, False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_s = time.perf_counter() - t0
        steps = i + 1
        losses = {k: float(v) / steps for k, v in sums.items()}
        if not train_student:
            losses.update(loss_s=math.nan, loss_kd=math.nan, loss_s_ce=math.nan)
        prog.wall_time_s += train_s
        if diverged:
            metrics = _diverged(prog, epoch, losses, train_s / steps)
            log.error("epoch %d: a loss became NaN/inf (%s); stopping, the last good checkpoint "
                      "stays in %s", epoch + 1, _fmt(losses), ckpt_dir)
            report(metrics, checkpoint_dir=ckpt_dir if checkpoint.exists(ckpt_dir) else None)
            trial.teacher_bn.close()
            return {**metrics, "status": "diverged"}
        acc = {"top1": math.nan, "top5": math.nan}
        if _evaluated(cfg, epoch):
            acc = data.evaluate(trial.student, evalset, device)
            if epoch + 1 == cfg.warmup_epochs:
                prog.start_top1 = acc["top1"]   # before any student update
            if not acc["top1"] < prog.best_top1:  # ties move to the later epoch; NaN start
                prog.best_top1, prog.best_epoch = acc["top1"], epoch + 1
        prog.wall_time_s += time.perf_counter() - t0 - train_s
        prog.epoch = epoch + 1
        metrics = {"epoch": epoch + 1, **acc, "best_top1": prog.best_top1,
                   "best_epoch": prog.best_epoch, "teacher_top1": prog.teacher_top1,
                   "start_top1": prog.start_top1, "wall_time_s": prog.wall_time_s,
                   "step_time_s": train_s / steps, **losses, "diverged": 0}
        prog.history.append(metrics)
        checkpoint.save(ckpt_dir, trial.state(prog))
        report(metrics, checkpoint_dir=ckpt_dir)
    trial.teacher_bn.close()
    return {**metrics, "status": "ok"}


def _diverged(prog: Progress, epoch: int, losses: dict[str, float], step_s: float) -> dict:
    return {"epoch": epoch + 1, "top1": math.nan, "top5": math.nan, "best_top1": prog.best_top1,
            "best_epoch": prog.best_epoch, "teacher_top1": prog.teacher_top1,
            "start_top1": prog.start_top1, "wall_time_s": prog.wall_time_s,
            "step_time_s": step_s, **losses, "diverged": 1}


def _fmt(d: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in d.items())


# ---- CLI -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, TrainConfig]:
    p = argparse.ArgumentParser(prog="python -m qimera_core.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a named setting")
    p.add_argument("--out", type=Path, required=True, help="run directory (result.json, checkpoint/)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    add_config_flags(p)
    args = p.parse_args(argv)
    try:
        cfg = build(args.preset, **overrides_from_args(args))
    except ValueError as e:
        p.error(str(e))
    ckpt = args.out / "checkpoint"
    if checkpoint.exists(ckpt) and not args.resume:
        p.error(f"{ckpt} already holds a checkpoint; pass --resume to continue it, or choose "
                "another --out (nothing was overwritten)")
    if args.resume and not checkpoint.exists(ckpt):
        p.error(f"--resume given but {ckpt} holds no checkpoint")
    return args, cfg


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args, cfg = parse_args(argv)
    try:
        prepare.ensure_ready(cfg)
    except ValueError as e:
        if not (cfg.teacher.startswith("digits") and cfg.teacher_weights == ""):
            # everything else needs `python -m qimera_core.prepare` (downloads)
            print(f"python -m qimera_core.train: error: {e}", file=sys.stderr)
            return 2
        log.info("first run: preparing %s into %s (offline)", cfg.teacher, cfg.cache)
        prepare.prepare(cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []

    def report(metrics: Mapping[str, Any], checkpoint_dir: Path | None = None) -> None:
        history.append(dict(metrics))
        log_reporter(metrics, checkpoint_dir)

    final = train(cfg, args.out, report=report,
                  resume_from=args.out / "checkpoint" if args.resume else None)
    status = final.pop("status")
    summary = {"status": status, "config": cfg.to_dict(), "config_hash": cfg.config_hash,
               "metrics": final}
    tmp = args.out / ".result.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=list) + "\n")
    os.replace(tmp, args.out / "result.json")
    row = results.make_row(cfg, final, table="cli", trial_id=args.out.name, status=status,
                           device_name=_device_name(resolve_device(cfg.device)))
    results.write([row], args.out, "trials")
    print(f"teacher top-1 {final.get('teacher_top1', math.nan):.2f}%  "
          f"start top-1 {final.get('start_top1', math.nan):.2f}%  "
          f"final top-1 {final.get('top1', math.nan):.2f}%  "
          f"(best-epoch {final.get('best_top1', math.nan):.2f}% at epoch "
          f"{final.get('best_epoch', 0):.0f}, chosen on the test set)  status {status}  "
          f"-> {args.out / 'result.json'}")
    return 0 if status == "ok" else 2


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


if __name__ == "__main__":
    sys.exit(main())
