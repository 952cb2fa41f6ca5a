"""The rules of one training step and of the epoch schedule (method doc §4, §5), pinned.

Each test watches a real `Trial` from outside: forward hooks on the generator, teacher and
student, a hook on the generated images' gradient, parameter and range snapshots, and the
optimizers' learning rates. Expected values come from the method doc's formulas written out
here, never from the trainer's own helpers, so a wrong order, a missing term, a wrong weight
or reduction, or a schedule switch one epoch off turns a test red.
"""

import copy
import math

import pytest
import torch
from torch import nn

from qimera_core import quant
from qimera_core.config import build
from qimera_core.generator import Latents
from qimera_core.step import Trial
from qimera_core.train import lr_factor, train

CPU = torch.device("cpu")


def cfg_(**kw):
    base = dict(teacher="tiny_resnet", teacher_weights="random", eval_data="synthetic",
                epochs=2, steps_per_epoch=2, batch_size=8, warmup_epochs=1,
                act_range_epochs=1, device="cpu", num_threads=1, mix_prob=1.0, mix_classes=3,
                bns_weight=0.37, kd_alpha=0.7, kd_temperature=4.0, lr_student=0.01)
    base.update(kw)
    return build(**base)


def params(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.named_parameters()}


def ranges(student: nn.Module) -> list[tuple[float, float]]:
    return [(float(q.lo), float(q.hi)) for q in quant.act_quantizers(student)]


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


class Watch:
    """Hooks on one Trial that record what each model saw and returned during a step."""

    def __init__(self, trial: Trial) -> None:
        self.trial = trial
        self.gen_out: list[torch.Tensor] = []
        self.img_grads: list[torch.Tensor] = []
        self.teacher_in: list[torch.Tensor] = []
        self.teacher_out: list[torch.Tensor] = []
        self.student_in: list[torch.Tensor] = []
        self.student_out: list[torch.Tensor] = []
        self.logit_grads: list[torch.Tensor] = []
        self.lats: list = []
        g = trial.generator
        original = trial.sample

        def sample():                             # the latents and soft targets of this batch
            lat = original()                      # (a pack's: leading member dim, here 1)
            self.lats.append(Latents(*(t[0] for t in (lat.labels, lat.weights, lat.noise,
                                                      lat.targets, lat.mixed))))
            return lat
        trial.sample = sample
        g.register_forward_hook(self._on_gen)
        trial.teacher.register_forward_hook(self._on_teacher)
        trial.student.register_forward_hook(self._on_student)

    def _on_gen(self, _m, _inp, out):
        self.gen_out.append(out.detach().clone())
        if out.requires_grad:
            out.register_hook(lambda gr: self.img_grads.append(gr.detach().clone()))

    def _on_teacher(self, _m, inp, out):
        self.teacher_in.append(inp[0].detach().clone())
        self.teacher_out.append(out.detach().clone())

    def _on_student(self, _m, inp, out):
        self.student_in.append(inp[0].detach().clone())
        self.student_out.append(out.detach().clone())
        if out.requires_grad:
            out.register_hook(lambda gr: self.logit_grads.append(gr.detach().clone()))


def bns_loss(teacher: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Method doc §4.1: mean over BN layers of mean_c (mu - mu_run)^2 + mean_c (var - var_run)^2,
    batch statistics of each BN layer's input (biased variance over N, H, W)."""
    terms = []

    def pre(bn, inp):
        z = inp[0].float()
        mu = z.mean((0, 2, 3))
        var = ((z - mu[None, :, None, None]) ** 2).mean((0, 2, 3))
        terms.append(((mu - bn.running_mean) ** 2).mean() + ((var - bn.running_var) ** 2).mean())
    bns = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    hooks = [bn.register_forward_pre_hook(pre) for bn in bns]
    try:
        logits = teacher(x)
    finally:
        for h in hooks:
            h.remove()
    assert len(terms) == len(bns)
    return logits, torch.stack(terms).mean()


def soft_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -(y * torch.log_softmax(logits, 1)).sum(1).mean()


def student_loss(s, t, y, cfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Method doc §4.2: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + CE_soft(s, y); the KL
    is divided by B*C (official element-wise mean) or by B (batchmean)."""
    T = cfg.kd_temperature
    p = torch.softmax(t / T, 1)
    kl = (p * (torch.log(p) - torch.log_softmax(s / T, 1))).sum()
    kd = kl * T * T / (p.numel() if cfg.kd_reduction == "elementwise_mean" else p.shape[0])
    ce = soft_ce(s, y)
    return cfg.kd_alpha * kd + ce, kd, ce


def calibrate_once(trial: Trial) -> None:
    """One warm-up step with calibration on, so the student's activation ranges are set."""
    quant.set_calibration(trial.student, True)
    trial.step(False, True)
    quant.set_calibration(trial.student, False)


def close(a, b, **kw):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32),
                               torch.as_tensor(b, dtype=torch.float32), **kw)


# ---- one main-phase step ---------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["elementwise_mean", "batchmean"])
def test_main_step_images_logits_losses_and_gradients(reduction):
    cfg = cfg_(kd_reduction=reduction)
    torch.manual_seed(0)
    trial = Trial(cfg, CPU)
    calibrate_once(trial)
    student0 = copy.deepcopy(trial.student)
    gen0 = copy.deepcopy(trial.generator)
    w = Watch(trial)
    out = trial.step(True, False)

    # one generator forward per step; the teacher and the student both see exactly its images,
    # i.e. the batch made *before* the generator step (the student does not regenerate)
    assert len(w.gen_out) == 1 and len(w.teacher_out) == 1 and len(w.student_out) == 1
    x = w.gen_out[0]
    assert torch.equal(w.teacher_in[0], x) and torch.equal(w.student_in[0], x)
    y = w.lats[0].targets
    assert y.shape == (8, 10) and torch.allclose(y.sum(1), torch.ones(8))

    # generator loss: soft CE on the teacher logits + bns_weight * BNS, batch-mean reduced;
    # the images receive gradient exactly once: the student loss does not reach the generator
    xr = x.clone().requires_grad_(True)
    t, bns = bns_loss(trial.teacher, xr)
    ce = soft_ce(t, y)
    loss_g = ce + cfg.bns_weight * bns
    close(out["loss_g_ce"], ce)
    close(out["loss_bns"], bns)
    close(out["loss_g"], loss_g)
    (grad_x,) = torch.autograd.grad(loss_g, xr)
    assert len(w.img_grads) == 1
    close(w.img_grads[0], grad_x, rtol=1e-4, atol=1e-7)
    # and the generator's parameter gradients are those of that loss through G
    g_ref = gen0
    xg = type(g_ref).generate(g_ref, w.lats[0])
    t_g, bns_g = bns_loss(trial.teacher, xg)
    (soft_ce(t_g, y) + cfg.bns_weight * bns_g).backward()
    ref_grads = {k: p.grad for k, p in g_ref.named_parameters()}
    # biases in front of a BatchNorm get ~0 gradient (float noise): tolerance on a global scale
    atol = 1e-4 * max(float(v.abs().max()) for v in ref_grads.values())
    for name, p in trial.generator.named_parameters():
        close(p.grad, ref_grads[name], rtol=1e-3, atol=atol,
              msg=lambda m, n=name: f"generator {n}: {m}")

    # student loss: KD against the teacher logits of that same forward, plus soft CE
    s = w.student_out[0].clone().requires_grad_(True)
    assert torch.equal(w.teacher_out[0], t.detach())
    loss_s, kd, s_ce = student_loss(s, w.teacher_out[0], y, cfg)
    close(out["loss_kd"], kd)
    close(out["loss_s_ce"], s_ce)
    close(out["loss_s"], loss_s)
    (grad_s,) = torch.autograd.grad(loss_s, s)
    assert len(w.logit_grads) == 1
    close(w.logit_grads[0], grad_s, rtol=1e-4, atol=1e-8)
    # the student's weight gradients are those of that loss on the detached batch
    ref_loss, _, _ = student_loss(student0(x), w.teacher_out[0], y, cfg)
    ref_loss.backward()
    ref_grads = {k: p.grad for k, p in student0.named_parameters()}
    atol = 1e-4 * max(float(v.abs().max()) for v in ref_grads.values())
    for name, p in trial.student.named_parameters():
        close(p.grad, ref_grads[name], rtol=1e-3, atol=atol,
              msg=lambda m, n=name: f"student {n}: {m}")
    # the teacher is frozen: no weight gradients, weights and BN statistics untouched
    assert all(p.grad is None for p in trial.teacher.parameters())


def test_student_update_is_nesterov_sgd_with_weight_decay():
    """Method doc §5.3: first SGD step with momentum m, Nesterov, weight decay wd moves each
    parameter by -lr * (1 + m) * (grad + wd * p)."""
    cfg = cfg_(momentum=0.9, weight_decay=0.01, lr_student=0.05)
    torch.manual_seed(0)
    trial = Trial(cfg, CPU)
    calibrate_once(trial)
    before = params(trial.student)
    trial.step(True, False)
    for name, p in trial.student.named_parameters():
        expect = before[name] - 0.05 * 1.9 * (p.grad + 0.01 * before[name])
        close(p.detach(), expect, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")


def test_generator_update_is_adam_with_the_configured_betas():
    """Method doc §5.3: Adam, betas (0.5, 0.999): the first step moves each parameter by
    -lr * g / (|g| + eps) (bias-corrected moments), i.e. by lr against the gradient's sign."""
    cfg = cfg_(lr_generator=0.002)
    torch.manual_seed(0)
    trial = Trial(cfg, CPU)
    before = params(trial.generator)
    trial.step(False, True)
    assert trial.opt_g.param_groups[0]["betas"] == (0.5, 0.999)
    for name, p in trial.generator.named_parameters():
        g = p.grad
        expect = before[name] - 0.002 * g / (g.abs() + 1e-8)
        close(p.detach(), expect, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")


# ---- what each phase updates -----------------------------------------------------------------
def _step_effects(trial: Trial, train_student: bool, calibrate: bool):
    s0, g0, t0 = params(trial.student), params(trial.generator), params(trial.teacher)
    sb0 = {k: v.clone() for k, v in trial.student.named_buffers()}
    tb0 = {k: v.clone() for k, v in trial.teacher.named_buffers()}
    r0 = ranges(trial.student)
    out = trial.step(train_student, calibrate)
    sb1 = {k: v.clone() for k, v in trial.student.named_buffers()}
    range_bufs = {k for k in sb0 if k.rsplit(".", 1)[-1] in ("lo", "hi", "beta_t")}
    return dict(
        out=out,
        student=changed(s0, params(trial.student)),
        generator=changed(g0, params(trial.generator)),
        teacher=changed(t0, params(trial.teacher)) | changed(
            tb0, {k: v for k, v in trial.teacher.named_buffers()}),
        student_other_buffers=changed({k: sb0[k] for k in sb0.keys() - range_bufs},
                                      {k: sb1[k] for k in sb0.keys() - range_bufs}),
        ranges_moved=sum(a != b for a, b in zip(r0, ranges(trial.student), strict=True)),
        n_ranges=len(r0),
    )


def test_phases_update_what_the_method_says():
    torch.manual_seed(0)
    trial = Trial(cfg_(), CPU)
    all_g = {k for k, p in trial.generator.named_parameters() if p.requires_grad}

    quant.set_calibration(trial.student, True)       # warm-up, calibrating
    e = _step_effects(trial, False, True)
    assert e["generator"] == all_g                   # every generator parameter moves
    assert e["student"] == set() and e["teacher"] == set()
    assert e["ranges_moved"] == e["n_ranges"] > 0    # every activation range tracks the batch
    assert e["student_other_buffers"] == set()       # student BN stays in eval mode
    assert set(e["out"]) == {"loss_g", "loss_g_ce", "loss_bns"}
    assert not trial.opt_s.state                     # the student optimizer never stepped

    quant.set_calibration(trial.student, False)      # warm-up after the calibration epochs
    e = _step_effects(trial, False, False)
    assert e["generator"] == all_g
    assert e["student"] == set() and e["ranges_moved"] == 0 and e["teacher"] == set()

    e = _step_effects(trial, True, False)            # main phase, ranges frozen
    assert e["generator"] == all_g
    assert e["student"] == {k for k, _ in trial.student.named_parameters()}
    assert e["ranges_moved"] == 0 and e["teacher"] == set()
    assert e["student_other_buffers"] == set()
    assert set(e["out"]) == {"loss_g", "loss_g_ce", "loss_bns", "loss_s", "loss_kd",
                             "loss_s_ce"}

    quant.set_calibration(trial.student, True)       # main phase inside the calibration epochs
    e = _step_effects(trial, True, True)
    assert e["ranges_moved"] == e["n_ranges"] and e["student"]
    quant.set_calibration(trial.student, False)


def test_warm_up_calibration_forward_sees_the_generated_batch():
    torch.manual_seed(0)
    trial = Trial(cfg_(), CPU)
    quant.set_calibration(trial.student, True)
    w = Watch(trial)
    trial.step(False, True)
    assert len(w.gen_out) == 1 and len(w.student_in) == 1
    assert torch.equal(w.student_in[0], w.gen_out[0])
    assert w.logit_grads == []                       # no student backward in warm-up
    quant.set_calibration(trial.student, False)


# ---- the epoch schedule ----------------------------------------------------------------------
def test_lr_factor_is_the_paper_multistep_schedule():
    # Method doc §5.2: base for epochs 0-99, x0.1 for 100-199, x0.01 200-299, x0.001 300-399.
    cfg = build("cifar10-resnet20-4w4a")
    table = {0: 1.0, 99: 1.0, 100: 0.1, 199: 0.1, 200: 0.01, 299: 0.01, 300: 0.001, 399: 0.001}
    for epoch, factor in table.items():
        assert lr_factor(cfg, epoch) == pytest.approx(factor, rel=1e-12), epoch


def _record_schedule(monkeypatch, cfg, tmp_path):
    """Run train() and record, for every step: both learning rates and what moved."""
    rows = []
    real_step = Trial.step

    def step(self, train_student, calibrate, mark=None):
        before = (params(self.student), params(self.generator), ranges(self.student))
        row = dict(lr_s=self.opt_s.param_groups[0]["lr"], lr_g=self.opt_g.param_groups[0]["lr"],
                   start=before)
        out = real_step(self, train_student, calibrate, mark)
        row.update(student=bool(changed(before[0], params(self.student))),
                   generator=bool(changed(before[1], params(self.generator))),
                   ranges=before[2] != ranges(self.student),
                   end=(params(self.student), ranges(self.student)))
        rows.append(row)
        return out
    monkeypatch.setattr(Trial, "step", step)
    seen = []
    train(cfg, tmp_path, report=lambda m, checkpoint_dir=None: seen.append(dict(m)))
    n = cfg.steps_per_epoch
    assert len(rows) == cfg.epochs * n and len(seen) == cfg.epochs
    return [rows[e * n:(e + 1) * n] for e in range(cfg.epochs)], seen


@pytest.mark.parametrize("warmup,calib", [(2, 3), (3, 1)])
def test_epoch_schedule_lr_milestones_warm_up_and_calibration(monkeypatch, tmp_path, warmup,
                                                              calib):
    cfg = cfg_(epochs=5, steps_per_epoch=2, warmup_epochs=warmup, act_range_epochs=calib,
               lr_milestones=(2, 4), lr_gamma=0.5, lr_student=0.02, lr_generator=0.003)
    epochs, seen = _record_schedule(monkeypatch, cfg, tmp_path)
    factors = [1.0, 1.0, 0.5, 0.5, 0.25]              # milestones at epochs 2 and 4, gamma 0.5
    for e, steps in enumerate(epochs):
        for r in steps:
            assert r["lr_s"] == pytest.approx(0.02 * factors[e]), e
            assert r["lr_g"] == pytest.approx(0.003 * factors[e]), e
            assert r["generator"], e                  # the generator trains in every epoch
            assert r["student"] == (e >= warmup), e   # the student only after the warm-up
            assert r["ranges"] == (e < calib), e      # ranges track only in the first epochs
        assert math.isnan(seen[e]["loss_s"]) == (e < warmup)
    # evaluation between epochs moves neither the student nor its ranges
    for a, b in zip(epochs[:-1], epochs[1:], strict=True):
        s_end, r_end = a[-1]["end"]
        s_start, _, r_start = b[0]["start"]
        assert not changed(s_end, s_start) and r_end == r_start
