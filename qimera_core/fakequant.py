"""Fake quantization as in the official Qimera/GDFQ code (method doc §2), built on fused kernels:
the arithmetic and the quantized layers. `qimera_core.quant` puts them into a model.

Asymmetric uniform quantization with a plain straight-through estimator: per-output-channel
weight ranges recomputed from the current weights, per-tensor activation ranges after every
ReLU/ReLU6 tracked during calibration and frozen after. For bits b and range [m, M]:

    scale = max(M - m, 1e-8) / (2^b - 1),   zp = -round(m / scale)
    q = clamp(round(x / scale) + zp, 0, 2^b - 1),   x_hat = (q - zp) * scale

This is the official grid (2^b levels starting at round(m/scale)*scale), written in PyTorch's
fake-quant convention so that activations run through one fused kernel. It equals the
official arithmetic up to float rounding of the scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def qparams(lo: Tensor, hi: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """(scale, zero_point) for ranges [lo, hi]; shapes follow lo/hi (per-channel or scalar)."""
    scale = (hi - lo).clamp_min(1e-8) / (2**bits - 1)
    zero_point = -torch.round(lo * (1.0 / scale))
    return scale, zero_point


def fake_quant_reference(x: Tensor, lo: Tensor, hi: Tensor, bits: int) -> Tensor:
    """Quantize -> dequantize with plain ops (no autograd trick): the numerics everything
    matches."""
    scale, zp = qparams(lo, hi, bits)
    q = torch.clamp(torch.round(x * (1.0 / scale)) + zp, 0, 2**bits - 1)
    return (q - zp) * scale


def quantize_weight(w: Tensor, bits: int) -> Tensor:
    """Per-output-channel fake quantization with a straight-through gradient."""
    flat = w.detach().flatten(1)                       # (out_ch, rest)
    lo, hi = torch.aminmax(flat, dim=1)
    shape = (-1,) + (1,) * (w.dim() - 1)
    wq = fake_quant_reference(w.detach(), lo.view(shape), hi.view(shape), bits)
    # (grad mode, not w.requires_grad: under a pack's vmap the weight reports no grad)
    return w + (wq - w).detach() if torch.is_grad_enabled() else wq


class _ActQuantSTE(torch.autograd.Function):
    """Fused fake-quant forward; backward passes the gradient straight through (no clip mask).

    With `relu=True` the ReLU is folded in (the grid starts at 0, so clamping at q=0 is the
    ReLU) and the backward applies the ReLU's own mask, x > 0.
    """

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zp: Tensor, qmax: int, relu: bool) -> Tensor:
        ctx.relu = relu
        if relu:
            ctx.save_for_backward(x > 0)
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, qmax)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if ctx.relu:
            (mask,) = ctx.saved_tensors
            grad = grad * mask
        return grad, None, None, None, None


class QuantAct(nn.Module):
    """An activation (ReLU or ReLU6) followed by a per-tensor activation quantizer.

    While `calibrating`, every forward updates the range with the official recurrence
    (method doc §2.3), a plain EMA or ZeroQ's running min/max from 0, then quantizes with the
    updated range.

    `packed` (set by `qimera_core.pack` on the template it vmaps over a pack's stacked
    buffers), or float64 input: plain ops instead of the fused kernel (same values in float32),
    and nothing cached on the module.
    """

    packed = False

    def __init__(self, act: nn.Module, bits: int, *, mode: str = "official", beta: float = 0.9):
        super().__init__()
        self.act = act
        self.bits = bits
        self.mode = mode
        self.beta = beta
        self.calibrating = False
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("beta_t", torch.ones(()))
        self._frozen: tuple[Tensor, Tensor, bool] | None = None

    def extra_repr(self) -> str:
        return f"bits={self.bits}, mode={self.mode}"

    def _update_range(self, y: Tensor) -> None:
        ymin, ymax = torch.aminmax(y.detach())
        b = self.beta
        if self.mode == "minmax":
            # ZeroQ's rule (baselines doc §1): running min/max, both bounds starting at 0.
            self.lo.copy_(torch.minimum(self.lo, ymin))
            self.hi.copy_(torch.maximum(self.hi, ymax))
        elif self.mode == "official":
            # m_t = (b m_{t-1} + (1-b) min) / (1 - b_t), b_t = b_{t-1} b: the stored value is
            # divided again every step, as in the official code.
            self.beta_t.mul_(b)
            self.lo.copy_((b * self.lo + (1 - b) * ymin) / (1 - self.beta_t))
            self.hi.copy_((b * self.hi + (1 - b) * ymax) / (1 - self.beta_t))
        else:
            first = self.beta_t == 1
            self.lo.copy_(torch.where(first, ymin, b * self.lo + (1 - b) * ymin))
            self.hi.copy_(torch.where(first, ymax, b * self.hi + (1 - b) * ymax))
            self.beta_t.mul_(b)

    def _qparams(self) -> tuple[Tensor, Tensor, bool]:
        """(scale, int32 zero point, fold ReLU?); cached once the range is frozen."""
        if self._frozen is not None and not self.calibrating:
            return self._frozen
        scale, zp = qparams(self.lo, self.hi, self.bits)
        zp = zp.to(torch.int32).reshape(1)
        if self.calibrating:
            return scale.reshape(1), zp, False
        # Frozen: decide once (one host sync) whether the ReLU can fold into the quantizer.
        # It can when the grid starts at 0, which is the case after a ReLU unless every
        # calibration batch was strictly positive.
        fold = isinstance(self.act, nn.ReLU) and int(zp) == 0
        self._frozen = (scale.reshape(1), zp, fold)
        return self._frozen

    def forward(self, x: Tensor) -> Tensor:
        qmax = 2**self.bits - 1
        if self.packed or x.dtype == torch.float64:   # the fused kernel computes in float32
            y = self.act(x)
            if self.calibrating:
                self._update_range(y)
            scale, zp = qparams(self.lo, self.hi, self.bits)
            fq = (torch.clamp(torch.round(y.detach() * (1.0 / scale)) + zp, 0, qmax) - zp) * scale
            return fq + (y - y.detach())    # the fused kernel's value, a straight-through grad
        if self.calibrating:
            y = self.act(x)
            self._update_range(y)
            scale, zp, _ = self._qparams()
            return _ActQuantSTE.apply(y, scale, zp, qmax, False)
        scale, zp, fold = self._qparams()
        if fold:
            return _ActQuantSTE.apply(x, scale, zp, qmax, True)
        return _ActQuantSTE.apply(self.act(x), scale, zp, qmax, False)

    def _load_from_state_dict(self, *args, **kwargs):  # ranges changed: drop the cache
        self._frozen = None
        super()._load_from_state_dict(*args, **kwargs)


class QuantConv2d(nn.Conv2d):
    """Conv2d whose weights are fake-quantized per output channel on every forward.

    In inference mode the quantized weight is cached until the weight changes (not when
    `packed`: the weights are then a pack's stacked tensors, seen through vmap).
    """

    w_bits: int = 8
    packed = False

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, _cached_weight(self), self.bias)


class QuantLinear(nn.Linear):
    w_bits: int = 8
    packed = False

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, _cached_weight(self), self.bias)


def _cached_weight(m: nn.Module) -> Tensor:
    w = m.weight
    if m.packed or (torch.is_grad_enabled() and w.requires_grad):
        return quantize_weight(w, m.w_bits)
    key = (w._version, w.data_ptr(), w.device)
    cache = m.__dict__.get("_wq_cache")
    if cache is None or cache[0] != key:
        cache = (key, quantize_weight(w.detach(), m.w_bits))
        m.__dict__["_wq_cache"] = cache
    return cache[1]
