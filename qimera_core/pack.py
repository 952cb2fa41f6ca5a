"""Packs: N runs that build the same shapes, trained as one in one process.

A pack's members share the frozen teacher and differ only in values (PACK_FIELDS: seed, p, K,
sigma, mixing mode, frozen embeddings). Their generators and students are held as stacked
tensors and called as one through `torch.func.vmap`, so every kernel sees all members' work.
`One` is the plain path for a single run: the same call signature, no vmap.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from qimera_core import quant
from qimera_core.config import RUN_ONLY_FIELDS, TrainConfig

# Fields in which a pack's members may differ: they change values, never shapes.
PACK_FIELDS = ("seed", "mix_prob", "mix_classes", "noise_sigma", "mix_mode",
               "freeze_embeddings")


def pack_key(cfg: TrainConfig) -> str:
    """Configs with equal keys can share a pack. A randomly initialised teacher is seeded by
    the run's seed (models.load_teacher), so there the seed is part of the key."""
    free = set(PACK_FIELDS) | set(RUN_ONLY_FIELDS)
    if cfg.teacher_weights == "random":
        free.discard("seed")
    d = {k: v for k, v in cfg.to_dict().items() if k not in free}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]


def check_packable(cfgs: Sequence[TrainConfig]) -> None:
    """Raise, naming the fields, unless every config can share one pack."""
    if not cfgs:
        raise ValueError("a pack needs at least one config")
    keys = {pack_key(c) for c in cfgs}
    if len(keys) > 1:
        first = cfgs[0].to_dict()
        differ = sorted({k for c in cfgs for k, v in c.to_dict().items()
                         if v != first[k] and k not in PACK_FIELDS and k not in RUN_ONLY_FIELDS})
        raise ValueError(f"these configs cannot share a pack: they differ in {differ or ['seed']} "
                         f"(a pack's members may differ only in {list(PACK_FIELDS)}, and in the "
                         "seed only with a teacher that is not randomly initialised); "
                         "run them as separate packs")
    hashes = [c.config_hash for c in cfgs]
    if len(set(hashes)) < len(hashes):
        raise ValueError("a pack holds the same config twice; remove the duplicate")


def group(cfgs: Sequence[TrainConfig], size: int) -> list[list[TrainConfig]]:
    """Compatible configs in packs of at most `size` (the last pack of a kind may be smaller).
    Within a kind, configs of equal K go together, so that few members pad their slots to a
    larger K; otherwise the given order is kept."""
    by_key: dict[str, list[TrainConfig]] = {}
    for c in cfgs:
        by_key.setdefault(pack_key(c), []).append(c)
    out = []
    for same in by_key.values():
        same = sorted(same, key=lambda c: c.mix_classes)          # stable: order kept per K
        out += [same[i:i + size] for i in range(0, len(same), size)]
    return out


class One:
    """One module, called with a leading member dimension of 1: the plain path of a single run."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.template = module
        self.size = 1

    def __call__(self, *args: Tensor) -> Any:
        return _lead(self.module(*(a[0] for a in args)))

    def shared(self, x: Tensor) -> Any:
        """Every member on the same input `x`: (N, ...) outputs."""
        return _lead(self.module(x))

    def parameters(self) -> list[Tensor]:
        return list(self.module.parameters())

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.module.load_state_dict(state)

    def member_state(self, i: int) -> dict[str, Tensor]:
        return self.module.state_dict()


def _lead(out: Any) -> Any:
    """A lone module's output with the member dimension (1) in front, tensors in tuples too."""
    return out[None] if isinstance(out, Tensor) else type(out)(_lead(o) for o in out)


class Stack:
    """N modules of one architecture as stacked tensors (leading dim N), called as one.

    The modules' own tensors are copied into the stack; a template on the meta device gives
    the code that `functional_call` runs. Parameters are leaf tensors an optimizer can own.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.params, self.buffers = stack_module_state(list(modules))
        self.template = copy.deepcopy(modules[0]).to("meta")
        quant.set_packed(self.template)
        _swap_global_pools(self.template)
        self.keys = list(modules[0].state_dict())         # persistent state, in module order
        self.size = len(modules)
        self._each = vmap(self._forward)
        self._shared = vmap(self._forward_shared, in_dims=(0, 0, None))

    def _forward(self, params: dict, buffers: dict, *args: Tensor) -> Tensor:
        return functional_call(self.template, (params, buffers), args)

    def _forward_shared(self, params: dict, buffers: dict, x: Tensor) -> Tensor:
        return functional_call(self.template, (params, buffers), (x,))

    def __call__(self, *args: Tensor) -> Tensor:
        return self._each(self.params, self.buffers, *args)

    def shared(self, x: Tensor) -> Tensor:
        return self._shared(self.params, self.buffers, x)

    def parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def _tensors(self) -> dict[str, Tensor]:
        return {**self.params, **self.buffers}

    def state_dict(self) -> dict[str, Tensor]:
        t = self._tensors()
        return {k: t[k].detach() for k in self.keys}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        t = self._tensors()
        missing = set(self.keys) - set(state)
        if missing:
            raise KeyError(f"stacked state lacks {sorted(missing)}")
        with torch.no_grad():
            for k in self.keys:
                t[k].copy_(state[k])

    def member_state(self, i: int) -> dict[str, Tensor]:
        """Member i's state dict, as a plain module of this architecture would hold it."""
        t = self._tensors()
        return {k: t[k].detach()[i] for k in self.keys}

    def keep(self, rows: list[int]) -> None:
        """Drop every member not in `rows` (new leaf tensors; rebuild optimizers after)."""
        self.params = {k: v.detach()[rows].clone().requires_grad_(v.requires_grad)
                       for k, v in self.params.items()}
        self.buffers = {k: v[rows].clone() for k, v in self.buffers.items()}
        self.size = len(rows)


class _GlobalAvgPool(nn.Module):
    """AdaptiveAvgPool2d(1) as a mean: the same numbers, and unlike adaptive_avg_pool2d on a
    channels-last input it has a vmap batching rule (no per-member fallback loop)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean((-2, -1), keepdim=True)


def _swap_global_pools(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
            setattr(module, name, _GlobalAvgPool())
        else:
            _swap_global_pools(child)


def slice_optimizer(opt: torch.optim.Optimizer, rows: list[int], size: int,
                    make: Callable[[], torch.optim.Optimizer]) -> torch.optim.Optimizer:
    """A new optimizer from `make()` with `opt`'s state restricted to members `rows`: every
    per-parameter state tensor whose leading dim is the pack `size` is sliced."""
    state: dict[str, Any] = opt.state_dict()
    for per_param in state["state"].values():
        for k, v in per_param.items():
            if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == size:
                per_param[k] = v[rows].clone()
    new = make()
    new.load_state_dict(state)
    return new
