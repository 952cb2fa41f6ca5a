"""Fake quantization as in the official Qimera/GDFQ code (method doc §2), built on fused kernels.

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
    """Quantize -> dequantize with plain ops (no autograd trick); the numerics everything matches."""
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
    (method doc §2.3) or a plain EMA, then quantizes with the updated range.

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
        if self.mode == "official":
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


def _swap_class(m: nn.Module, cls: type, bits: int) -> None:
    m.__class__ = cls
    m.w_bits = bits


def quantize(model: nn.Module, *, w_bits: int, a_bits: int, act_mode: str = "official",
             act_beta: float = 0.9) -> nn.Module:
    """Quantize `model` in place: every Conv2d/Linear's weights, and the output of every
    ReLU/ReLU6 module. BatchNorm stays FP and unfolded. Refuses models whose activations would
    escape quantization (functional ReLUs, ReLU modules reused at several call sites).
    """
    for m in model.modules():
        if type(m) is nn.Conv2d:
            _swap_class(m, QuantConv2d, w_bits)
        elif type(m) is nn.Linear:
            _swap_class(m, QuantLinear, w_bits)
    _replace_acts(model, a_bits, act_mode, act_beta)
    return model


def _replace_acts(module: nn.Module, bits: int, mode: str, beta: float) -> None:
    for name, child in module.named_children():
        if isinstance(child, (nn.ReLU, nn.ReLU6)):
            setattr(module, name, QuantAct(child, bits, mode=mode, beta=beta))
        elif not isinstance(child, QuantAct):
            _replace_acts(child, bits, mode, beta)


def act_quantizers(model: nn.Module) -> list[QuantAct]:
    return [m for m in model.modules() if isinstance(m, QuantAct)]


def set_packed(model: nn.Module) -> None:
    """Mark `model`'s quantizers as running under vmap over a pack's stacked state."""
    for m in model.modules():
        if isinstance(m, (QuantAct, QuantConv2d, QuantLinear)):
            m.packed = True


def set_calibration(model: nn.Module, enabled: bool) -> None:
    """Turn activation-range tracking on (ranges move every forward) or off (frozen)."""
    for q in act_quantizers(model):
        q.calibrating = enabled
        q._frozen = None
        if not enabled and not q.packed:
            with torch.no_grad():
                q._qparams()      # cache the frozen range now, outside any inference_mode


class _ActivationAudit(torch.overrides.TorchFunctionMode):
    """Records activation functions called outside QuantAct modules during one forward."""

    NAMES = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "gelu", "silu", "hardswish",
             "leaky_relu", "elu"}

    def __init__(self) -> None:
        super().__init__()
        self.inside_quant = 0
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if not self.inside_quant and name in self.NAMES:
            self.found.append(name)
        return func(*args, **(kwargs or {}))


def audit_activations(model: nn.Module, example: Tensor) -> None:
    """Raise if some activation in `model` would run at full precision after `quantize`.

    One forward on `example` under a TorchFunctionMode catches functional ReLUs (F.relu,
    torch.relu, x.relu()) and ReLU modules shared by several call sites (one quantizer range
    for two tensors). Activation modules other than ReLU/ReLU6 are refused too.
    """
    audit = _ActivationAudit()
    calls: dict[int, int] = {}
    hooks = []
    for q in act_quantizers(model):
        def pre(mod, _inp, a=audit):
            a.inside_quant += 1
            calls[id(mod)] = calls.get(id(mod), 0) + 1
        def post(_mod, _inp, _out, a=audit):
            a.inside_quant -= 1
        hooks += [q.register_forward_pre_hook(pre), q.register_forward_hook(post)]
    others = sorted({type(m).__name__ for m in model.modules()
                     if isinstance(m, (nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU,
                                       nn.Hardtanh)) and not isinstance(m, nn.ReLU6)})
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), audit:
            model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    problems = []
    if audit.found:
        problems.append(f"functional activation calls {sorted(set(audit.found))}")
    shared = sum(1 for n in calls.values() if n > 1)
    if shared:
        problems.append(f"{shared} ReLU module(s) reused at several call sites")
    if others:
        problems.append(f"activation modules other than ReLU/ReLU6: {others}")
    if problems:
        raise ValueError(
            f"{type(model).__name__} cannot be quantized faithfully: {'; '.join(problems)}. "
            "Their outputs would stay at full precision. Give every ReLU call site its own "
            "nn.ReLU/nn.ReLU6 module (e.g. a teacher from qimera_core.models) instead.")
