"""Packs: N runs trained as one equal N runs trained alone (qimera_core.pack, train_pack)."""

import math

import pytest
import torch

from qimera_core import checkpoint, models, pack
from qimera_core.config import build
from qimera_core.step import Trial
from qimera_core.train import train, train_pack

CPU = torch.device("cpu")
# Conv biases that feed a train-mode BatchNorm: their true gradient is exactly zero, so what
# autograd computes is rounding noise, which Adam's first step turns into +-lr either way.
PRE_BN_BIASES = {"fc.bias", "conv1.bias", "conv2.bias"}


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A tiny teacher saved to a file: unlike teacher_weights='random', it does not depend on
    the seed, so members of different seeds can share it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "tiny.pt"
    teacher = models.create("tiny_resnet")
    # Generic BN statistics and affine, as a trained net has. With the init's identity BNs
    # every activation lies on the lattice spanned by the previous layer's quantization grid,
    # so values tie exactly with rounding boundaries and a 1e-15 difference flips a level.
    for bn in (m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        for t, lo, hi in ((bn.running_mean, -0.5, 0.5), (bn.running_var, 0.5, 2.0),
                          (bn.weight.data, 0.5, 1.5), (bn.bias.data, -0.5, 0.5)):
            t.uniform_(lo, hi)
    torch.save(teacher.state_dict(), path)
    return str(path)


def cfg(teacher_file, **kw):
    base = dict(teacher="tiny_resnet", teacher_weights=teacher_file, eval_data="synthetic",
                epochs=3, steps_per_epoch=3, batch_size=8, warmup_epochs=1, act_range_epochs=1,
                lr_student=0.05, lr_milestones=(2,), device="cpu", num_threads=1)
    return build(**{**base, **kw})


def members(teacher_file, **kw):
    """Three runs that differ in p, K, sigma, seed, mixing mode and frozen embeddings."""
    return [cfg(teacher_file, seed=0, mix_prob=0.0, **kw),
            cfg(teacher_file, seed=1, mix_prob=1.0, mix_classes=3, noise_sigma=0.5, **kw),
            cfg(teacher_file, seed=2, mix_prob=0.6, mix_classes=2, mix_mode="sample",
                freeze_embeddings=True, noise_sigma=1.5, **kw)]


def assert_member_equals_alone(packed, j, alone, tol):
    got, want = packed.student.member_state(j), alone.student.state_dict()
    assert set(got) == set(want)
    for k in want:       # weights, BN affine and the activation ranges (lo, hi, beta_t)
        torch.testing.assert_close(got[k].to(want[k].dtype), want[k], atol=tol, rtol=tol,
                                   msg=f"student {k}")
    got, want = packed.generator.member_state(j), alone.generator.state_dict()
    for k in set(want) - PRE_BN_BIASES:
        torch.testing.assert_close(got[k].to(want[k].dtype), want[k], atol=tol, rtol=tol,
                                   msg=f"generator {k}")


@pytest.mark.parametrize("train_student,calibrate", [(False, True), (True, False)])
def test_one_packed_step_equals_each_member_alone_float64(teacher_file, train_student,
                                                          calibrate):
    cfgs = members(teacher_file)
    torch.set_default_dtype(torch.float64)
    try:
        packed, alone = Trial(cfgs, CPU), [Trial(c, CPU) for c in cfgs]
        for t in (packed, *alone):
            t.set_calibration(calibrate)
        out = packed.step(train_student, calibrate)
        outs = [a.step(train_student, calibrate) for a in alone]
    finally:
        torch.set_default_dtype(torch.float32)
    assert set(out) == set(outs[0])
    for j, a in enumerate(alone):
        for k, v in outs[j].items():
            assert v.dim() == 0 and out[k].shape == (3,)
            assert math.isclose(float(out[k][j]), float(v), rel_tol=1e-12, abs_tol=1e-12), k
        # measured: <= 1e-12 on weights; the Adam-normalised first step moves parameters by
        # lr * g / |g|, so this is a bound on how far the gradients themselves differ
        assert_member_equals_alone(packed, j, a, tol=1e-9)


def test_three_packed_steps_match_alone_float32(teacher_file):
    cfgs = members(teacher_file)
    packed, alone = Trial(cfgs, CPU), [Trial(c, CPU) for c in cfgs]
    for step in range(3):
        train_student = step > 0
        out = packed.step(train_student, calibrate=not train_student)
        for j, a in enumerate(alone):
            for k, v in a.step(train_student, calibrate=not train_student).items():
                # measured on a 2-core x86 CPU: <= 2e-5 relative (weights: <= 5e-4)
                assert math.isclose(float(out[k][j]), float(v), rel_tol=1e-4), (step, k)
    for j, a in enumerate(alone):
        assert_member_equals_alone(packed, j, a, tol=1e-3)


def test_each_member_generates_the_images_it_generates_alone(teacher_file):
    cfgs = members(teacher_file)
    packed, alone = Trial(cfgs, CPU), [Trial(c, CPU) for c in cfgs]
    lat = packed.sample()
    images = packed.generator(lat.labels, lat.weights, lat.noise, lat.mixed)
    assert lat.labels.shape[:2] == (3, 8) and lat.labels.shape[2] == 3   # K padded to 3
    for j, a in enumerate(alone):
        mine = a.sample()                                  # a pack of one: leading dim 1
        assert torch.equal(mine.labels[0], lat.labels[j, :, :mine.labels.shape[2]])
        alone_images = a.generator(mine.labels[0], mine.weights[0], mine.noise[0], mine.mixed[0])
        torch.testing.assert_close(images[j], alone_images, atol=1e-5, rtol=1e-5)


def test_a_member_that_diverges_is_dropped_and_the_others_finish(teacher_file, tmp_path):
    good = members(teacher_file)[:2]
    bad = cfg(teacher_file, seed=5, mix_prob=0.4, noise_sigma=math.inf)   # NaN latents
    seen = []
    finals = train_pack([good[0], bad, good[1]], tmp_path,
                        report=lambda m, checkpoint_dir=None: seen.append(m))
    assert [f["status"] for f in finals] == ["ok", "diverged", "ok"]
    assert finals[1]["diverged"] == 1 and finals[1]["epoch"] == 1
    assert all(math.isfinite(f["top1"]) for f in (finals[0], finals[2]))
    assert [m["live"] for m in seen] == [2, 2, 2] and len(seen) == 3
    assert all(m["members"][1]["diverged"] == 1 for m in seen)
    # the survivors are the runs they would be alone (float32: close, not equal)
    for c, f in zip(good, (finals[0], finals[2]), strict=True):
        solo = train(c, tmp_path / f"solo{c.seed}")
        assert math.isclose(f["loss_g"], solo["loss_g"], rel_tol=1e-3)
        assert abs(f["top1"] - solo["top1"]) <= 100 / 64 + 1e-9   # at most one test image


class Killed(Exception):
    pass


def test_resume_from_a_mid_run_pack_checkpoint_is_bit_exact(teacher_file, tmp_path):
    cfgs = [*members(teacher_file)[:2], cfg(teacher_file, seed=9, noise_sigma=math.inf)]
    clean = train_pack(cfgs, tmp_path / "clean")

    def die_after_two(m, checkpoint_dir=None):
        if m["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        train_pack(cfgs, tmp_path / "killed", report=die_after_two)
    resumed = train_pack(cfgs, tmp_path / "killed",
                         resume_from=tmp_path / "killed" / "checkpoint")
    timing = {"wall_time_s", "step_time_s"}
    for r, c in zip(resumed, clean, strict=True):
        assert r.keys() == c.keys()
        for k in set(r) - timing:
            assert r[k] == c[k] or (math.isnan(r[k]) and math.isnan(c[k])), k
    assert resumed[2]["status"] == "diverged" and math.isnan(resumed[2]["loss_s"])
    a = checkpoint.load(tmp_path / "clean" / "checkpoint")
    b = checkpoint.load(tmp_path / "killed" / "checkpoint")
    for key in ("student", "generator"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)


def test_load_trained_picks_a_member(teacher_file, tmp_path):
    cfgs = members(teacher_file, epochs=1)
    train_pack(cfgs, tmp_path)
    state = checkpoint.load(tmp_path / "checkpoint")
    one = checkpoint.load_trained(tmp_path / "checkpoint", member=2)
    assert one.cfg.seed == 2 and one.cfg.freeze_embeddings
    torch.testing.assert_close(one.generator.embeddings, state["generator"]["embeddings"][2])
    assert torch.equal(one.generator.embeddings, models.classifier_weight(one.teacher))  # frozen


def test_packable_configs_and_grouping(teacher_file):
    a, b, c = members(teacher_file)
    pack.check_packable([a, b, c])
    with pytest.raises(ValueError, match="differ in .*w_bits"):
        pack.check_packable([a, cfg(teacher_file, w_bits=3)])
    with pytest.raises(ValueError, match="same config twice"):
        pack.check_packable([a, a])
    rand = [cfg("random", seed=s) for s in (0, 1)]        # a seeded random teacher: no sharing
    with pytest.raises(ValueError, match="seed"):
        pack.check_packable(rand)
    other = cfg(teacher_file, dm_layers=2, seed=7)
    # b superposes K=3, a and c K=2 and 2: equal K share a pack
    assert pack.group([a, other, b, c], 2) == [[a, c], [b], [other]]
