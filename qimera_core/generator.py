"""The Qimera generator: class embeddings plus noise, superposed with probability p over K
classes, through optional disentanglement-mapping (DM) layers into the GDFQ/ACGAN trunk.

Method doc §3. The CIFAR trunk conditions on the class only through its input; the ImageNet
trunk adds class-conditional BatchNorm (CBN). Shapes: B batch, K slots, D embedding width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_EPS = 1e-5


@dataclass
class Latents:
    """One batch of generator inputs and the soft labels the teacher should assign to it."""

    labels: Tensor          # (B, K) class indices
    weights: Tensor         # (B, K) lambda, rows sum to 1
    noise: Tensor           # (B, K, D)
    targets: Tensor         # (B, C) soft labels: sum_k lambda_k onehot(y_k)
    mixed: Tensor | None    # (B,) bool in per-sample mode; None = the whole batch is one kind


def sample_latents(batch: int, num_classes: int, latent_dim: int, *, mix_prob: float,
                   mix_classes: int, mix_mode: str, rng: torch.Generator,
                   coin: torch.Generator, device: torch.device) -> Latents:
    """Labels uniform with replacement, lambda = softmax of Gaussian draws (method doc §3.4).

    `coin` is a CPU generator for the per-batch superposition decision (no device sync);
    `rng` draws everything else on `device`.
    """
    superpose = mix_prob > 0 and (mix_mode == "sample"
                                  or torch.rand((), generator=coin).item() < mix_prob)
    k = mix_classes if superpose else 1
    labels = torch.randint(num_classes, (batch, k), generator=rng, device=device)
    noise = torch.randn(batch, k, latent_dim, generator=rng, device=device)
    if k > 1:
        weights = torch.softmax(torch.randn(batch, k, generator=rng, device=device), dim=1)
    else:
        weights = torch.ones(batch, 1, device=device)
    mixed = None
    if superpose and mix_mode == "sample":
        mixed = torch.rand(batch, generator=rng, device=device) < mix_prob
        # plain samples keep slot 0 only: weight 1 there, 0 elsewhere
        plain_w = F.one_hot(torch.zeros_like(labels[:, 0]), k).to(weights.dtype)
        weights = torch.where(mixed[:, None], weights, plain_w)
    targets = torch.zeros(batch, num_classes, device=device).scatter_add_(1, labels, weights)
    return Latents(labels, weights, noise, targets, mixed)


class CondBatchNorm2d(nn.Module):
    """BatchNorm without affine, then per-sample gamma/beta looked up by class (ImageNet trunk).

    Under superposition gamma = sum_k lambda_k Gamma[y_k], divided by the number of slots when
    `mix='mean'` (the official code's extra 1/K, method doc §11 #5).
    """

    def __init__(self, features: int, num_classes: int, eps: float, mix: str = "mean"):
        super().__init__()
        self.bn = nn.BatchNorm2d(features, affine=False, eps=eps)
        self.gamma = nn.Embedding(num_classes, features)
        self.beta = nn.Embedding(num_classes, features)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)
        self.mix = mix

    def forward(self, x: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
        gamma = torch.einsum("bk,bkf->bf", weights, self.gamma(labels))
        beta = torch.einsum("bk,bkf->bf", weights, self.beta(labels))
        if self.mix == "mean" and labels.shape[1] > 1:
            slots = (weights > 0).sum(1, keepdim=True).to(gamma.dtype)   # K, or 1 for plain
            gamma, beta = gamma / slots, beta / slots
        return self.bn(x) * gamma[:, :, None, None] + beta[:, :, None, None]


def _standardize(u: Tensor, dims: tuple[int, ...]) -> Tensor:
    var, mean = torch.var_mean(u, dim=dims, keepdim=True, correction=0)
    return (u - mean) * torch.rsqrt(var + _EPS)


def _dm(in_dim: int, width: int, layers: int, activation: str) -> nn.Module:
    if layers == 0:
        return nn.Identity()
    act = {"none": nn.Identity, "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2)}
    mods: list[nn.Module] = [nn.Linear(in_dim, width)]
    for _ in range(layers - 1):      # activation only *between* layers: 1 layer = affine map
        mods += [act[activation](), nn.Linear(width, width)]
    return nn.Sequential(*mods)


def _center_crop(x: Tensor, size: int) -> Tensor:
    off = (x.shape[-1] - size) // 2
    return x if off == 0 and x.shape[-1] == size else x[..., off:off + size, off:off + size]


class Generator(nn.Module):
    def __init__(self, *, num_classes: int, latent_dim: int, img_size: int, channels: int,
                 noise_sigma: float = 1.0, dm_layers: int = 1, dm_width: int = 100,
                 dm_activation: str = "leaky_relu", embeddings: Tensor | None = None,
                 freeze_embeddings: bool = False, conditional_bn: bool = False,
                 latent_input: str = "additive", cbn_mix: str = "mean"):
        super().__init__()
        self.num_classes, self.latent_dim = num_classes, latent_dim
        self.noise_sigma = noise_sigma
        self.latent_input = latent_input
        self.conditional_bn = conditional_bn
        emb = embeddings.detach().clone().float() if embeddings is not None \
            else torch.randn(num_classes, latent_dim)
        if emb.shape != (num_classes, latent_dim):
            raise ValueError(f"embeddings must be ({num_classes}, {latent_dim}), got {tuple(emb.shape)}")
        if freeze_embeddings:
            self.register_buffer("embeddings", emb)
        else:
            self.embeddings = nn.Parameter(emb)
        self.dm = _dm(latent_dim, dm_width, dm_layers, dm_activation)
        in_dim = dm_width if dm_layers else latent_dim
        # The trunk upsamples x4, so a size that is no multiple of 4 (InceptionV3's 299) is
        # rendered at the next multiple (300) and centre-cropped to img_size before bn_out.
        self.img_size = img_size
        self.h0 = -(-img_size // 4)
        self.fc = nn.Linear(in_dim, 128 * self.h0 * self.h0)

        def bn(f: int, eps: float) -> nn.Module:
            return (CondBatchNorm2d(f, num_classes, eps, cbn_mix) if conditional_bn
                    else nn.BatchNorm2d(f, eps=eps))
        self.bn0 = bn(128, 1e-5)
        self.conv1 = nn.Conv2d(128, 128, 3, padding=1)
        self.bn1 = bn(128, 0.8)          # 0.8 is eps, as in the official code (§11 #20)
        self.conv2 = nn.Conv2d(128, 64, 3, padding=1)
        self.bn2 = bn(64, 0.8)
        self.conv3 = nn.Conv2d(64, channels, 3, padding=1)
        self.bn_out = nn.BatchNorm2d(channels, affine=False)

    # ---- latent -> trunk input --------------------------------------------------------------
    def embed(self, labels: Tensor, weights: Tensor, noise: Tensor) -> Tensor:
        """(B, K) labels, (B, K) lambda, (B, K, D) noise -> (B, trunk input)."""
        if self.latent_input == "multiplicative":     # original GDFQ: E[y] * z, no normaliser
            z = noise[:, 0]
            return z if self.conditional_bn else self.embeddings[labels[:, 0]] * z
        u = self.embeddings[labels] + self.noise_sigma * noise          # (B, K, D)
        if labels.shape[1] == 1:
            v = _standardize(u, (2,))                # per sample, over D
        else:
            v = _standardize(u, (0, 2))              # per slot, over the batch and D (§3.4)
        return torch.einsum("bk,bkd->bd", weights, self.dm(v))   # superpose after DM

    def render(self, g: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
        x = self.fc(g).view(g.shape[0], 128, self.h0, self.h0)
        x = self._bn(self.bn0, x, labels, weights)
        x = self.conv1(F.interpolate(x, scale_factor=2, mode="nearest"))
        x = F.leaky_relu(self._bn(self.bn1, x, labels, weights), 0.2)
        x = self.conv2(F.interpolate(x, scale_factor=2, mode="nearest"))
        x = F.leaky_relu(self._bn(self.bn2, x, labels, weights), 0.2)
        return self.bn_out(_center_crop(torch.tanh(self.conv3(x)), self.img_size))

    def _bn(self, bn: nn.Module, x: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
        return bn(x, labels, weights) if self.conditional_bn else bn(x)

    def forward(self, labels: Tensor, weights: Tensor, noise: Tensor,
                mixed: Tensor | None = None) -> Tensor:
        if mixed is None:
            g = self.embed(labels, weights, noise)
        else:   # per-sample mode: plain and superposed samples normalise differently
            g = torch.empty(labels.shape[0], self.fc.in_features, device=noise.device,
                            dtype=noise.dtype)
            g[mixed] = self.embed(labels[mixed], weights[mixed], noise[mixed])
            plain = ~mixed
            g[plain] = self.embed(labels[plain, :1], weights[plain, :1], noise[plain, :1])
        return self.render(g, labels, weights)

    def generate(self, lat: Latents) -> Tensor:
        return self(lat.labels, lat.weights, lat.noise, lat.mixed)
