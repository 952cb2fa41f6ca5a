"""The post-training path (ZeroQ, DSG): the synthesis losses against hand computations, DSG's
slacks and enhancement weights, the min/max-from-0 range rule, packs, resume and bad input."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from qimera_core import checkpoint, quant, synth
from qimera_core.config import build
from qimera_core.fakequant import QuantAct
from qimera_core.train import train, train_pack

TIMING = {"wall_time_s", "step_time_s"}


def tiny(method="zeroq", **kw):
    base = dict(teacher="tiny_resnet", teacher_weights="random", eval_data="synthetic",
                device="cpu", num_threads=1, synth_iters=6, batch_size=6, method=method)
    base.update(kw)
    return build(**base)


def two_layer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    for bn in (net[1], net[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return net.eval()


def _stats(a):
    """Per-sample, per-channel mean and sqrt(unbiased var + 1e-6), by numpy."""
    flat = a.reshape(a.shape[0], a.shape[1], -1)
    return flat.mean(2), np.sqrt(flat.var(2, ddof=1) + 1e-6)


def hand_loss(net, x, delta=None, gamma=None, weights=None):
    """The facts file's formula, written out with numpy on the conv outputs."""
    xs = x.double().numpy()
    with torch.no_grad():
        c1 = net[0](x)
        c2 = net[3](net[2](net[1](c1)))
    b = x.shape[0]
    total = 0.0
    for i in range(b):
        mu, sd = _stats(xs)
        term = (mu[i] ** 2).sum() + ((sd[i] - 1.0) ** 2).sum()           # the input term
        for li, (out, bn) in enumerate(((c1, net[1]), (c2, net[4]))):
            mu, sd = _stats(out.double().numpy())
            gm = np.abs(mu[i] - bn.running_mean.double().numpy())
            gs = np.abs(sd[i] - np.sqrt(bn.running_var.double().numpy() + 1e-6))
            if delta is not None:
                gm, gs = np.maximum(gm - delta[li], 0), np.maximum(gs - gamma[li], 0)
            w = 1.0 if weights is None else weights[i][li]
            term += w * ((gm ** 2).sum() + (gs ** 2).sum())
        total += term
    return total / b


def _synth(cfg, net):
    s = synth.Synthesizer.__new__(synth.Synthesizer)
    s.cfgs, s.cfg, s.device, s.shape = [cfg], cfg, torch.device("cpu"), (3, 5, 5)
    s.bn = synth.PerSampleBNStats(net)
    s.slacks, s.weights = None, None
    return s


def test_zeroq_loss_matches_a_hand_computation_on_a_two_layer_net():
    net = two_layer()
    x = torch.randn(3, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    s = _synth(tiny(channels_last=False), net)
    got = s.loss(x[None]).item()
    assert got == pytest.approx(hand_loss(net, x), rel=1e-5)


def test_dsg_slacks_enhancement_and_loss_match_hand_computations():
    net = two_layer()
    bn = synth.PerSampleBNStats(net)
    sl = synth.dsg_slacks(bn, (3, 5, 5), samples=40, eps=0.9, device=torch.device("cpu"),
                          batch=16)
    g = torch.Generator().manual_seed(synth.SLACK_SEED)
    xs = torch.cat([torch.randn(n, 3, 5, 5, generator=g) for n in (16, 16, 8)])
    with torch.no_grad():
        c1 = net[0](xs)
        c2 = net[3](net[2](net[1](c1)))
    for li, (out, b) in enumerate(((c1, net[1]), (c2, net[4]))):
        mu, sd = _stats(out.double().numpy())
        gm = np.abs(mu - b.running_mean.double().numpy()).ravel()
        gs = np.abs(sd - np.sqrt(b.running_var.double().numpy() + 1e-6)).ravel()
        assert sl.delta[li].item() == pytest.approx(np.quantile(gm, 0.9), rel=1e-5)
        assert sl.gamma[li].item() == pytest.approx(np.quantile(gs, 0.9), rel=1e-5)
    w = synth.enhancement_weights(2, 2)
    assert torch.equal(w, torch.eye(2) + torch.ones(2, 2))               # I + 11^T at B = L
    assert synth.enhancement_weights(5, 2)[:, 0].tolist() == [2, 1, 2, 1, 2]
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(3))
    s = _synth(tiny("dsg", channels_last=False, batch_size=2), net)
    half = synth.Slacks(sl.delta / 4, sl.gamma / 4)                      # some gaps stay
    s.slacks, s.weights = half, w
    want = hand_loss(net, x, half.delta.numpy(), half.gamma.numpy(), w.numpy())
    assert s.loss(x[None]).item() == pytest.approx(want, rel=1e-5)
    assert want < hand_loss(net, x, weights=w.numpy())                   # the slack relaxes


def test_minmax_range_is_the_running_min_and_max_from_zero():
    q = QuantAct(nn.Identity(), 4, mode="minmax")
    q.calibrating = True
    for lo, hi in ((0.5, 2.0), (-1.0, 1.0), (0.2, 3.0)):
        q(torch.tensor([lo, hi]))
    assert (q.lo.item(), q.hi.item()) == (-1.0, 3.0)
    p = QuantAct(nn.ReLU(), 4, mode="minmax")
    p.calibrating = True
    p(torch.tensor([0.5, 2.0]))          # all positive: the range still starts at 0
    assert (p.lo.item(), p.hi.item()) == (0.0, 2.0)


def test_both_inits_follow_their_rule():
    u = synth.init_images(tiny(synth_init="uniform"), (3, 8, 8), 0)
    assert u.abs().max() <= 127.5 / 5418.75 + 1e-7 and 0.01 < u.std() < 0.02
    n = synth.init_images(tiny(), (3, 8, 8), 0)
    assert 0.8 < n.std() < 1.2
    assert torch.equal(n, synth.init_images(tiny(), (3, 8, 8), 0))
    assert not torch.equal(n, synth.init_images(tiny(), (3, 8, 8), 1))   # batches differ
    assert not torch.equal(n, synth.init_images(tiny(seed=1), (3, 8, 8), 0))


@pytest.mark.parametrize("method", ["zeroq", "dsg"])
def test_a_packed_synthesis_equals_the_lone_ones(method):
    from qimera_core.builders import build_networks
    cfgs = [tiny(method, seed=s) for s in (0, 1)]
    teacher, _ = build_networks(cfgs[0], torch.device("cpu"))
    shape = (3, 16, 16)
    both, loss2 = synth.Synthesizer(cfgs, teacher, shape, torch.device("cpu")).batch(0)
    for i, c in enumerate(cfgs):
        one, loss1 = synth.Synthesizer([c], teacher, shape, torch.device("cpu")).batch(0)
        torch.testing.assert_close(both[i], one[0], rtol=1e-4, atol=1e-5)
        assert loss2[i] == pytest.approx(loss1[0], rel=1e-4)
    start = synth.init_images(cfgs[0], shape, 0)
    assert not torch.allclose(both[0], start)                  # the pixels did move


def collect():
    seen = []
    return seen, lambda m, checkpoint_dir=None: seen.append(dict(m))


def test_ptq_run_reports_the_calibrated_model_as_epoch_zero(digits_cache, tmp_path):
    cfg = build("digits-smoke", method="zeroq", cache_dir=str(digits_cache), synth_iters=40)
    seen, report = collect()
    final = train(cfg, tmp_path, report=report)
    assert [m["epoch"] for m in seen] == [0]
    assert final["status"] == "ok" and final["top1"] == final["start_top1"]
    assert final["teacher_top1"] > 90 and 0 < final["top1"] < final["teacher_top1"]
    assert math.isfinite(final["loss_bns"]) and math.isnan(final["loss_kd"])
    assert list(tmp_path.iterdir()) == [tmp_path / "checkpoint"]


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill", ["synthesis", "fine-tuning"])
def test_ptq_with_fine_tuning_resumes_after_a_kill_to_the_same_result(digits_cache, tmp_path,
                                                                      monkeypatch, kill):
    cfg = build("digits-smoke", method="dsg", cache_dir=str(digits_cache), synth_iters=15,
                synth_batches=2, epochs=3, steps_per_epoch=4, dsg_eps=0.5)
    clean_seen, clean_report = collect()
    clean = train(cfg, tmp_path / "clean", report=clean_report)
    assert [m["epoch"] for m in clean_seen] == [0, 1, 2, 3]
    assert clean["start_top1"] == clean_seen[0]["top1"]
    assert clean["top1"] != clean["start_top1"]                       # fine-tuning moved it
    if kill == "synthesis":
        real = synth.Synthesizer.batch

        def second_batch_dies(self, k):
            if k == 1:
                raise Killed
            return real(self, k)

        monkeypatch.setattr(synth.Synthesizer, "batch", second_batch_dies)
        with pytest.raises(Killed):
            train(cfg, tmp_path / "killed", report=lambda m, checkpoint_dir=None: None)
        monkeypatch.undo()
        assert checkpoint.load(tmp_path / "killed" / "checkpoint")["stage"] == "synth"
    else:
        def die_after_epoch_one(m, checkpoint_dir=None):
            if m["epoch"] == 1:
                raise Killed

        with pytest.raises(Killed):
            train(cfg, tmp_path / "killed", report=die_after_epoch_one)
    seen, report = collect()
    resumed = train(cfg, tmp_path / "killed", report=report,
                    resume_from=tmp_path / "killed" / "checkpoint")
    assert [m["epoch"] for m in seen] == ([0, 1, 2, 3] if kill == "synthesis" else [2, 3])
    for k in set(clean) - TIMING:
        assert clean[k] == resumed[k] or (math.isnan(clean[k]) and math.isnan(resumed[k])), k
    a = checkpoint.load(tmp_path / "clean" / "checkpoint")
    b = checkpoint.load(tmp_path / "killed" / "checkpoint")
    assert torch.equal(a["images"], b["images"])
    for name, t in a["student"].items():
        assert torch.equal(t, b["student"][name]), name


def test_a_ptq_pack_equals_its_lone_runs(digits_cache, tmp_path):
    cfgs = [build("digits-smoke", method="zeroq", cache_dir=str(digits_cache), synth_iters=10,
                  epochs=1, steps_per_epoch=3, seed=s) for s in (0, 1)]
    packed = train_pack(cfgs, tmp_path / "pack", report=lambda m, checkpoint_dir=None: None)
    for i, c in enumerate(cfgs):
        lone = train(c, tmp_path / f"lone{i}", report=lambda m, checkpoint_dir=None: None)
        assert packed[i]["start_top1"] == pytest.approx(lone["start_top1"], abs=0.5)
        assert packed[i]["loss_bns"] == pytest.approx(lone["loss_bns"], rel=1e-3)
        assert packed[i]["loss_kd"] == pytest.approx(lone["loss_kd"], rel=1e-2)
    state = checkpoint.load(tmp_path / "pack" / "checkpoint")
    assert state["stacked"] and state["images"].shape[:2] == (2, 1)


def test_the_trained_model_loads_back_without_a_generator(digits_cache, tmp_path):
    cfg = build("digits-smoke", method="zeroq", cache_dir=str(digits_cache), synth_iters=5)
    train(cfg, tmp_path, report=lambda m, checkpoint_dir=None: None)
    t = checkpoint.load_trained(tmp_path / "checkpoint")
    assert t.generator is None and t.cfg.method == "zeroq"
    assert any(isinstance(m, QuantAct) and m.hi > 0 for m in t.student.modules())


# ---- bad input, one line before any work ---------------------------------------------------
def test_a_ptq_method_refuses_generator_options_and_the_reverse():
    with pytest.raises(ValueError, match=r"post-training .*mix_prob.*drop them"):
        build("digits-2w2a", method="zeroq", mix_prob=0.4)
    with pytest.raises(ValueError, match=r"dm_layers"):
        build("digits-2w2a", method="dsg", dm_layers=2)
    with pytest.raises(ValueError, match=r"trains a generator.*synth_iters.*'zeroq' or 'dsg'"):
        build("digits-2w2a", synth_iters=10)
    with pytest.raises(ValueError, match="dsg_eps"):
        build("digits-2w2a", method="gdfq", dsg_eps=0.5)
    cfg = build("cifar100-resnet20-4w4a", method="zeroq")
    assert (cfg.mix_prob, cfg.dm_layers, cfg.mix_classes, cfg.epochs, cfg.batch_size,
            cfg.act_range_mode) == (0.0, 0, 2, 0, 64, "minmax")
    assert build("cifar10-resnet20-4w4a", method="dsg").batch_size == 21   # its BN layers
    assert build("digits-2w2a", method="dsg", batch_size=8).batch_size == 8


def test_the_synthesis_memory_estimate_refuses_before_any_work():
    from qimera_core.builders import build_networks
    cfg = tiny(batch_size=64)
    teacher, _ = build_networks(cfg, torch.device("cpu"))
    need = synth.check_memory([cfg], teacher, (3, 16, 16), torch.device("cpu"), free=2**40)
    assert need > 0
    assert synth.check_memory([cfg, cfg], teacher, (3, 16, 16), torch.device("cpu"),
                              free=2**40) == 2 * need
    with pytest.raises(ValueError, match=r"batch of 64 images .* lower --batch-size"):
        synth.check_memory([cfg], teacher, (3, 16, 16), torch.device("cpu"), free=need - 1)


def test_dsg_and_zeroq_refuse_a_teacher_without_bn(monkeypatch):
    with pytest.raises(ValueError, match="no BatchNorm2d"):
        synth.PerSampleBNStats(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()))
    from qimera_core import teachers
    monkeypatch.setattr(teachers, "create", lambda name: nn.Sequential(nn.Conv2d(3, 3, 1)))
    with pytest.raises(ValueError, match="no BatchNorm2d layer: ZeroQ and DSG"):
        build("digits-2w2a", method="dsg")


def test_calibration_freezes_each_members_ranges():
    # the min/max rule through quantize(): a student calibrated on one batch keeps its ranges
    net = two_layer()
    q = quant.quantize(net, w_bits=4, a_bits=4, act_mode="minmax")
    quant.set_calibration(q, True)
    with torch.no_grad():
        q(torch.randn(4, 3, 5, 5))
    quant.set_calibration(q, False)
    before = [(a.lo.item(), a.hi.item()) for a in quant.act_quantizers(q)]
    with torch.no_grad():
        q(torch.randn(4, 3, 5, 5) * 10)
    assert [(a.lo.item(), a.hi.item()) for a in quant.act_quantizers(q)] == before
    assert all(lo == 0.0 and hi > 0 for lo, hi in before)
