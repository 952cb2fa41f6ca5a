"""The teacher registry: names -> architectures and the facts a run needs before building one
(class count, input shape, normalisation). Nothing here loads or downloads weights; that is
`qimera_core.models`, which re-exports these names.

Only torch below it, so `config` can check teacher names here without importing `models`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

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
