"""Quantizing a model as the official Qimera/GDFQ code does (method doc §2): every Conv2d/Linear
and every ReLU/ReLU6 output, with the layers of `qimera_core.fakequant` (its arithmetic is
described there). Activation quantizers go one per ReLU module (official, "module") or one per
call site found with torch.fx ("call_site", the default); the audit says what stays unquantized.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

# The arithmetic and the layers are in qimera_core.fakequant; they stay part of this interface.
from qimera_core.fakequant import (  # noqa: F401
    QuantAct,
    QuantConv2d,
    QuantLinear,
    fake_quant_reference,
    qparams,
    quantize_weight,
)

log = logging.getLogger(__name__)


def _swap_class(m: nn.Module, cls: type, bits: int) -> None:
    m.__class__ = cls
    m.w_bits = bits


def quantize(model: nn.Module, *, w_bits: int, a_bits: int, act_mode: str = "official",
             act_beta: float = 0.9, sites: str = "call_site") -> nn.Module:
    """Quantize `model`: every Conv2d/Linear's weights, and every ReLU/ReLU6 output. BatchNorm
    stays FP and unfolded. Modules are changed in place; use the returned model.

    sites="call_site": one quantizer per call, module or functional (quantize_call_sites); a
    model that torch.fx cannot trace falls back to "module" and `audit_activations` says why.
    sites="module" (official): one quantizer per nn.ReLU/nn.ReLU6 object, shared by its calls;
    functional ReLUs stay at full precision.
    """
    if sites not in ("call_site", "module"):
        raise ValueError(f"sites must be 'call_site' or 'module', got {sites!r}")
    trace_error = ""
    if sites == "call_site":
        try:
            model = quantize_call_sites(model, a_bits, act_mode, act_beta)
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


# ---- one activation quantizer per ReLU/ReLU6 call site (torch.fx) ---------------------------
# Functional spellings of ReLU / ReLU6 that fx records as call_function or call_method nodes.
_RELU_FNS = {F.relu: False, torch.relu: False, torch.relu_: True, torch.nn.functional.relu_: True}
_RELU6_FNS = (F.relu6,)
_RELU_METHODS = {"relu": False, "relu_": True}


class _Tracer(fx.Tracer):
    """Standard tracer that also keeps our quantized layers as leaves (never traced into)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (QuantAct, QuantConv2d, QuantLinear)) or super().is_leaf_module(
            m, qualname)


@dataclass
class _Site:
    node: fx.Node
    act: nn.Module            # the activation this site computes (a fresh module if functional)
    owner: str                # qualified name of the module the call happens in ("" = root)
    module_target: str = ""   # set for call_module sites


def _act_of(node: fx.Node, model: nn.Module) -> nn.Module | None:
    """The ReLU/ReLU6 a node computes, or None if it is not one."""
    if node.op == "call_module":
        m = model.get_submodule(node.target)
        return m if isinstance(m, (nn.ReLU, nn.ReLU6)) else None
    inplace = bool(node.kwargs.get("inplace", False))
    if node.op == "call_function":
        if node.target in _RELU_FNS:
            return nn.ReLU(inplace=inplace or _RELU_FNS[node.target])
        if node.target in _RELU6_FNS:
            return nn.ReLU6(inplace=inplace)
        if node.target is F.hardtanh and tuple(node.args[1:3]) == (0.0, 6.0):
            return nn.ReLU6(inplace=inplace)
    if node.op == "call_method" and node.target in _RELU_METHODS:
        return nn.ReLU(inplace=_RELU_METHODS[node.target])
    return None


def _owner(node: fx.Node, model: nn.Module) -> str:
    """Qualified name of the innermost module a functional call runs in ("" = the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    for key, value in reversed(stack.items()):
        path = value[0] if isinstance(value, tuple) else key
        try:
            model.get_submodule(path)
            return path
        except AttributeError:      # some torch versions record mangled keys; try the next
            continue
    return ""


def find_sites(model: nn.Module) -> tuple[fx.Graph, list[_Site]]:
    """Trace `model` (in its current train/eval mode) and list its ReLU/ReLU6 call sites."""
    graph = _Tracer().trace(model)
    sites = []
    for node in graph.nodes:
        act = _act_of(node, model)
        if act is not None:
            target = node.target if node.op == "call_module" else ""
            owner = target.rpartition(".")[0] if target else _owner(node, model)
            sites.append(_Site(node, act, owner, target))
    return graph, sites


def _free_name(model: nn.Module, owner: str, stem: str) -> str:
    k = 1
    while True:
        name = f"{owner}.{stem}_site{k}" if owner else f"{stem}_site{k}"
        try:
            model.get_submodule(name)
        except AttributeError:
            return name
        k += 1


def quantize_call_sites(model: nn.Module, bits: int, mode: str, beta: float) -> nn.Module:
    """Put one QuantAct at every ReLU/ReLU6 call site of `model` (modified in place).

    A module's first call site wraps the module where it is (same name as in "module" mode).
    Later calls of a shared module and functional calls get new QuantActs named
    `<owner>.<act>_site<k>`; only then is a torch.fx GraphModule returned, traced in the model's
    current mode (eval for students), else `model` itself. So a model whose ReLU modules are each
    called once quantizes exactly as in "module" mode. Raises what tracing raises.
    """
    graph, sites = find_sites(model)
    seen: set[str] = set()
    extra = []
    for s in sites:
        if s.module_target and s.module_target not in seen:
            seen.add(s.module_target)
            parent, _, leaf = s.module_target.rpartition(".")
            setattr(model.get_submodule(parent), leaf, QuantAct(s.act, bits, mode=mode, beta=beta))
        else:
            extra.append(s)
    if not extra:
        return model
    for s in extra:
        stem = (s.module_target.rpartition(".")[2] if s.module_target
                else type(s.act).__name__.lower())
        name = _free_name(model, s.owner, stem)
        act = copy.deepcopy(s.act)
        _add_submodule(model, name, QuantAct(act, bits, mode=mode, beta=beta))
        with graph.inserting_after(s.node):
            new = graph.call_module(name, (s.node.args[0],))
        s.node.replace_all_uses_with(new)
        graph.erase_node(s.node)
    graph.lint()
    gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
    gm.train(model.training)
    return gm


def _add_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    model.get_submodule(parent).add_module(leaf, module)


# ---- what runs unquantized -------------------------------------------------------------------
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
