"""Figures from a trial's saved generator: supp. Figure 5 (PCA of the teacher's penultimate
features for real, generated, superposed samples and a λ path) and Figure 6 (sample grids)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure
from torch import Tensor

from qimera_core import checkpoint, data, models

from .load import AnalysisError, dataset_label, model_label

log = logging.getLogger(__name__)


def load(ckpt_dir: Path, device: str = "cpu") -> checkpoint.Trained:
    """A trial rebuilt from its checkpoint directory, models in eval mode."""
    try:
        trained = checkpoint.load_trained(Path(ckpt_dir), device=device)
    except FileNotFoundError as e:
        raise AnalysisError(str(e)) from e
    if trained.generator is None:
        raise AnalysisError(f"{ckpt_dir} is a {trained.cfg.method} run: it has no generator "
                            "to draw samples from (figures 5 and 6 need a Qimera or GDFQ run)")
    for m in (trained.teacher, trained.student, trained.generator):
        m.eval()
    return trained


def _caption(trained: checkpoint.Trained) -> str:
    cfg = trained.cfg
    what = (f"{dataset_label(cfg.eval_data, cfg.teacher)} {model_label(cfg.teacher)} "
            f"{cfg.w_bits}w{cfg.a_bits}a, {cfg.method}, p={cfg.mix_prob:g}, K={cfg.mix_classes}, "
            f"epoch {trained.epoch}")
    if dataset_label(cfg.eval_data, cfg.teacher) not in ("CIFAR-10", "CIFAR-100", "ImageNet"):
        what += " — offline/smoke data, not a paper setting"
    return what


@torch.no_grad()
def _generate(trained: checkpoint.Trained, labels: list[list[int]], weights: Tensor,
              noise: Tensor) -> Tensor:
    """labels (B, K), weights (B, K) rows summing to 1, unit noise z (B, K, D) -> images
    (z is scaled by the run's sigma, as training's sampler does)."""
    lab = torch.tensor(labels, dtype=torch.long)
    cfg = trained.cfg
    sigma = cfg.noise_sigma if cfg.latent_input == "additive" else 1.0
    return trained.generator(lab, weights.float(), sigma * noise.float())


@torch.no_grad()
def _features(teacher: torch.nn.Module, images: Tensor, batch: int = 256) -> np.ndarray:
    out = [models.penultimate_features(teacher, images[i:i + batch])
           for i in range(0, len(images), batch)]
    return torch.cat(out).double().numpy()


def _real_features(trained: checkpoint.Trained, classes: int, per_class: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features of the first `per_class` test images of each shown class."""
    feats, labels, counts = [], [], np.zeros(classes, int)
    for x, y in data.load_eval(trained.cfg).batches(256):
        keep = torch.zeros(len(y), dtype=torch.bool)
        for i, label in enumerate(y.tolist()):
            if label < classes and counts[label] < per_class:
                keep[i], counts[label] = True, counts[label] + 1
        if keep.any():
            feats.append(_features(trained.teacher, x[keep]))
            labels.append(y[keep].numpy())
        if (counts >= per_class).all():
            break
    if not feats:
        raise AnalysisError(f"no test images of classes 0..{classes - 1} in "
                            f"{trained.cfg.eval_data}")
    return np.concatenate(feats), np.concatenate(labels)


class _PCA:
    """Standardise with the real features' statistics, then project on leading components."""

    def __init__(self, real: np.ndarray) -> None:
        self.mean, self.std = real.mean(0), real.std(0) + 1e-8
        self.fit(real)

    def fit(self, x: np.ndarray) -> _PCA:
        z = (x - self.mean) / self.std
        self.center = z.mean(0)
        _, _, vt = np.linalg.svd(z - self.center, full_matrices=False)
        self.axes = vt[:2]
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std - self.center) @ self.axes.T


def _pair(trained: checkpoint.Trained, classes: int, pair: tuple[int, int] | None
          ) -> tuple[int, int]:
    a, b = pair or (0, 1)
    if not (0 <= a < classes and 0 <= b < classes and a != b):
        raise AnalysisError(f"pair must be two different classes below {classes}, got {(a, b)}")
    return a, b


def _generated(trained: checkpoint.Trained, classes: int, per_class: int, pair: tuple[int, int],
               seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Teacher features of plain samples, superposed samples and the noise-free λ path."""
    gen, teacher = trained.generator, trained.teacher
    d = gen.latent_dim
    g = torch.Generator().manual_seed(seed)
    a, b = pair
    plain_labels = [[c] for c in range(classes) for _ in range(per_class)]
    plain = _generate(trained, plain_labels, torch.ones(len(plain_labels), 1),
                      torch.randn(len(plain_labels), 1, d, generator=g))
    lam = torch.rand(per_class, generator=g)
    mixed = _generate(trained, [[a, b]] * per_class, torch.stack([lam, 1 - lam], 1),
                      torch.randn(per_class, 2, d, generator=g))
    # Eq. 5 with z = 0: the path the superposed embedding takes from class b (λ=0) to a (λ=1)
    steps = torch.linspace(0, 1, 101, dtype=torch.float64)
    path = _generate(trained, [[a, b]] * len(steps), torch.stack([steps, 1 - steps], 1),
                     torch.zeros(len(steps), 2, d))
    return {"plain": (_features(teacher, plain), np.array(plain_labels)[:, 0]),
            "mixed": (_features(teacher, mixed), lam.numpy()),
            "path": (_features(teacher, path), steps.numpy())}


def figure5(trained: checkpoint.Trained, *, classes: int = 10, per_class: int = 100,
            pair: tuple[int, int] | None = None, seed: int = 0) -> Figure:
    """(a) real test images and plain generated samples per class in the teacher's feature
    space (PCA fitted on the real features); (b) one class pair: its samples, superposed
    samples between them and the noise-free λ path, with a PCA fitted on those points."""
    classes = min(classes, trained.generator.num_classes)
    a, b = _pair(trained, classes, pair)
    real, real_y = _real_features(trained, classes, per_class)
    gen = _generated(trained, classes, per_class, (a, b), seed)
    pca = _PCA(real)
    colors = sns.color_palette("husl" if classes > 10 else "tab10", classes)
    fig = Figure(figsize=(12, 5.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    _scatter_classes(ax1, pca, real, real_y, colors, marker=".", alpha=0.35, label="real")
    _scatter_classes(ax1, pca, *gen["plain"], colors, marker="x", alpha=0.8, label="generated")
    ax1.set(title="(a) real test images (•) and generated samples (×) per class",
            xlabel="PC 1", ylabel="PC 2")
    ax1.legend(fontsize=7, ncols=2, markerscale=1.5)
    _pair_panel(ax2, pca, gen, (a, b), colors)
    fig.suptitle(f"Figure 5: teacher penultimate features (PCA) — {_caption(trained)}",
                 fontsize=10)
    return fig


def _scatter_classes(ax, pca: _PCA, feats: np.ndarray, labels: np.ndarray, colors, *,
                     marker: str, alpha: float, label: str, only: tuple[int, ...] = ()) -> None:
    xy = pca(feats)
    for c in only or sorted(set(labels.tolist())):
        sel = labels == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=10, marker=marker, color=colors[c], alpha=alpha,
                   label=f"{label} {c}", linewidths=0.8)


def _pair_panel(ax, pca: _PCA, gen: dict, pair: tuple[int, int], colors) -> None:
    a, b = pair
    plain, plain_y = gen["plain"]
    keep = np.isin(plain_y, pair)
    mixed, path = gen["mixed"][0], gen["path"][0]
    local = _PCA.__new__(_PCA)  # same standardiser, axes fitted on the pair's points
    local.mean, local.std = pca.mean, pca.std
    local.fit(np.concatenate([plain[keep], mixed, path]))
    _scatter_classes(ax, local, plain[keep], plain_y[keep], colors, marker="x", alpha=0.8,
                     label="generated", only=pair)
    xy = local(mixed)
    ax.scatter(xy[:, 0], xy[:, 1], s=10, color="yellowgreen", alpha=0.7,
               label=f"superposed {a}+{b} (random λ)")
    xy = local(path)
    ax.plot(xy[:, 0], xy[:, 1], color="black", lw=1.2, label="λ path (z = 0)")
    ax.scatter(xy[::10, 0], xy[::10, 1], s=28, color="black", zorder=3, label="λ = 0, 0.1, ..., 1")
    ax.annotate(f"only {b}", xy[0], textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.annotate(f"only {a}", xy[-1], textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(title=f"(b) classes {a} and {b}: superposed samples and the λ path",
           xlabel="PC 1 (pair)", ylabel="PC 2 (pair)")
    ax.legend(fontsize=7)


def _mosaic(images: Tensor, rows: int, cols: int, pad: int = 1) -> np.ndarray:
    """(rows*cols, C, H, W) -> one (H', W', C) image in [0, 1], each tile min-max scaled."""
    x = images.detach().float()
    lo = x.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = x.flatten(1).max(1).values.view(-1, 1, 1, 1)
    x = ((x - lo) / (hi - lo).clamp_min(1e-8)).permute(0, 2, 3, 1).numpy()
    n, h, w, c = x.shape
    out = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c))
    for i in range(n):
        r, k = divmod(i, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h,
            pad + k * (w + pad): pad + k * (w + pad) + w] = x[i]
    return out[..., 0] if c == 1 else out


def figure6(trained: checkpoint.Trained, *, classes: int = 10, columns: int = 8,
            seed: int = 0) -> Figure:
    """(a) generated images, one row per class, one fixed noise vector per column;
    (b) superposed pairs (row i, column j: λ = 0.5/0.5, K = 2), one shared noise vector."""
    gen = trained.generator
    n, d = min(classes, gen.num_classes), gen.latent_dim
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(columns, d, generator=g)
    plain = _generate(trained, [[c] for c in range(n) for _ in range(columns)],
                      torch.ones(n * columns, 1), z.repeat(n, 1).unsqueeze(1))
    shared = torch.randn(1, 1, d, generator=g).expand(n * n, 2, d)
    pairs = _generate(trained, [[i, j] for i in range(n) for j in range(n)],
                      torch.full((n * n, 2), 0.5), shared)
    fig = Figure(figsize=(12, 6.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for ax, img, rows, cols, title, xlabel in [
            (ax1, plain, n, columns, "(a) per class (rows), fixed noise per column", "noise"),
            (ax2, pairs, n, n, "(b) class pairs, λ = (0.5, 0.5), shared noise", "class j")]:
        ax.imshow(_mosaic(img, rows, cols), cmap="gray", interpolation="nearest")
        h = (ax.get_images()[0].get_array().shape[0] - 1) / rows
        ax.set_yticks([h * (r + 0.5) for r in range(rows)], [str(r) for r in range(rows)])
        w = (ax.get_images()[0].get_array().shape[1] - 1) / cols
        ax.set_xticks([w * (k + 0.5) for k in range(cols)],
                      [str(k) for k in range(cols)] if xlabel == "class j" else [""] * cols)
        ax.set(title=title, ylabel="class" if xlabel == "noise" else "class i", xlabel=xlabel)
    fig.suptitle(f"Figure 6: generated images — {_caption(trained)}", fontsize=10)
    return fig
