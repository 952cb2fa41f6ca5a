"""The training step: `Trial` holds the objects of one run (or of a pack of runs) and
`Trial.step()` does one iteration of each.

Per step (method doc §5.1): sample latents (superposed with probability p), generate a batch,
teacher forward with BN statistics, generator step on soft CE + bns_weight * BNS, then the
quantized student distils from the teacher on the detached batch (after the warm-up).

The generator baselines are named loss terms of the same step (baselines doc §3-4):
- adadfq: the generator learns through the quantized student (its forward on the batch, not
  detached): margin(t - s) + beta (alpha_ds CE(t - s, y) + alpha_as CE(t + s, y)) + gamma BNS;
  the student's loss, -T^2 mean entropy(softmax((t - s) / T)), reuses that same forward.
- zaq: stage outputs of teacher and student are tapped; the generator maximises the
  discrepancy L1(s, t) + alpha SCRM and the teacher's last-stage activation magnitude (beta);
  then zaq_student_steps student steps, each on a fresh batch, minimise the discrepancy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from qimera_core import data, models, pack, quant
from qimera_core.builders import build_generator, build_networks
from qimera_core.config import TrainConfig
from qimera_core.generator import Latents, sample_latents, stack_latents
from qimera_core.losses import (
    TeacherWithBNStats,
    adadfq_margin,
    adadfq_student_loss,
    kd_loss,
    logit_l1,
    scrm,
    soft_cross_entropy,
)
from qimera_core.taps import Tapped, forward_with_taps, stage_names


def _no_mark(_phase: str) -> None:
    pass


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
        self.method = self.cfg.method
        self.stages: list[str] = []
        if self.method == "zaq":                       # stage outputs of both networks
            self.stages = stage_names(self.teacher)
            student = Tapped(student, self.stages)
        if self.cfg.student_train_mode:                # ZAQ's code: BN on batch statistics
            student.train()
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
                               nesterov=cfg.student_nesterov, weight_decay=cfg.weight_decay)

    def sample(self) -> Latents:
        """Each member's latents from its own streams, as one batch (N, B, ...)."""
        return stack_latents([
            sample_latents(c.batch_size, self.num_classes, self.latent_dim, mix_prob=c.mix_prob,
                           mix_classes=c.mix_classes, mix_mode=c.mix_mode,
                           noise_sigma=c.noise_sigma if c.latent_input == "additive" else 1.0,
                           rng=rng, coin=coin, device=self.device)
            for c, rng, coin in zip(self.cfgs, self.rngs, self.coins, strict=True)])

    def _teacher(self, flat: Tensor, n: int) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """Teacher logits (N*B, C), BNS per member and, for ZAQ, its stage outputs (N, B, ...)."""
        if not self.stages:
            return (*self.teacher_bn(flat, n), ())
        (logits, bns), feats = forward_with_taps(self.teacher, self.stages, flat,
                                                 call=lambda x: self.teacher_bn(x, n))
        return logits, bns, tuple(f.view(n, -1, *f.shape[1:]) for f in feats)

    def _student(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The quantized student on a pack's (N, B, ...) batch: logits and (ZAQ) stage outputs."""
        out = self._s(x)
        return out if self.stages else (out, ())

    def _generator_loss(self, lat: Latents, t: Tensor, bns: Tensor, t_feats: tuple[Tensor, ...],
                        s: Tensor | None, s_feats: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """(loss_g, its CE-like term) per member, by method."""
        cfg = self.cfg
        if self.method == "adadfq":
            d = t - s
            ce = cfg.adadfq_beta * (cfg.adadfq_alpha_ds * soft_cross_entropy(d, lat.targets)
                                    + cfg.adadfq_alpha_as * soft_cross_entropy(t + s, lat.targets))
            return adadfq_margin(d, cfg.adadfq_lambda_l, cfg.adadfq_lambda_u) + ce + \
                cfg.bns_weight * bns, ce
        if self.method == "zaq":
            disc = logit_l1(s, t, 1) + cfg.zaq_alpha * scrm(s_feats, t_feats, 1,
                                                           cfg.zaq_official_normalize)
            magnitude = t_feats[-1].float().abs().flatten(1).mean(-1)
            return -disc - cfg.zaq_beta * magnitude + cfg.bns_weight * bns, -disc
        ce = soft_cross_entropy(t, lat.targets)
        return ce + cfg.bns_weight * bns, ce

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
            t_logits, bns, t_feats = self._teacher(flat, n)
        mark("teacher_fwd")
        t_logits = t_logits.view(n, -1, t_logits.shape[-1])                    # (N, B, classes)
        s_logits, s_feats = None, ()
        through_student = self.method in ("adadfq", "zaq")
        if through_student:                    # the generator's gradient passes the student
            s_logits, s_feats = self._student(images.float())   # (float32 under autocast too)
        loss_g, g_ce = self._generator_loss(lat, t_logits, bns, t_feats, s_logits, s_feats)
        self.opt_g.zero_grad(set_to_none=True)
        reuse = self.method == "adadfq" and train_student   # the student loss reuses s_logits
        if through_student:
            loss_g.sum().backward(inputs=self._g.parameters(), retain_graph=reuse)
        else:
            loss_g.sum().backward()  # a sum, so each member gets the gradient of its own loss
        if self._emb_mask is not None:
            self._g.params["embeddings"].grad.mul_(self._emb_mask)
        out = {"loss_g": loss_g.detach(), "loss_g_ce": g_ce.detach(), "loss_bns": bns.detach()}
        if reuse:
            loss_s = adadfq_student_loss(s_logits, t_logits.detach(), cfg.kd_temperature)
            self.opt_s.zero_grad(set_to_none=True)
            loss_s.sum().backward(inputs=self._s.parameters())
            self.opt_s.step()
            out.update(loss_s=loss_s.detach(), loss_kd=loss_s.detach(),
                       loss_s_ce=torch.zeros_like(loss_s.detach()))
        self.opt_g.step()
        mark("generator_bwd_step")
        x = images.detach()               # the student must not push gradients into G
        if x.dtype == torch.bfloat16:      # autocast: the student trains in float32
            x = x.float()
        if train_student and self.method == "zaq":
            out.update(self._zaq_student_steps())
        elif train_student and not reuse:
            s_logits = self._s(x)
            kd = kd_loss(s_logits, t_logits.detach(), cfg.kd_temperature, cfg.kd_reduction)
            s_ce = soft_cross_entropy(s_logits, lat.targets)
            loss_s = cfg.kd_alpha * kd + s_ce
            self.opt_s.zero_grad(set_to_none=True)
            loss_s.sum().backward()
            self.opt_s.step()
            out.update(loss_s=loss_s.detach(), loss_kd=kd.detach(), loss_s_ce=s_ce.detach())
        elif calibrate and not train_student and (not through_student
                                                  or cfg.adadfq_calibrate_twice):
            # warm-up: a forward that only moves the ranges (a method whose generator step ran
            # the student has moved them once already; AdaDFQ's code moves them twice)
            with torch.no_grad():
                self._s(x)
        mark("student")
        return {k: v[0] for k, v in out.items()} if self._squeeze else out

    def _zaq_student_steps(self) -> dict[str, Tensor]:
        """ZAQ's zaq_student_steps student steps, each on a fresh batch: the student minimises
        L1(s, t) + alpha SCRM. Returns the mean over the steps (loss_kd = the L1, loss_s_ce =
        alpha SCRM)."""
        cfg, n = self.cfg, self.size
        sums: dict[str, Tensor] = {}
        for _ in range(cfg.zaq_student_steps):
            lat = self.sample()
            with torch.no_grad(), self.autocast:
                images = self._g(lat.labels, lat.weights, lat.noise, lat.mixed)
                flat = images.flatten(0, 1)
                if cfg.channels_last:
                    flat = flat.contiguous(memory_format=torch.channels_last)
                # the teacher alone: this step uses no BN statistics (no hooks recording)
                t, feats = forward_with_taps(self.teacher, self.stages, flat)
                t_feats = tuple(f.view(n, -1, *f.shape[1:]) for f in feats)
            x = images.float() if images.dtype == torch.bfloat16 else images
            s, s_feats = self._student(x)
            t = t.view(n, -1, t.shape[-1]).float()
            l1 = logit_l1(s, t, 1)
            att = cfg.zaq_alpha * scrm(s_feats, t_feats, 1, cfg.zaq_official_normalize)
            loss = l1 + att
            self.opt_s.zero_grad(set_to_none=True)
            loss.sum().backward()
            self.opt_s.step()
            for k, v in (("loss_s", loss), ("loss_kd", l1), ("loss_s_ce", att)):
                sums[k] = sums.get(k, 0) + v.detach() / cfg.zaq_student_steps
        return sums

    def set_calibration(self, enabled: bool) -> None:
        quant.set_calibration(self._s.template, enabled)

    def evaluate(self, evalset: data.EvalSet) -> list[dict[str, float]]:
        """Every member's student on the test set (in eval mode): top-1/top-5 per member."""
        template = self._s.template
        train_mode = template.training
        template.eval()
        try:
            forward = (lambda x: self._s.shared(x)[0]) if self.stages else self._s.shared
            return data.evaluate_many(forward, self.size, evalset, self.device)
        finally:
            template.train(train_mode)

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
