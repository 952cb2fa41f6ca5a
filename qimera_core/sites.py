"""One activation quantizer per ReLU/ReLU6 *call site*, found with torch.fx, and the audit that
counts what `quant.quantize` covers in each mode (`python -m qimera_core.sites --teacher NAME`).

The official quantizer wraps each nn.ReLU/nn.ReLU6 module object, so a module called at two
places shares one range and a functional `F.relu` gets no quantizer ("module" mode). Here every
call, module or functional, gets its own QuantAct ("call_site" mode, the default).
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from qimera_core.quant import (
    QuantAct,
    QuantConv2d,
    QuantLinear,
    audit_activations,
    observe_activations,
    quantize,
)

log = logging.getLogger(__name__)

SITES = ("call_site", "module")
# Functional spellings of ReLU / ReLU6 that fx records as call_function or call_method nodes.
_RELU_FNS = {F.relu: False, torch.relu: False, torch.relu_: True, torch.nn.functional.relu_: True}
_RELU6_FNS = (F.relu6,)
_RELU_METHODS = {"relu": False, "relu_": True}
_RELU_NAMES = ("relu", "relu_", "relu6")


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


# ---- the audit report ------------------------------------------------------------------------
def coverage(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """What a quantized model covers: quantized convs/linears, activation quantizers, and from
    one forward on `example` the ReLU calls left at full precision and the quantizer calls that
    share a range with an earlier call."""
    found = observe_activations(model, example)
    return {
        "convs": sum(isinstance(m, QuantConv2d) for m in model.modules()),
        "linears": sum(isinstance(m, QuantLinear) for m in model.modules()),
        "act_quantizers": sum(isinstance(m, QuantAct) for m in model.modules()),
        "unquantized_relu_calls": sum(fn in _RELU_NAMES for _, fn in found.functional),
        "shared_range_calls": sum(n - 1 for n in found.quant_calls.values()),
    }


def audit_teacher(name: str, bits: int = 8) -> dict[str, dict[str, int]]:
    """Coverage of teacher `name` (random weights, no download) in each mode."""
    from qimera_core import models
    s = models.spec(name)
    example = torch.zeros(1, *s.input_shape)
    out = {}
    for sites in SITES:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = models.create(name).eval()
        q = quantize(model, w_bits=bits, a_bits=bits, sites=sites)
        audit_activations(q, example, sites=sites)
        out[sites] = coverage(q, example)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m qimera_core.sites",
        description="Count what the quantizer covers for teachers in each activation mode.")
    p.add_argument("--teacher", nargs="+", required=True, help="registry names or tv:NAME")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    rows: dict[tuple[str, str], dict[str, int]] = {}
    refused = 0
    for name in args.teacher:
        try:
            for sites, counts in audit_teacher(name).items():
                rows[(name, sites)] = counts
        except ValueError as e:
            print(f"{name}: refused: {e}", file=sys.stderr)
            refused += 1
    keys = ["convs", "linears", "act_quantizers", "unquantized_relu_calls", "shared_range_calls"]
    print("teacher".ljust(22), "mode".ljust(10), *(k.rjust(len(k)) for k in keys))
    for (name, sites), counts in rows.items():
        print(name.ljust(22), sites.ljust(10), *(str(counts[k]).rjust(len(k)) for k in keys))
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
