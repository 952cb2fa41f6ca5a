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

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)


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
             act_beta: float = 0.9, sites: str = "call_site") -> nn.Module:
    """Quantize `model`: every Conv2d/Linear's weights, and every ReLU/ReLU6 output. BatchNorm
    stays FP and unfolded. Modules are changed in place; use the returned model.

    sites="call_site": one quantizer per call, module or functional (qimera_core.sites); a
    model that torch.fx cannot trace falls back to "module" and `audit_activations` says why.
    sites="module" (official): one quantizer per nn.ReLU/nn.ReLU6 object, shared by its calls;
    functional ReLUs stay at full precision.
    """
    if sites not in ("call_site", "module"):
        raise ValueError(f"sites must be 'call_site' or 'module', got {sites!r}")
    trace_error = ""
    if sites == "call_site":
        from qimera_core import sites as call_sites
        try:
            model = call_sites.quantize_call_sites(model, a_bits, act_mode, act_beta)
        except Exception as e:  # fx raises many types (TraceError, TypeError, ...) on control flow
            trace_error = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            _replace_acts(model, a_bits, act_mode, act_beta)
    else:
        _replace_acts(model, a_bits, act_mode, act_beta)
    model.__dict__["_trace_error"] = trace_error
    for m in model.modules():
        if type(m) is nn.Conv2d:
            _swap_class(m, QuantConv2d, w_bits)
        elif type(m) is nn.Linear:
            _swap_class(m, QuantLinear, w_bits)
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
    """Records activation functions called outside QuantAct modules during one forward, with the
    innermost module they were called in."""

    NAMES = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "gelu", "silu", "hardswish",
             "leaky_relu", "elu", "mish"}

    def __init__(self) -> None:
        super().__init__()
        self.inside_quant = 0
        self.stack: list[str] = []
        self.functional: list[tuple[str, str]] = []    # (layer, function name)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if not self.inside_quant and name in self.NAMES:
            self.functional.append((self.stack[-1] if self.stack else "<model>", name))
        return func(*args, **(kwargs or {}))


@dataclass
class ActivationFindings:
    functional: list[tuple[str, str]]   # activation calls outside any QuantAct: (layer, fn)
    quant_calls: dict[str, int]         # QuantAct name -> calls in one forward
    other_modules: list[str]            # "name (Type)" of activation modules we cannot quantize


_UNQUANTIZABLE = (nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Hardtanh, nn.Mish)


def observe_activations(model: nn.Module, example: Tensor) -> ActivationFindings:
    """One eval-mode forward on `example`, recording where activations run unquantized."""
    audit = _ActivationAudit()
    calls: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        is_q = isinstance(m, QuantAct)

        def pre(_mod, _inp, n=name, q=is_q):
            audit.stack.append(n)
            if q:
                audit.inside_quant += 1
                calls[n] = calls.get(n, 0) + 1

        def post(_mod, _inp, _out, q=is_q):
            audit.stack.pop()
            if q:
                audit.inside_quant -= 1
        hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    others = [f"{n} ({type(m).__name__})" for n, m in model.named_modules()
              if isinstance(m, _UNQUANTIZABLE) and not isinstance(m, nn.ReLU6)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), audit:
            model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return ActivationFindings(audit.functional, calls, others)


def audit_activations(model: nn.Module, example: Tensor, *, sites: str = "call_site") -> None:
    """Raise if `model` (after `quantize`) has activations that cannot be quantized or, in
    "call_site" mode, any ReLU call without its own quantizer.

    Activations other than ReLU/ReLU6 (GELU, SiLU, ...), as modules or functions, are refused in
    both modes, naming the layer. In "module" mode (official) functional ReLUs and ReLU modules
    reused at several call sites are allowed: the first stays FP, the second shares one range.
    """
    found = observe_activations(model, example)
    relu_names = ("relu", "relu_", "relu6")
    other_layers = {o.rsplit(" (", 1)[0] for o in found.other_modules}
    bad_fns = [f"{layer}: {fn}" for layer, fn in found.functional
               if fn not in relu_names and layer not in other_layers]
    problems = []
    if found.other_modules:
        problems.append(f"activation modules other than ReLU/ReLU6: {found.other_modules[:8]}")
    if bad_fns:
        problems.append(f"activation functions other than ReLU/ReLU6: {bad_fns[:8]}")
    if problems:
        raise ValueError(
            f"{type(model).__name__} cannot be quantized: {'; '.join(problems)}. The quantizer "
            "(method doc §2) only follows ReLU/ReLU6; use a teacher whose activations are ReLUs.")
    relu_fns = [f"{layer}: {fn}" for layer, fn in found.functional if fn in relu_names]
    shared = [n for n, k in found.quant_calls.items() if k > 1]
    if sites == "module":
        if relu_fns or shared:
            log.info("module mode: %d functional ReLU call(s) stay FP, %d quantizer(s) shared by "
                     "several call sites", len(relu_fns), len(shared))
        return
    if relu_fns or shared:
        why = model.__dict__.get("_trace_error", "")
        raise ValueError(
            f"{type(model).__name__} cannot be quantized per call site: torch.fx could not trace "
            f"it ({why or 'unknown reason'}), so the module-based fallback leaves "
            f"{len(relu_fns)} functional ReLU call(s) at full precision (e.g. {relu_fns[:3]}) "
            f"and {len(shared)} ReLU module(s) shared by several call sites (e.g. {shared[:3]}). "
            "Make the model traceable by torch.fx, or pass --act-quant-sites module to accept "
            "the official behaviour.")
