"""train(): Qimera/GDFQ data-free quantization of a teacher, one trial, resumable. Also the CLI.

    python -m qimera_core.train --preset digits-2w2a --out runs/digits

Per step (method doc §5.1): sample latents (superposed with probability p), generate a batch,
teacher forward with BN statistics, generator step on soft CE + bns_weight * BNS, then the
quantized student distils from the teacher on the detached batch (after the warm-up).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qimera_core import checkpoint, data, models, pack, prepare, quant, results
from qimera_core.builders import build_generator, build_networks, resolve_device
from qimera_core.config import (PRESETS, RUN_ONLY_FIELDS, ArgumentParser, TrainConfig,
                                add_config_flags, build, overrides_from_args)
from qimera_core.generator import Latents, sample_latents, stack_latents
from qimera_core.losses import TeacherWithBNStats, kd_loss, soft_cross_entropy
from qimera_core.report import Reporter, log_reporter

log = logging.getLogger(__name__)
_CHECK_EVERY = 10      # steps between finiteness checks of the losses (each check syncs a GPU)
_G_LOSSES = ("loss_g", "loss_g_ce", "loss_bns")
_LOSSES = (*_G_LOSSES, "loss_s", "loss_kd", "loss_s_ce")


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                      # macOS, Windows
        return os.cpu_count() or 1


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
    diverged: bool = False                # a loss became NaN/inf; history[-1] says when


class Trial:
    """The objects of one run, or of a pack of runs that build the same shapes (a list of
    configs, see `qimera_core.pack`), built once. `step()` is the hot path, one code for both.

    Per member: its generator, student, optimizer state and activation ranges (stacked in a
    pack), its own random streams, seeded as a lone run seeds them. Shared: the frozen teacher.
    """

    def __init__(self, cfg: TrainConfig | Sequence[TrainConfig], device: torch.device,
                 stacked: bool | None = None) -> None:
        self.cfgs = [cfg] if isinstance(cfg, TrainConfig) else list(cfg)
        pack.check_packable(self.cfgs)
        self.cfg, self.device = self.cfgs[0], device
        self._squeeze = isinstance(cfg, TrainConfig)   # a lone config: 0-d losses from step()
        spec = models.spec(self.cfg.teacher)
        self.num_classes = spec.num_classes
        self.teacher, student = build_networks(self.cfg, device)
        self.teacher_bn = TeacherWithBNStats(self.teacher)
        self._emb_mask: Tensor | None = None
        if not (len(self.cfgs) > 1 if stacked is None else stacked):
            self.student = student
            self.generator = build_generator(self.cfg, spec, self.teacher, device)
            self._s, self._g = pack.One(self.student), pack.One(self.generator)
        else:
            gens = [build_generator(c, spec, self.teacher, device, freeze_embeddings=False)
                    for c in self.cfgs]
            self._s = pack.Stack([student] * len(self.cfgs))
            self._g = pack.Stack(gens)
            self.student, self.generator = self._s, self._g
            if any(c.freeze_embeddings for c in self.cfgs):   # zero gradient = Adam never moves
                self._emb_mask = torch.tensor([[[0.0 if c.freeze_embeddings else 1.0]]
                                               for c in self.cfgs], device=device)
        self.latent_dim = self._g.template.latent_dim
        self.opt_g, self.opt_s = self._adam(), self._sgd()
        self.rngs = [torch.Generator(device=device).manual_seed(c.seed) for c in self.cfgs]
        self.coins = [torch.Generator().manual_seed(c.seed + 1) for c in self.cfgs]
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                                       enabled=self.cfg.amp_bf16 and device.type == "cuda")

    @property
    def size(self) -> int:
        return len(self.cfgs)

    def _adam(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        return torch.optim.Adam([p for p in self._g.parameters() if p.requires_grad],
                                lr=cfg.lr_generator, betas=(cfg.adam_beta1, cfg.adam_beta2))

    def _sgd(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        return torch.optim.SGD(self._s.parameters(), lr=cfg.lr_student, momentum=cfg.momentum,
                               nesterov=True, weight_decay=cfg.weight_decay)

    def sample(self) -> Latents:
        """Each member's latents from its own streams, as one batch (N, B, ...)."""
        return stack_latents([
            sample_latents(c.batch_size, self.num_classes, self.latent_dim, mix_prob=c.mix_prob,
                           mix_classes=c.mix_classes, mix_mode=c.mix_mode,
                           noise_sigma=c.noise_sigma if c.latent_input == "additive" else 1.0,
                           rng=rng, coin=coin, device=self.device)
            for c, rng, coin in zip(self.cfgs, self.rngs, self.coins, strict=True)])

    def step(self, train_student: bool, calibrate: bool,
             mark: Callable[[str], None] | None = None) -> dict[str, Tensor]:
        """One iteration of every member; losses per member, (N,) (0-d for a lone config).
        `mark(phase)` (benchmarks only) is called as each phase ends."""
        cfg, n = self.cfg, self.size
        mark = mark or _no_mark
        lat = self.sample()
        with self.autocast:
            images = self._g(lat.labels, lat.weights, lat.noise, lat.mixed)   # (N, B, C, H, W)
            mark("generator_fwd")
            flat = images.flatten(0, 1)        # the shared teacher sees one (N*B) batch
            if cfg.channels_last:
                flat = flat.contiguous(memory_format=torch.channels_last)
            t_logits, bns = self.teacher_bn(flat, n)
        mark("teacher_fwd")
        t_logits = t_logits.view(n, -1, t_logits.shape[-1])                    # (N, B, classes)
        g_ce = soft_cross_entropy(t_logits, lat.targets)
        loss_g = g_ce + cfg.bns_weight * bns
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.sum().backward()    # a sum, so each member gets the gradient of its own loss
        if self._emb_mask is not None:
            self._g.params["embeddings"].grad.mul_(self._emb_mask)
        self.opt_g.step()
        mark("generator_bwd_step")
        out = {"loss_g": loss_g.detach(), "loss_g_ce": g_ce.detach(), "loss_bns": bns.detach()}
        x = images.detach()               # the student must not push gradients into G
        if x.dtype == torch.bfloat16:      # autocast: the student trains in float32
            x = x.float()
        if train_student:
            s_logits = self._s(x)
            kd = kd_loss(s_logits, t_logits.detach(), cfg.kd_temperature, cfg.kd_reduction)
            s_ce = soft_cross_entropy(s_logits, lat.targets)
            loss_s = cfg.kd_alpha * kd + s_ce
            self.opt_s.zero_grad(set_to_none=True)
            loss_s.sum().backward()
            self.opt_s.step()
            out.update(loss_s=loss_s.detach(), loss_kd=kd.detach(), loss_s_ce=s_ce.detach())
        elif calibrate:                    # warm-up: the forward only moves activation ranges
            with torch.no_grad():
                self._s(x)
        mark("student")
        return {k: v[0] for k, v in out.items()} if self._squeeze else out

    def set_calibration(self, enabled: bool) -> None:
        quant.set_calibration(self._s.template, enabled)

    def evaluate(self, evalset: data.EvalSet) -> list[dict[str, float]]:
        """Every member's student on the test set: top-1/top-5 per member."""
        return data.evaluate_many(self._s.shared, self.size, evalset, self.device)

    def keep(self, rows: list[int]) -> None:
        """Go on with the members at `rows` only (the others diverged)."""
        n = self.size
        self.cfgs = [self.cfgs[i] for i in rows]
        self.rngs = [self.rngs[i] for i in rows]
        self.coins = [self.coins[i] for i in rows]
        if isinstance(self._g, pack.Stack):
            self._g.keep(rows)
            self._s.keep(rows)
            self.opt_g = pack.slice_optimizer(self.opt_g, rows, n, self._adam)
            self.opt_s = pack.slice_optimizer(self.opt_s, rows, n, self._sgd)
            if self._emb_mask is not None:
                self._emb_mask = self._emb_mask[rows]

    def state(self) -> dict[str, Any]:
        """Model, optimizer and RNG state of the live members (a pack's tensors stacked)."""
        return {"stacked": isinstance(self._g, pack.Stack),
                "student": self._s.state_dict(), "generator": self._g.state_dict(),
                "opt_s": self.opt_s.state_dict(), "opt_g": self.opt_g.state_dict(),
                "rngs": [g.get_state() for g in self.rngs],
                "coins": [g.get_state() for g in self.coins]}

    def restore(self, state: Mapping[str, Any]) -> None:
        self._s.load_state_dict(state["student"])
        self._g.load_state_dict(state["generator"])
        self.opt_s.load_state_dict(state["opt_s"])
        self.opt_g.load_state_dict(state["opt_g"])
        for g, s in zip(self.rngs, state["rngs"], strict=True):
            g.set_state(s)
        for g, s in zip(self.coins, state["coins"], strict=True):
            g.set_state(s)


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
    def one(metrics: Mapping[str, Any], checkpoint_dir: Path | None = None) -> None:
        report(metrics["members"][0], checkpoint_dir=checkpoint_dir)

    return train_pack([cfg], out_dir, report=one, resume_from=resume_from)[0]


def train_pack(cfgs: Sequence[TrainConfig], out_dir: Path, report: Reporter = log_reporter,
               resume_from: Path | None = None) -> list[dict[str, Any]]:
    """Train a pack (configs that build the same shapes, see `qimera_core.pack`) in this process,
    writing only inside `out_dir`. A pack of one is a plain run (no vmap).

    Each epoch `report` gets the pack's summary (`epoch`, `top1` = mean over the members
    evaluated, `top1_min`, `top1_max`, `live`) and `members`: every member's latest metrics, in
    the order of `cfgs` (a diverged member's stay at its last report, `diverged` = 1). A member
    whose loss becomes NaN/inf is dropped from the pack; the others go on. Returns each
    member's last metrics plus `status` ("ok" or "diverged").
    """
    cfgs = list(cfgs)
    pack.check_packable(cfgs)
    cfg = cfgs[0]
    ckpt_dir = Path(out_dir) / "checkpoint"
    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.num_threads or _usable_cpus())
    prepare.ensure_ready(cfg)                       # fail before any expensive work
    saved = checkpoint.load(resume_from) if resume_from is not None else None
    progs = _check_saved(saved, cfgs) if saved else [Progress() for _ in cfgs]
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
            _set_lr(opt, base * lr_factor(cfg, epoch))
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
        report(_pack_metrics(progs, epoch + 1),
               checkpoint_dir=ckpt_dir if checkpoint.exists(ckpt_dir) else None)
    if trial is not None:
        trial.teacher_bn.close()
    return [{**(p.history[-1] if p.history else {}), "status": "diverged" if p.diverged else "ok"}
            for p in progs]


def _check_saved(saved: Mapping[str, Any], cfgs: Sequence[TrainConfig]) -> list[Progress]:
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


def _finish_epoch(trial: Trial, progs: list[Progress], epoch: int, sums: dict[str, Tensor],
                  steps: int, evalset: data.EvalSet, t0: float, train_student: bool) -> None:
    """Evaluate the live members (when scheduled) and append each one's epoch metrics."""
    cfg = trial.cfg
    trial.set_calibration(False)
    if trial.device.type == "cuda":
        torch.cuda.synchronize(trial.device)
    train_s = time.perf_counter() - t0
    evaluated = _evaluated(cfg, epoch)
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


def _pack_metrics(progs: Sequence[Progress], epoch: int) -> dict[str, Any]:
    """The pack's report: a summary over the members evaluated this epoch, and each member."""
    members = [dict(p.history[-1]) if p.history else {} for p in progs]
    top1 = [m["top1"] for m in members
            if m.get("epoch") == epoch and not m.get("diverged") and not math.isnan(m["top1"])]
    return {"epoch": epoch, "top1": sum(top1) / len(top1) if top1 else math.nan,
            "top1_min": min(top1, default=math.nan), "top1_max": max(top1, default=math.nan),
            "live": sum(not p.diverged for p in progs), "members": members}


def _fmt(d: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in d.items())


# ---- CLI -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, TrainConfig]:
    p = ArgumentParser(prog="python -m qimera_core.train", description=__doc__,
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
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} is a file; pass a directory for the run (it is created)")
    ckpt = args.out / "checkpoint"
    if checkpoint.exists(ckpt) and not args.resume:
        p.error(f"{ckpt} already holds a checkpoint; pass --resume to continue it, or choose "
                "another --out (nothing was overwritten)")
    if args.resume and not checkpoint.exists(ckpt):
        p.error(f"--resume given but {ckpt} holds no checkpoint")
    return args, cfg


def _get_ready(cfg: TrainConfig, out: Path) -> None:
    """Everything the run needs, checked (and the digits teacher trained) before any training;
    raises ValueError or OSError with a message for the user."""
    prepare.check_inputs(cfg)
    try:
        prepare.ensure_ready(cfg)
    except ValueError:
        if not (cfg.teacher.startswith("digits") and cfg.teacher_weights == ""):
            raise                     # everything else needs `python -m qimera_core.prepare`
        log.info("first run: preparing %s into %s (offline)", cfg.teacher, cfg.cache)
        prepare.prepare(cfg)
    out.mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args, cfg = parse_args(argv)
    try:
        _get_ready(cfg, args.out)
    except ValueError as e:
        print(f"python -m qimera_core.train: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"python -m qimera_core.train: error: {e.filename}: {e.strerror}; --out and "
              "--cache-dir must be directories this user can write", file=sys.stderr)
        return 2
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
