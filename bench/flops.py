"""FLOP counting that is right for packs: `counter()` is torch.utils.flop_counter's
FlopCounterMode with `aten.convolution_backward` counted per group.

torch's formula for the backward ignores `groups`: it counts the input and weight gradients
as convolutions over all input channels at once, so a grouped conv, which is what vmap turns a
pack's N convolutions into, is over-counted by about its group count (e.g. 2.35 against 0.95
GFLOP per member for a digits pack of 4). Here each gradient costs what the forward costs:
2 x (multiply-adds of the forward), which is exact per group for both gradients.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(t)


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                       transposed, _output_padding, _groups, output_mask, out_shape=None,
                       **_kw) -> int:
    """FLOPs of convolution_backward: each requested gradient (input, weight) costs what the
    forward does, 2 x batch x output positions x Cout x (Cin / groups) x kernel; for a
    transposed conv the roles of input and output swap. The weight's second dim is already
    per group, so grouped convs come out right."""
    positions = math.prod(_shape(x_shape) if transposed else _shape(grad_out_shape))
    fwd = 2 * positions * math.prod(_shape(w_shape)[1:])
    return fwd * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def counter(**kw: Any) -> FlopCounterMode:
    """FlopCounterMode(display=False) with grouped conv backward counted per group."""
    kw.setdefault("display", False)
    return FlopCounterMode(custom_mapping={aten.convolution_backward: conv_backward_flop}, **kw)
