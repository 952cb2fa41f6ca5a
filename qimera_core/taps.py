"""Stage-output taps (ZAQ's features, baselines doc §3): the outputs of a ResNet's residual
stages, from the teacher and from the quantized student, in one forward.

Hooks are registered for the length of one forward and removed after it, so a tapped module
can be deep-copied and run through `torch.func.functional_call` under a pack's vmap: the
stage outputs leave the forward as outputs, never through a hook's side effect.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

_STAGE = re.compile(r"(?:^|\.)(?:stage|layer)\d+$")


def stage_names(model: nn.Module) -> list[str]:
    """The residual stages of a ResNet-style model, in forward order: modules named `stageN`
    (pytorchcv) or `layerN` (torchvision, akamaster, ours)."""
    names = [n for n, _ in model.named_modules() if _STAGE.search(n)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no residual stages named stageN or layerN: "
                         "ZAQ's discrepancy compares the stages' outputs; choose a ResNet "
                         "teacher")
    return names


def forward_with_taps(model: nn.Module, stages: Sequence[str], x: Tensor,
                      call: Callable[[Tensor], Any] | None = None
                      ) -> tuple[Any, tuple[Tensor, ...]]:
    """`model(x)` (or `call(x)`, a wrapper that runs `model`) and the outputs of its `stages`,
    in order."""
    feats: list[Tensor] = []
    hooks = [model.get_submodule(n).register_forward_hook(lambda _m, _i, out: feats.append(out))
             for n in stages]
    try:
        out = (call or model)(x)
    finally:
        for h in hooks:
            h.remove()
    if len(feats) != len(stages):
        raise ValueError(f"{len(stages)} stages of {type(model).__name__} were tapped but "
                         f"{len(feats)} ran as modules: a model traced by torch.fx runs its "
                         "stages inline; pass --act-quant-sites module for ZAQ")
    return out, tuple(feats)


class Tapped(nn.Module):
    """A model whose forward returns (logits, stage outputs)."""

    def __init__(self, model: nn.Module, stages: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.stages = tuple(stages)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        return forward_with_taps(self.model, self.stages, x)
