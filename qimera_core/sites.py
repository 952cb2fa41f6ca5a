"""The audit that counts what `quant.quantize` covers in each activation mode
(`python -m qimera_core.sites --teacher NAME`).

The official quantizer wraps each nn.ReLU/nn.ReLU6 module object, so a module called at two
places shares one range and a functional `F.relu` gets no quantizer ("module" mode). In
"call_site" mode (the default) every call, module or functional, gets its own QuantAct:
`quant.quantize_call_sites` finds the calls with torch.fx.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch
from torch import nn

from qimera_core import models
from qimera_core.quant import (
    QuantAct,
    QuantConv2d,
    QuantLinear,
    audit_activations,
    find_sites,  # noqa: F401  (defined here before; the call-site rewrite is quant's now)
    observe_activations,
    quantize,
    quantize_call_sites,  # noqa: F401
)

log = logging.getLogger(__name__)

SITES = ("call_site", "module")
_RELU_NAMES = ("relu", "relu_", "relu6")


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
