"""Quantizer numerics pinned exactly against a hand-computed quantize -> dequantize."""

import pytest
import torch
from torch import nn

from qimera_core import models, quant


def hand_quant(x, lo, hi, bits):
    """The documented grid, written out with plain float32 arithmetic."""
    scale = torch.clamp(hi - lo, min=1e-8) / (2**bits - 1)
    inv = 1.0 / scale
    zp = -torch.round(lo * inv)
    q = torch.round(x * inv) + zp
    q = torch.minimum(torch.maximum(q, torch.zeros_like(q)), torch.full_like(q, 2**bits - 1))
    return (q - zp) * scale


@pytest.mark.parametrize("bits", range(2, 9))
def test_weight_quant_exact_per_channel(bits):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(8, 3, 3, 3, generator=g)
    lo = w.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = w.flatten(1).max(1).values.view(-1, 1, 1, 1)
    got = quant.quantize_weight(w, bits)
    torch.testing.assert_close(got, hand_quant(w, lo, hi, bits), atol=0, rtol=0)


@pytest.mark.parametrize("bits", range(2, 9))
def test_weight_grid_has_exactly_2_to_the_bits_even_levels_spanning_the_range(bits):
    # Dense ramps, so that every level of the grid is hit: a grid with one level too few or
    # too many, uneven steps or a range that is not covered fails here.
    lo = torch.tensor([-1.3, -0.2, 0.1])
    hi = torch.tensor([0.7, 2.9, 0.35])
    w = torch.stack([torch.linspace(a, b, 4096) for a, b in zip(lo, hi, strict=True)])   # (3, 4096)
    got = quant.quantize_weight(w, bits)
    for c in range(3):
        levels = got[c].unique()
        step = float(hi[c] - lo[c]) / (2**bits - 1)
        assert levels.numel() == 2**bits
        torch.testing.assert_close(levels.diff(), torch.full((2**bits - 1,), step),
                                   rtol=0, atol=1e-5)
        assert abs(levels[0] - lo[c]) <= step / 2 + 1e-6      # zero-point rounding: <= 1/2 step
        assert abs(levels[-1] - hi[c]) <= step / 2 + 1e-6


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6])
def test_act_quant_exact_frozen(bits, act):
    g = torch.Generator().manual_seed(100 + bits)
    x = torch.randn(4, 5, 6, 6, generator=g) * 3
    q = quant.QuantAct(act(), bits)
    q.lo.fill_(0.0)
    q.hi.fill_(2.5)
    quant.set_calibration(nn.Sequential(q), False)
    ref = hand_quant(act()(x), torch.tensor(0.0), torch.tensor(2.5), bits)
    torch.testing.assert_close(q(x), ref, atol=0, rtol=0)


def test_act_quant_nonzero_lower_bound_unfused():
    x = torch.rand(3, 4, 5, 5) * 4
    q = quant.QuantAct(nn.ReLU(), 3)
    q.lo.fill_(0.7)
    q.hi.fill_(3.1)
    quant.set_calibration(nn.Sequential(q), False)
    ref = hand_quant(torch.relu(x), torch.tensor(0.7), torch.tensor(3.1), 3)
    torch.testing.assert_close(q(x), ref, atol=0, rtol=0)


def test_official_range_recurrence():
    """m_t = (b m_{t-1} + (1-b) min) / (1 - b^t), the stored value divided every step."""
    q = quant.QuantAct(nn.ReLU(), 4, mode="official", beta=0.9)
    q.calibrating = True
    lo = hi = 0.0
    beta_t = 1.0
    for t in range(5):
        x = torch.rand(2, 3, 4, 4) * (t + 1)
        q(x)
        beta_t *= 0.9
        y = torch.relu(x)
        lo = (0.9 * lo + 0.1 * y.min().item()) / (1 - beta_t)
        hi = (0.9 * hi + 0.1 * y.max().item()) / (1 - beta_t)
        assert q.lo.item() == pytest.approx(lo, rel=1e-5)
        assert q.hi.item() == pytest.approx(hi, rel=1e-5)


def test_plain_ema_mode():
    q = quant.QuantAct(nn.ReLU(), 4, mode="ema", beta=0.9)
    q.calibrating = True
    q(torch.full((1, 1, 2, 2), 2.0))
    assert q.hi.item() == pytest.approx(2.0)
    q(torch.full((1, 1, 2, 2), 4.0))
    assert q.hi.item() == pytest.approx(0.9 * 2 + 0.1 * 4)


def test_frozen_ranges_stop_moving():
    q = quant.QuantAct(nn.ReLU(), 4)
    q.calibrating = True
    q(torch.rand(2, 2, 3, 3))
    quant.set_calibration(nn.Sequential(q), False)
    before = (q.lo.clone(), q.hi.clone())
    q(torch.rand(2, 2, 3, 3) * 100)
    assert torch.equal(q.lo, before[0]) and torch.equal(q.hi, before[1])


def test_ste_passes_gradient_unmasked():
    """Plain STE: values clipped above the range still get gradient 1; the ReLU masks x <= 0."""
    q = quant.QuantAct(nn.ReLU(), 2)
    q.hi.fill_(1.0)
    quant.set_calibration(nn.Sequential(q), False)
    x = torch.tensor([-1.0, 0.3, 5.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0]
    w = torch.randn(4, 3, requires_grad=True)
    quant.quantize_weight(w, 2).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_quantize_replaces_every_conv_linear_and_relu():
    model = models.create("tiny_resnet")
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    n_lin = sum(isinstance(m, nn.Linear) for m in model.modules())
    n_relu = sum(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in model.modules())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    keys = set(model.state_dict())
    quant.quantize(model, w_bits=4, a_bits=4)
    assert sum(isinstance(m, quant.QuantConv2d) for m in model.modules()) == n_conv
    assert sum(isinstance(m, quant.QuantLinear) for m in model.modules()) == n_lin
    assert len(quant.act_quantizers(model)) == n_relu > 0
    assert sum(type(m) is nn.BatchNorm2d for m in model.modules()) == n_bn  # BN stays, unfolded
    assert keys <= set(model.state_dict())      # teacher weights still load into the student


def test_pytorchcv_resnet20_layer_counts():
    """Method doc §2.6: ResNet-20 has 21 conv + 1 FC quantized layers and 19 act quantizers."""
    model = models.create("resnet20_cifar10")
    quant.quantize(model, w_bits=4, a_bits=4)
    assert sum(isinstance(m, quant.QuantConv2d) for m in model.modules()) == 21
    assert sum(isinstance(m, quant.QuantLinear) for m in model.modules()) == 1
    assert len(quant.act_quantizers(model)) == 19
    quant.audit_activations(model, torch.zeros(1, 3, 32, 32))


class FunctionalRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


class SharedRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


class UntraceableSharedRelu(SharedRelu):
    def forward(self, x):
        x = self.relu(self.conv1(x))
        if x.sum() > 0:                 # data-dependent branch: torch.fx cannot trace it
            x = self.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("cls,needle", [(UntraceableSharedRelu, "could not trace")])
def test_activations_that_would_escape_are_refused(cls, needle):
    model = quant.quantize(cls(), w_bits=4, a_bits=4)
    with pytest.raises(ValueError, match=needle):
        quant.audit_activations(model, torch.ones(1, 3, 8, 8))


def test_inference_weight_cache_follows_updates():
    lin = quant.quantize(nn.Sequential(nn.Linear(4, 3)), w_bits=3, a_bits=3)[0]
    x = torch.randn(2, 4)
    with torch.no_grad():
        a = lin(x)
        lin.weight.add_(1.0)
        b = lin(x)
    assert not torch.equal(a, b)
    torch.testing.assert_close(b, x @ quant.quantize_weight(lin.weight.detach(), 3).T + lin.bias)
