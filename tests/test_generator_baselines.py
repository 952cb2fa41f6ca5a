"""AdaDFQ and ZAQ on the Qimera loop (baselines doc §3-4): each loss term against a hand
computation, each method's losses at step 0 from the facts file's formulas, the 5:1 schedule,
gradients through the quantized student, packs, bad input."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from qimera_core import losses, models
from qimera_core.config import build
from qimera_core.step import Trial
from qimera_core.taps import forward_with_taps, stage_names

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "tiny.pt"
    teacher = models.create("tiny_resnet")
    for bn in (m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)):
        for t, lo, hi in ((bn.running_mean, -0.5, 0.5), (bn.running_var, 0.5, 2.0),
                          (bn.weight.data, 0.5, 1.5), (bn.bias.data, -0.5, 0.5)):
            t.uniform_(lo, hi)
    torch.save(teacher.state_dict(), path)
    return str(path)


def cfg(teacher_file, method, **kw):
    base = dict(teacher="tiny_resnet", teacher_weights=teacher_file, eval_data="synthetic",
                epochs=3, steps_per_epoch=3, batch_size=8, warmup_epochs=1, act_range_epochs=1,
                lr_student=0.01, lr_milestones=(2,), device="cpu", num_threads=1, method=method,
                w_bits=4, a_bits=4)
    return build(**{**base, **kw})


# ---- loss terms against hand computations ----------------------------------------------------
def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _entropy(x):
    p = _softmax(x)
    return -(p * np.log(p)).sum(-1)


def test_adadfq_terms_match_hand_computations():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3
    d = (t - s).double().numpy()
    h = _entropy(d)
    hn = (h - h.min()) / (math.log(5) - h.min())
    want = np.maximum(0.3 - hn, 0).mean() + np.maximum(hn - 0.6, 0).mean()
    assert losses.adadfq_margin(t - s, 0.3, 0.6).item() == pytest.approx(want, rel=1e-5)
    assert want > 0                                        # both bounds bite on this batch
    T = 4.0
    want_s = -T**2 * _entropy(d / T).mean()
    assert losses.adadfq_student_loss(s, t, T).item() == pytest.approx(want_s, rel=1e-5)
    # a pack: one value per member
    assert losses.adadfq_margin(torch.stack([t - s, s - t]), 0.3, 0.6).shape == (2,)


def _spatial(x):
    c, h, w = x.shape
    f = x.reshape(c, h * w)
    a = _softmax(f.T @ f)                     # (HW, HW), rows over the last axis
    return x + 0.1 * (f @ a.T).reshape(c, h, w)


def _channel(x):
    c, h, w = x.shape
    f = x.reshape(c, h * w)
    e = f @ f.T
    e = e.max(-1, keepdims=True) - e
    return x + 0.1 * (_softmax(e) @ f).reshape(c, h, w)


def _np(x):
    return x.detach().double().numpy()


def _scrm_by_hand(fs, ft):
    """SCRM (baselines doc §3) on numpy stage outputs: each map L2-normalised over channels
    (zero vectors stay zero), then the L1 of the spatially and of the channel-attended maps."""
    total = 0.0
    for a, b in zip(fs, ft, strict=True):
        na, nb = (np.linalg.norm(v, axis=1, keepdims=True) for v in (a, b))
        a = np.where(na > 1e-6, a / np.maximum(na, 1e-6), 0)
        b = np.where(nb > 1e-6, b / np.maximum(nb, 1e-6), 0)
        total += np.abs(np.stack([_spatial(v) for v in a]) - np.stack([_spatial(v) for v in b])
                        ).mean()
        total += np.abs(np.stack([_channel(v) for v in a]) - np.stack([_channel(v) for v in b])
                        ).mean()
    return total


def test_scrm_and_logit_l1_match_hand_computations():
    g = torch.Generator().manual_seed(1)
    fs = [torch.randn(3, 4, 3, 3, generator=g).relu(), torch.randn(3, 6, 2, 2, generator=g)]
    ft = [torch.randn(3, 4, 3, 3, generator=g).relu(), torch.randn(3, 6, 2, 2, generator=g)]
    fs[0][0, :, 1, 1] = 0.0                   # an all-zero channel vector, as quantized ReLUs give
    want = _scrm_by_hand([_np(f) for f in fs], [_np(f) for f in ft])
    assert losses.scrm(fs, ft).item() == pytest.approx(want, rel=1e-5)
    assert losses.scrm([f[None] for f in fs], [f[None] for f in ft], lead=1).shape == (1,)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    assert losses.logit_l1(s, t).item() == pytest.approx((s - t).abs().mean().item())
    # the zero vector gets a zero gradient here, 1e12 with ZAQ's F.normalize
    x = fs[0].clone().requires_grad_(True)
    losses.scrm([x], [ft[0]]).backward()
    assert x.grad[0, :, 1, 1].abs().max() == 0 and torch.isfinite(x.grad).all()
    y = fs[0].clone().requires_grad_(True)
    losses.scrm([y], [ft[0]], official_normalize=True).backward()
    assert y.grad[0, :, 1, 1].abs().max() > 1e6


def test_stage_taps_find_the_residual_stages():
    m = models.create("tiny_resnet").eval()
    assert stage_names(m) == ["layer1", "layer2"]
    out, feats = forward_with_taps(m, stage_names(m), torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10) and [f.shape[1] for f in feats] == [8, 16]
    with pytest.raises(ValueError, match="no residual stages"):
        stage_names(nn.Sequential(nn.Conv2d(3, 3, 1)))


# ---- the step --------------------------------------------------------------------------------
def test_zaq_runs_five_student_steps_per_generator_step_each_on_fresh_latents(teacher_file):
    t = Trial(cfg(teacher_file, "zaq"), CPU)
    samples, s_steps, g_steps = [], [], []
    real_sample = t.sample
    t.sample = lambda: samples.append(1) or real_sample()
    t.opt_s.step = lambda *a, real=t.opt_s.step: s_steps.append(1) or real(*a)
    t.opt_g.step = lambda *a, real=t.opt_g.step: g_steps.append(1) or real(*a)
    t.step(True, False)
    assert (len(g_steps), len(s_steps), len(samples)) == (1, 5, 6)
    t.step(False, True)                     # before the student trains: the generator only
    assert (len(g_steps), len(s_steps)) == (2, 5)
    out = t.step(True, False)
    assert out["loss_s"].item() == pytest.approx(out["loss_kd"].item() + out["loss_s_ce"].item(),
                                                 rel=1e-5)


def _generator_grads(t, detach_student):
    real = t._student
    if detach_student:
        t._student = lambda x: real(x.detach())
    step = t.opt_g.step
    t.opt_g.step = lambda *a: None           # keep the gradients, skip the update
    try:
        t.step(False, True)
    finally:
        t.opt_g.step, t._student = step, real
    return {k: v.grad.clone() for k, v in t._g.module.named_parameters() if v.grad is not None}


@pytest.mark.parametrize("method", ["adadfq", "zaq"])
def test_the_generator_gradient_passes_through_the_quantized_student(teacher_file, method):
    c = cfg(teacher_file, method, bns_weight=0.0)
    through = _generator_grads(Trial(c, CPU), detach_student=False)
    cut = _generator_grads(Trial(c, CPU), detach_student=True)
    diff = max((through[k] - cut.get(k, torch.zeros_like(through[k]))).abs().max()
               for k in through)
    assert diff > 1e-6


def test_adadfq_generator_loss_sees_undetached_student_logits(teacher_file):
    """The hidden break: detaching the student's logits in AdaDFQ's generator loss (the G
    gradient then misses the student path) must fail this test."""
    t = Trial(cfg(teacher_file, "adadfq"), CPU)
    real, seen = t._student, []

    def watched(x):
        s, feats = real(x)
        assert s.requires_grad
        s.register_hook(lambda g: seen.append(float(g.abs().sum())))
        return s, feats

    t._student = watched
    t.step(False, True)
    assert seen and seen[0] > 0


class Counting:
    """A student proxy that counts its forwards."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, *args):
        self.calls += 1
        return self.inner(*args)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_adadfq_student_loss_reuses_the_generator_steps_forward(teacher_file):
    t = Trial(cfg(teacher_file, "adadfq"), CPU)
    t._s = Counting(t._s)
    t.step(True, False)
    assert t._s.calls == 1                    # one student forward serves both losses
    g = Trial(cfg(teacher_file, "gdfq"), CPU)
    g._s = Counting(g._s)
    g.step(True, False)
    assert g._s.calls == 1                    # (GDFQ's one forward is the student step's)


@pytest.mark.parametrize("twice, forwards", [(False, 1), (True, 2)])
def test_adadfq_moves_the_ranges_once_a_warm_up_step_unless_told_twice(teacher_file, twice,
                                                                        forwards):
    # like every method here, one range update per step; AdaDFQ's code makes two (a switch)
    t = Trial(cfg(teacher_file, "adadfq", adadfq_calibrate_twice=twice), CPU)
    t.set_calibration(True)
    t._s = Counting(t._s)
    t.step(False, True)
    assert t._s.calls == forwards


@pytest.mark.parametrize("method", ["adadfq", "zaq"])
def test_a_pack_of_two_equals_the_two_lone_runs(teacher_file, method):
    cfgs = [cfg(teacher_file, method, seed=s) for s in (0, 1)]
    packed, alone = Trial(cfgs, CPU), [Trial(c, CPU) for c in cfgs]
    for step in range(3):
        train_student = step > 0
        out = packed.step(train_student, calibrate=not train_student)
        for j, a in enumerate(alone):
            for k, v in a.step(train_student, calibrate=not train_student).items():
                assert math.isclose(float(out[k][j]), float(v), rel_tol=1e-4, abs_tol=1e-6), \
                    (step, k)
    for j, a in enumerate(alone):
        got, want = packed.student.member_state(j), a._s.module.state_dict()
        for k in want:
            torch.testing.assert_close(got[k], want[k], atol=1e-3, rtol=1e-3, msg=k)


def test_zaq_student_train_mode_moves_its_bn_statistics_and_evaluates_in_eval_mode(teacher_file):
    t = Trial(cfg(teacher_file, "zaq", student_train_mode=True), CPU)
    bn = next(m for m in t._s.module.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    t.step(True, False)
    assert not torch.equal(before, bn.running_mean) and t._s.module.training
    from qimera_core import data
    acc = t.evaluate(data.load_eval(t.cfg))
    assert 0 <= acc[0]["top1"] <= 100 and t._s.module.training


# ---- config and bad input --------------------------------------------------------------------
def test_presets_and_refusals():
    a = build("cifar100-resnet20-4w4a", method="adadfq")
    assert (a.batch_size, a.bns_weight, a.kd_temperature, a.mix_prob, a.dm_layers) == \
        (16, 1.0, 20.0, 0.0, 0)
    r50 = build("imagenet-resnet50-4w4a", method="adadfq")
    assert (r50.lr_milestones, r50.warmup_epochs, r50.adadfq_alpha_ds, r50.adadfq_lambda_l,
            r50.kd_temperature) == ((200, 300, 400), 50, 0.1, 0.3, 5.0)
    z = build("cifar10-resnet20-4w4a", method="zaq")
    assert (z.latent_input, z.epochs, z.steps_per_epoch, z.batch_size, z.warmup_epochs,
            z.lr_generator, z.adam_beta1) == ("unconditional", 300, 60, 256, 4, 1e-3, 0.9)
    assert build("digits-2w2a", method="zaq").epochs == 14        # the offline schedule stays
    with pytest.raises(ValueError, match=r"unconditional generator .*mix_prob"):
        build("digits-2w2a", method="zaq", mix_prob=0.4)
    with pytest.raises(ValueError, match=r"emb_init"):
        build("digits-2w2a", method="zaq", emb_init="extracted")
    with pytest.raises(ValueError, match=r"adadfq's options"):
        build("digits-2w2a", adadfq_lambda_l=0.3)
    with pytest.raises(ValueError, match=r"zaq's options"):
        build("digits-2w2a", method="gdfq", student_train_mode=True)
    with pytest.raises(ValueError, match=r"batch_size >= 2"):
        build("digits-2w2a", method="adadfq", batch_size=1)
    with pytest.raises(ValueError, match=r"lambda_l <= lambda_u"):
        build("digits-2w2a", method="adadfq", adadfq_lambda_l=0.9, adadfq_lambda_u=0.5)


def test_two_methods_do_not_share_a_pack(teacher_file):
    from qimera_core import pack
    with pytest.raises(ValueError, match=r"differ in \['.*method"):
        pack.check_packable([cfg(teacher_file, "adadfq"), cfg(teacher_file, "gdfq")])


@pytest.mark.parametrize("method", ["adadfq", "zaq"])
def test_a_short_run_trains_resumes_and_loads_back(teacher_file, tmp_path, method):
    from qimera_core import checkpoint
    from qimera_core.train import train
    c = cfg(teacher_file, method, epochs=2, steps_per_epoch=2)
    seen = []
    final = train(c, tmp_path, report=lambda m, checkpoint_dir=None: seen.append(m))
    assert final["status"] == "ok" and [m["epoch"] for m in seen] == [1, 2]
    assert math.isfinite(final["loss_g"]) and math.isfinite(final["loss_s"])
    assert not math.isnan(final["start_top1"])            # the warm-up's end was measured
    t = checkpoint.load_trained(tmp_path / "checkpoint")
    assert t.cfg.method == method and t.generator is not None
    assert not any(k.startswith("model.") for k in t.student.state_dict())


# ---- each method's losses at step 0, by hand from the facts file (baselines doc §3-4) --------
def _bns_by_hand(teacher, x):
    """GDFQ's L_BNS (method doc §4.1): per BN layer, the MSE of the batch mean and of the biased
    batch variance of its input against its running statistics, averaged over the layers."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, _np(i[0]))))
             for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        teacher(x)
    for h in hooks:
        h.remove()
    terms = [((a.mean((0, 2, 3)) - _np(m.running_mean)) ** 2).mean()
             + ((a.var((0, 2, 3)) - _np(m.running_var)) ** 2).mean() for m, a in seen]
    return float(np.mean(terms))


def _teacher_by_hand(teacher, x):
    """The teacher's logits and its residual stages' outputs on x, with plain hooks."""
    feats = []
    hooks = [dict(teacher.named_modules())[n].register_forward_hook(
        lambda m, i, o: feats.append(_np(o))) for n in stage_names(teacher)]
    with torch.no_grad():
        t = _np(teacher(x))
    for h in hooks:
        h.remove()
    return t, feats


def _recording(t):
    """Record what a Trial's step samples and shows the student; returns the two lists."""
    lats, xs = [], []
    sample, student = t.sample, t._student
    t.sample = lambda: lats.append(sample()) or lats[-1]
    t._student = lambda x: xs.append(x.detach().clone()) or student(x)
    return lats, xs


def _student_copy(t):
    s = copy.deepcopy(t._s)

    def run(x):
        with torch.no_grad():
            out = s(x)
        return out if t.stages else (out, ())
    return run


def test_adadfq_losses_at_step_0_equal_the_facts_files_formulas(teacher_file):
    """L_G = L_margin + beta (a_ds CE(t - s, y) + a_as CE(t + s, y)) + gamma L_BNS and
    L_S = -T^2 mean entropy(softmax((t - s) / T)), each phase's first step, by hand."""
    c = cfg(teacher_file, "adadfq", adadfq_lambda_l=0.3, adadfq_lambda_u=0.6)
    t = Trial(c, CPU)
    for train_student, calibrate in ((False, True), (True, False)):
        t.set_calibration(calibrate)
        student = _student_copy(t)
        lats, xs = _recording(t)
        out = t.step(train_student, calibrate)
        x, y = xs[0], _np(lats[0].targets[0])
        te, _ = _teacher_by_hand(t.teacher, x[0])
        s = _np(student(x)[0][0])
        d = te - s
        h = _entropy(d)
        hn = (h - h.min()) / (math.log(d.shape[1]) - h.min())
        margin = np.maximum(c.adadfq_lambda_l - hn, 0).mean() \
            + np.maximum(hn - c.adadfq_lambda_u, 0).mean()
        ce_ds, ce_as = (-(y * np.log(_softmax(z))).sum(-1).mean() for z in (d, te + s))
        want = margin + c.adadfq_beta * (c.adadfq_alpha_ds * ce_ds + c.adadfq_alpha_as * ce_as) \
            + c.bns_weight * _bns_by_hand(t.teacher, x[0])
        assert out["loss_g"].item() == pytest.approx(want, rel=1e-4), (train_student, calibrate)
        if train_student:
            T = c.kd_temperature
            assert out["loss_s"].item() == pytest.approx(-T**2 * _entropy(d / T).mean(), rel=1e-4)


def test_zaq_losses_at_step_0_equal_the_facts_files_formulas(teacher_file):
    """L_G = -L1(s, t) - alpha SCRM - beta mean|last stage of P| on the generator's batch, and
    L_Q = L1(s, t) + alpha SCRM on the student step's own fresh batch, by hand."""
    c = cfg(teacher_file, "zaq", zaq_student_steps=1, zaq_alpha=0.7, zaq_beta=0.3)
    t = Trial(c, CPU)
    t.set_calibration(True)
    t.step(False, True)                     # the warm-up's first step sets the ranges
    t.set_calibration(False)
    student = _student_copy(t)
    _, xs = _recording(t)
    out = t.step(True, False)
    assert len(xs) == 2                     # the generator step's batch, the student step's
    losses_by_hand = []
    for x in xs:
        te, t_feats = _teacher_by_hand(t.teacher, x[0])
        s, s_feats = student(x)
        s, s_feats = _np(s[0]), [_np(f[0]) for f in s_feats]
        disc = np.abs(s - te).mean() + c.zaq_alpha * _scrm_by_hand(s_feats, t_feats)
        losses_by_hand.append((disc, np.abs(t_feats[-1]).mean()))
    (disc_g, magnitude), (disc_s, _) = losses_by_hand
    assert out["loss_g"].item() == pytest.approx(-disc_g - c.zaq_beta * magnitude, rel=1e-4)
    assert out["loss_s"].item() == pytest.approx(disc_s, rel=1e-4)
