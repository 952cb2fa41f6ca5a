"""Evaluation data (test splits only; Qimera trains on generated images) and top-1/top-5 scoring.

Nothing here downloads: missing data raises an error that names the `prepare` command.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from qimera_core import models

if TYPE_CHECKING:
    from qimera_core.config import TrainConfig

log = logging.getLogger(__name__)

# (mean, std) per channel, applied after scaling pixels to [0, 1]. CIFAR/ImageNet: method §1.
# digits: mean and (population) std of the digits train split's pixels / 16, computed once by
# `digits_pixel_stats()`; tests/test_data.py checks that the constants still match it.
NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)),
    # ZeroQ's CIFAR-10 test transform (baselines doc §1, trap 4): another std.
    "cifar10-zeroq": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.50705882, 0.48666667, 0.44078431), (0.26745098, 0.25568627, 0.27607843)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "digits": ((0.30505120,), (0.37593456,)),
    "none": ((0.0,), (1.0,)),
}
# Image shape (C, H, W) and class count of the named data sets, checked against the teacher.
KNOWN_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "digits": ((1, 8, 8), 10),
    "imagenet": ((3, 224, 224), 1000),
}
SYNTHETIC_SIZE = 64
# Fixed digits split without an RNG, so it cannot drift with library versions: within each
# class, in dataset order, the samples whose rank r has r % 10 in DIGITS_TEST_RANKS are test
# (30 %, stratified, spread over the whole file and hence over its writers).
DIGITS_TEST_RANKS = (3, 6, 9)


class EvalSet:
    """Test images kept compactly on the CPU (uint8, or float already in [0, 1]) plus labels.

    `batches()` yields normalised float32 images and labels on the requested device.
    `images` holds the raw pixels: divide by `scale` and normalise, or call `normalized()`.
    It is None for a streamed ImageFolderEvalSet; `batches()` works for both.
    """

    def __init__(self, images: Tensor | None, labels: Tensor, num_classes: int,
                 normalization: str, scale: float = 255.0, batch_size: int = 200) -> None:
        if images is not None and images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images, self.labels = images, labels.long()
        self.num_classes, self.normalization, self.scale = num_classes, normalization, scale
        self.batch_size = batch_size

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _cpu_batches(self, batch_size: int, pin: bool) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(0, len(self), batch_size):
            yield self.images[i:i + batch_size], self.labels[i:i + batch_size]

    def batches(self, batch_size: int | None = None,
                device: str | torch.device = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
        """(normalised float images, labels), both on `device`, in dataset order."""
        device = torch.device(device)
        mean, std = norm_tensors(self.normalization, device)
        for x, y in self._cpu_batches(batch_size or self.batch_size, device.type == "cuda"):
            # Move the compact form, convert on the device: 4x less to copy than float32.
            x = x.to(device, non_blocking=True).float().div_(self.scale)
            yield (x - mean) / std, y.to(device, non_blocking=True)

    def normalized(self) -> Tensor:
        """All images as one normalised float32 CPU tensor (materialised on each call)."""
        return torch.cat([x for x, _ in self.batches(max(len(self), 1), "cpu")])


class ImageFolderEvalSet(EvalSet):
    """An ImageNet-style val folder, streamed through a DataLoader instead of held in memory."""

    def __init__(self, root: Path, normalization: str, limit: int, num_workers: int,
                 batch_size: int = 16, crop: int = 224) -> None:
        import torchvision.transforms as T
        from torchvision.datasets import ImageFolder
        # The usual resize-then-crop ratio 0.875: 256 -> 224, and 342 -> 299 for InceptionV3.
        tf = T.Compose([T.Resize(round(crop / 0.875)), T.CenterCrop(crop), T.PILToTensor()])
        self.dataset: torch.utils.data.Dataset = ImageFolder(str(root), transform=tf)
        targets = torch.tensor(self.dataset.targets, dtype=torch.long)
        n_classes = len(self.dataset.classes)
        if limit:
            # The folder is sorted by class, so the first N would all be class 0: take an evenly
            # spaced subset instead, which covers the classes.
            idx = torch.linspace(0, len(targets) - 1, min(limit, len(targets))).long().tolist()
            self.dataset = torch.utils.data.Subset(self.dataset, idx)
            targets = targets[idx]
        super().__init__(None, targets, n_classes, normalization, 255.0, batch_size)  # streamed
        self.num_workers = num_workers

    def _cpu_batches(self, batch_size: int, pin: bool) -> Iterator[tuple[Tensor, Tensor]]:
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=batch_size, shuffle=False,
                                             num_workers=self.num_workers, pin_memory=pin)
        yield from loader


def norm_tensors(name: str, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """NORMS[name] as (1, C, 1, 1) float32 tensors on `device`."""
    if name not in NORMS:
        raise ValueError(f"unknown normalization {name!r}; choose one of {sorted(NORMS)}")
    mean, std = NORMS[name]
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1),
            torch.tensor(std, device=device).view(1, -1, 1, 1))


def resolve_normalization(cfg: TrainConfig) -> str:
    """cfg.normalization, with "auto" meaning the teacher's own (models.spec(...).normalization)."""
    if cfg.normalization == "auto":
        return models.spec(cfg.teacher).normalization
    return cfg.normalization


# ---- loaders ---------------------------------------------------------------------------------
def _cifar(cfg: TrainConfig, name: str) -> tuple[Tensor, Tensor, int, float]:
    from torchvision import datasets
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        ds = cls(str(cfg.cache / "data"), train=False, download=False)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise ValueError(f"{name} test split not found under {cfg.cache / 'data'} ({e}). Run "
                         f"`{models.prepare_command(cfg)}` first (it downloads it).") from e
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    return images, torch.tensor(ds.targets, dtype=torch.long), KNOWN_SHAPES[name][1], 255.0


def _npz(path: str, num_classes: int) -> tuple[Tensor, Tensor, int, float]:
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is not a file" if p.exists() else "not found"
        raise ValueError(f"eval_data 'npz:{path}': {p.resolve()} {what}; pass the .npz file "
                         "holding images uint8 (N, H, W, C) and labels (N,)")
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile):  # numpy's own text is about pickles
        raise ValueError(f"eval_data 'npz:{path}': {p} is not a readable .npz file; "
                         "write it with np.savez(path, images=..., labels=...)") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"eval_data 'npz:{path}': {p} holds one array, not an .npz archive; "
                         "write it with np.savez(path, images=..., labels=...)")
    with z:
        if "images" not in z or "labels" not in z:
            raise ValueError(f"{p} needs arrays 'images' (N,H,W,C uint8) and 'labels' (N,); "
                             f"it has {sorted(z.keys())}")
        images, labels = z["images"], z["labels"]
    if images.ndim == 3:  # grayscale (N, H, W)
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{p}: 'images' must be uint8 (N, H, W, C) in 0-255, got "
                         f"{images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{p}: 'labels' must be (N,) with one label per image, got "
                         f"{labels.shape} for {len(images)} images")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{p}: labels must be in 0..{num_classes - 1} for this teacher, got "
                         f"{labels.min()}..{labels.max()}")
    chw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return chw, torch.from_numpy(labels.astype(np.int64)), num_classes, 255.0


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ValueError("eval_data 'digits' needs scikit-learn: pip install scikit-learn "
                         "(or pip install -e '.[dev]')") from e
    d = load_digits()
    return d.images.astype(np.uint8), d.target.astype(np.int64)  # pixels are integers 0..16


def digits_split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of the fixed stratified 70/30 digits split (see DIGITS_TEST_RANKS)."""
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    test = np.isin(rank % 10, DIGITS_TEST_RANKS)
    return np.flatnonzero(~test), np.flatnonzero(test)


def _digits(train: bool) -> tuple[Tensor, Tensor, int, float]:
    images, labels = _digits_arrays()
    idx = digits_split_indices(labels)[0 if train else 1]
    return (torch.from_numpy(images[idx][:, None]), torch.from_numpy(labels[idx]), 10, 16.0)


def digits_train_split(batch_size: int = 200) -> EvalSet:
    """The digits train split (for training the digits teacher), digits-normalised."""
    images, labels, n, scale = _digits(train=True)
    return EvalSet(images, labels, n, "digits", scale, batch_size)


def digits_test_split(batch_size: int = 200) -> EvalSet:
    """The digits test split, digits-normalised (what eval_data='digits' evaluates on)."""
    images, labels, n, scale = _digits(train=False)
    return EvalSet(images, labels, n, "digits", scale, batch_size)


def digits_pixel_stats() -> tuple[float, float]:
    """Mean and population std of the digits train split's pixels / 16 (NORMS['digits'])."""
    images, _, _, scale = _digits(train=True)
    x = images.double() / scale
    return float(x.mean()), float(x.std(unbiased=False))


def _synthetic(cfg: TrainConfig, s: models.TeacherSpec) -> tuple[Tensor, Tensor, int, float]:
    # One fixed test set, like a real one: it does not move with the run's seed (so runs of
    # different seeds, a pack's members too, are scored on the same images).
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (SYNTHETIC_SIZE, *s.input_shape), generator=g,
                           dtype=torch.uint8)
    labels = torch.randint(0, s.num_classes, (SYNTHETIC_SIZE,), generator=g)
    return images, labels, s.num_classes, 255.0


def imagenet_dir(cfg: TrainConfig) -> Path:
    """The ImageNet val folder: `imagenet:VALDIR`, or cfg.cache/data/imagenet/val."""
    _, _, arg = cfg.eval_data.partition(":")
    return Path(arg).expanduser() if arg else cfg.cache / "data" / "imagenet" / "val"


def num_workers(cfg: TrainConfig) -> int:
    if cfg.num_threads:
        return cfg.num_threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---- entry points ----------------------------------------------------------------------------
def check_compatible(cfg: TrainConfig) -> None:
    """Raise if the named eval data cannot fit the teacher (shape, classes, normalization).
    Reads nothing from disk; load_eval() repeats the check on the loaded data."""
    s = models.spec(cfg.teacher)
    kind = cfg.eval_data.split(":", 1)[0]
    if kind in KNOWN_SHAPES:
        shape, n_classes = _known_shape(kind, s)
        _check_matches(cfg, s, shape, n_classes)
    _check_norm(resolve_normalization(cfg), s.input_shape[0])


def check_npz(cfg: TrainConfig) -> None:
    """Read an `npz:PATH` test set and raise ValueError unless it fits the teacher."""
    s = models.spec(cfg.teacher)
    images, _, _, _ = _npz(cfg.eval_data[4:], s.num_classes)
    if tuple(images.shape[1:]) != s.input_shape:
        c, h, w = s.input_shape
        raise ValueError(f"eval_data {cfg.eval_data!r} has images of shape (C, H, W) = "
                         f"{tuple(images.shape[1:])}, but teacher {s.name!r} takes "
                         f"{s.input_shape}: save 'images' as uint8 (N, {h}, {w}, {c}), or pick "
                         "the matching --teacher")


def _known_shape(kind: str, s: models.TeacherSpec) -> tuple[tuple[int, int, int], int]:
    """ImageNet val images are cropped to the teacher's size (224, or 299 for InceptionV3)."""
    shape, n_classes = KNOWN_SHAPES[kind]
    if kind == "imagenet" and s.input_shape[0] == 3 and s.input_shape[1] == s.input_shape[2]:
        shape = s.input_shape
    return shape, n_classes


def _check_matches(cfg: TrainConfig, s: models.TeacherSpec, shape: tuple[int, ...],
                   n_classes: int) -> None:
    if tuple(shape) != s.input_shape or n_classes != s.num_classes:
        raise ValueError(
            f"eval_data {cfg.eval_data!r} has images {tuple(shape)} and {n_classes} classes, but "
            f"teacher {s.name!r} takes {s.input_shape} and predicts {s.num_classes} classes. "
            "Pick a matching pair (e.g. digits with digits_resnet8, cifar10 with "
            "resnet20_cifar10, imagenet with resnet18).")


def _check_norm(norm: str, channels: int) -> None:
    n = len(NORMS[norm][0]) if norm in NORMS else -1
    if n not in (1, channels):
        raise ValueError(f"normalization {norm!r} has {n} channels but the images have "
                         f"{channels}; pick another --normalization (or auto)")


def load_eval(cfg: TrainConfig) -> EvalSet:
    """The test data named by cfg.eval_data, checked against the teacher, first eval_limit kept."""
    s = models.spec(cfg.teacher)
    norm = resolve_normalization(cfg)
    _check_norm(norm, s.input_shape[0])
    kind, _, arg = cfg.eval_data.partition(":")
    if kind == "imagenet":
        root = imagenet_dir(cfg)
        if not root.is_dir():
            raise ValueError(f"ImageNet val folder {root} not found; lay it out as "
                             "VALDIR/<synset>/<image>.JPEG and pass --eval-data imagenet:VALDIR "
                             f"(or put it at {cfg.cache / 'data' / 'imagenet' / 'val'})")
        shape = _known_shape("imagenet", s)[0]
        evalset = ImageFolderEvalSet(root, norm, cfg.eval_limit, num_workers(cfg),
                                     cfg.eval_batch_size, crop=shape[1])
        _check_matches(cfg, s, shape, evalset.num_classes)
        return evalset
    if kind in ("cifar10", "cifar100"):
        images, labels, n, scale = _cifar(cfg, kind)
    elif kind == "npz":
        images, labels, n, scale = _npz(arg, s.num_classes)
    elif kind == "digits":
        images, labels, n, scale = _digits(train=False)
    elif kind == "synthetic":
        images, labels, n, scale = _synthetic(cfg, s)
    else:
        raise ValueError(f"unknown eval_data {cfg.eval_data!r}")
    _check_matches(cfg, s, images.shape[1:], n)
    if cfg.eval_limit:
        images, labels = images[:cfg.eval_limit], labels[:cfg.eval_limit]
    log.debug("eval data %s: %d images, normalization %s", cfg.eval_data, len(labels), norm)
    return EvalSet(images, labels, n, norm, scale, cfg.eval_batch_size)


def evaluate(model: nn.Module, evalset: EvalSet, device: str | torch.device,
             batch_size: int | None = None) -> dict[str, float]:
    """Top-1 and top-k accuracy in percent over all images, k = min(5, num_classes).
    The model is used in its current mode (call .eval() first for a teacher)."""
    return evaluate_many(lambda x: model(x)[None], 1, evalset, device, batch_size)[0]


@torch.inference_mode()
def evaluate_many(forward: Callable[[Tensor], Tensor], members: int, evalset: EvalSet,
                  device: str | torch.device, batch_size: int | None = None
                  ) -> list[dict[str, float]]:
    """`evaluate` for a pack: `forward(x)` gives every member's logits, (members, B, classes);
    one accuracy dict per member."""
    k = min(5, evalset.num_classes)
    correct1 = correctk = torch.zeros(members, dtype=torch.long, device=device)
    n = 0
    for x, y in evalset.batches(batch_size, device):
        topk = forward(x).topk(k, dim=-1).indices            # (members, B, k)
        hits = topk == y[None, :, None]
        correct1 = correct1 + hits[..., 0].sum(-1)
        correctk = correctk + hits.any(dim=-1).sum(-1)
        n += y.shape[0]
    if n == 0:
        raise ValueError("evaluation set is empty")
    return [{"top1": 100.0 * c1 / n, "top5": 100.0 * ck / n}
            for c1, ck in zip(correct1.tolist(), correctk.tolist(), strict=True)]
