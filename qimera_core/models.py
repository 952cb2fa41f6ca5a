"""Teacher registry: names -> architectures, loading their weights from local files only.

Nothing here downloads; `qimera_core.prepare` fetches or trains weights into the cache first.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from qimera_core.config import TrainConfig

log = logging.getLogger(__name__)

TV_PREFIX = "tv:"


@dataclass(frozen=True)
class TeacherSpec:
    """What a run needs to know about a teacher before building it."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]     # (C, H, W) of one normalised image
    normalization: str                    # key of qimera_core.data.NORMS the weights expect
    source: str                           # pytorchcv | torchvision | local
    builder: Callable[[], nn.Module]      # returns a randomly initialised model


# ---- our own architectures -------------------------------------------------------------------
# Every ReLU is its own nn.ReLU instance, called once: the quantizer appends an activation
# quantizer after each ReLU module, so a functional or shared ReLU would escape quantization.

class _PadShortcut(nn.Module):
    """"Option A" shortcut: subsample by 2 and zero-pad channels on both sides (no parameters)."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, ::2, ::2]
        return nn.functional.pad(x, (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus shortcut, then ReLU. `shortcut`: 'A' (pad) or 'B' (1x1 conv-BN)."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            if shortcut == "A":
                self.shortcut = _PadShortcut((cout - cin) // 2)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                              nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """BN ResNet for small images. Attribute names follow the akamaster checkpoint
    (conv1, bn1, layer1..N, linear), so `resnet20_cifar10_a` loads it key for key."""

    def __init__(self, in_ch: int, widths: tuple[int, ...], blocks: int, num_classes: int,
                 shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        cin = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layer = [_BasicBlock(cin if b == 0 else w, w, stride if b == 0 else 1, shortcut)
                     for b in range(blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            cin = w
        self.num_stages = len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.linear(self.pool(x).flatten(1))


def _resnet20_a() -> nn.Module:
    return CifarResNet(3, (16, 32, 64), 3, 10, shortcut="A")


def _digits_resnet8() -> nn.Module:
    return CifarResNet(1, (8, 16, 32), 1, 10, shortcut="B")


def _tiny_resnet() -> nn.Module:
    return CifarResNet(3, (8, 16), 1, 10, shortcut="B")


# ---- registry --------------------------------------------------------------------------------
def _pytorchcv(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from pytorchcv.model_provider import get_model
        return get_model(name, pretrained=False)
    return build


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision
        return torchvision.models.get_model(name, weights=None)
    return build


_IMAGENET_SHAPE = (3, 224, 224)
TEACHERS: dict[str, TeacherSpec] = {s.name: s for s in [
    TeacherSpec("resnet20_cifar10", 10, (3, 32, 32), "cifar10", "pytorchcv",
                _pytorchcv("resnet20_cifar10")),
    TeacherSpec("resnet20_cifar100", 100, (3, 32, 32), "cifar100", "pytorchcv",
                _pytorchcv("resnet20_cifar100")),
    TeacherSpec("resnet18", 1000, _IMAGENET_SHAPE, "imagenet", "pytorchcv", _pytorchcv("resnet18")),
    TeacherSpec("resnet50", 1000, _IMAGENET_SHAPE, "imagenet", "pytorchcv", _pytorchcv("resnet50")),
    TeacherSpec("mobilenetv2_w1", 1000, _IMAGENET_SHAPE, "imagenet", "pytorchcv",
                _pytorchcv("mobilenetv2_w1")),
    # Supplement Table 10's other rows, named as in ZeroQ and DSG. ShuffleNet v1 calls each
    # unit's ReLU module twice, so only "call_site" mode gives each call its own range.
    TeacherSpec("inceptionv3", 1000, (3, 299, 299), "imagenet", "pytorchcv",
                _pytorchcv("inceptionv3")),
    TeacherSpec("sqnxt23_w2", 1000, _IMAGENET_SHAPE, "imagenet", "pytorchcv",
                _pytorchcv("sqnxt23_w2")),
    TeacherSpec("shufflenet_g1_w1", 1000, _IMAGENET_SHAPE, "imagenet", "pytorchcv",
                _pytorchcv("shufflenet_g1_w1")),
    # akamaster's CIFAR-10 ResNet-20 (option A shortcuts), trained with ImageNet mean/std.
    TeacherSpec("resnet20_cifar10_a", 10, (3, 32, 32), "imagenet", "local", _resnet20_a),
    # Offline default teacher, trained by `prepare` on the scikit-learn digits train split.
    TeacherSpec("digits_resnet8", 10, (1, 8, 8), "digits", "local", _digits_resnet8),
    # A few thousand parameters, for unit tests with synthetic data.
    TeacherSpec("tiny_resnet", 10, (3, 8, 8), "none", "local", _tiny_resnet),
]}


# SqueezeNet's 1x1-conv classifier is followed by ReLU and pooling, so its input is no (B, D)
# feature vector and its weight rows are no class embeddings; Qimera needs both.
_TV_UNSUPPORTED = ("squeezenet1_0", "squeezenet1_1")


def torchvision_names() -> list[str]:
    """torchvision ImageNet classifiers usable as `tv:NAME` teachers."""
    import torchvision
    names = torchvision.models.list_models(module=torchvision.models)
    return sorted(n for n in names if n not in _TV_UNSUPPORTED)


def spec(name: str) -> TeacherSpec:
    """The registry entry for `name`: a TEACHERS key or `tv:NAME` (a torchvision classifier)."""
    if name in TEACHERS:
        return TEACHERS[name]
    if name.startswith(TV_PREFIX):
        tv_name = name[len(TV_PREFIX):]
        valid = torchvision_names()
        if tv_name in _TV_UNSUPPORTED:
            raise ValueError(f"teacher {name!r} is not supported: its classifier is not the "
                             "last layer, so it has no class embeddings to extract")
        if tv_name not in valid:
            raise ValueError(f"unknown torchvision classifier {tv_name!r} in teacher {name!r}; "
                             f"valid names after 'tv:' are {valid}")
        return TeacherSpec(name, 1000, _IMAGENET_SHAPE, "imagenet", "torchvision",
                           _torchvision(tv_name))
    raise ValueError(f"unknown teacher {name!r}; choose one of {sorted(TEACHERS)} or "
                     "'tv:NAME' for a torchvision classifier (e.g. 'tv:resnet18')")


def create(name: str) -> nn.Module:
    """A randomly initialised model (uses the global torch RNG)."""
    return spec(name).builder()


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
