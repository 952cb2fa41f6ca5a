"""Teachers: the registry (`qimera_core.teachers`, re-exported here), their weights loaded
from local files only, and the classifier and penultimate features of a model.

Nothing here downloads; `qimera_core.prepare` fetches or trains weights into the cache first.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

# The registry is in qimera_core.teachers, so that config can check teacher names without
# importing this module; its names stay part of this module's interface.
from qimera_core.teachers import (  # noqa: F401
    TEACHERS,
    TV_PREFIX,
    CifarResNet,
    TeacherSpec,
    create,
    spec,
    torchvision_names,
)

if TYPE_CHECKING:
    from qimera_core.config import TrainConfig

log = logging.getLogger(__name__)


# ---- weights ---------------------------------------------------------------------------------
def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def weights_path(cfg: TrainConfig) -> Path:
    """Where `prepare` puts the teacher's weights and where a run looks for them by default."""
    return cfg.cache / "teachers" / f"{safe_name(cfg.teacher)}.pt"


def prepare_command(cfg: TrainConfig) -> str:
    return (f"python -m qimera_core.prepare --teacher {cfg.teacher} --eval-data {cfg.eval_data} "
            f"--cache {cfg.cache}")


def load_teacher(cfg: TrainConfig) -> nn.Module:
    """The teacher in eval mode with frozen parameters, weights per `cfg.teacher_weights`:
    "" = the prepared cache file, "random" = random init seeded by cfg.seed, else a path."""
    s = spec(cfg.teacher)
    if cfg.teacher_weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = s.builder()
    else:
        path = Path(cfg.teacher_weights).expanduser() if cfg.teacher_weights else weights_path(cfg)
        if not path.is_file():
            raise ValueError(
                f"teacher weights for {cfg.teacher!r} not found at {path}. Run "
                f"`{prepare_command(cfg)}` first, or pass --teacher-weights PATH "
                "(a local state_dict file).")
        model = s.builder()
        load_weights(model, path)
    model.eval()
    model.requires_grad_(False)
    return model


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state_dict file (plain, or {'state_dict': ...}, optionally 'module.'-prefixed)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types; name the file either way
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise ValueError(f"cannot read teacher weights {path} ({first}); pass a state_dict "
                         "file written by torch.save") from e
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{path} is not a state_dict (or a dict with a 'state_dict' entry)")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    _check_keys(model, sd, path)
    try:
        model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches: a checkpoint of another width or class count
        raise ValueError(f"teacher weights {path} do not fit this architecture: {e}") from e


def _check_keys(model: nn.Module, sd: Mapping[str, Any], path: Path) -> None:
    own = set(model.state_dict())
    # Older checkpoints (akamaster's) predate BN's num_batches_tracked buffer; it is unused in eval.
    missing = sorted(k for k in own - set(sd) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(sd) - own)
    if missing or unexpected:
        raise ValueError(
            f"teacher weights {path} do not match the architecture: {len(missing)} missing keys "
            f"(e.g. {missing[:5]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:5]}). "
            "Check that --teacher names the architecture these weights were trained for.")


# ---- classifier and penultimate features ------------------------------------------------------
def classifier(model: nn.Module) -> nn.Module:
    """The final classifier layer: the last Linear or 1x1 Conv2d (MobileNetV2) registered."""
    layers = [m for m in model.modules()
              if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear or 1x1 Conv2d classifier")
    return layers[-1]


def classifier_weight(model: nn.Module) -> Tensor:
    """A copy of the classifier's weight as (num_classes, D) (1x1 conv weights squeezed)."""
    return classifier(model).weight.detach().flatten(1).clone()


def penultimate_features(model: nn.Module, images: Tensor) -> Tensor:
    """The classifier's input for `images`, flattened to (B, D). Runs one forward pass in the
    caller's grad mode and module mode; the hook is removed afterwards."""
    captured: list[Tensor] = []

    def hook(_m: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        captured.append(inputs[0])

    handle = classifier(model).register_forward_pre_hook(hook)
    try:
        model(images)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"the classifier ran {len(captured)} times in one forward pass")
    return captured[0].flatten(1)
