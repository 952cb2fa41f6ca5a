"""The Qimera generator: class embeddings plus noise, superposed with probability p over K
classes, through optional disentanglement-mapping (DM) layers into the GDFQ/ACGAN trunk. The
same trunk serves GDFQ's original input (class embedding times noise) and ZAQ's unconditional
one (noise alone, z in R^256, BN eps 1e-5).

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
    """One batch of generator inputs and the soft labels the teacher should assign to it.

    A pack's latents carry a leading member dimension N on every field (see `stack_latents`).
    """

    labels: Tensor          # (B, K) class indices
    weights: Tensor         # (B, K) lambda, rows sum to 1 (0 on padded slots)
    noise: Tensor           # (B, K, D) sigma * z, the noise added to each class embedding
    targets: Tensor         # (B, C) soft labels: sum_k lambda_k onehot(y_k)
    mixed: Tensor           # (B,) bool: superposed over K > 1 slots (standardised per slot, §3.4)


def sample_latents(batch: int, num_classes: int, latent_dim: int, *, mix_prob: float,
                   mix_classes: int, mix_mode: str, rng: torch.Generator,
                   coin: torch.Generator, device: torch.device,
                   noise_sigma: float = 1.0) -> Latents:
    """Labels uniform with replacement, lambda = softmax of Gaussian draws (method doc §3.4).

    `coin` is a CPU generator for the per-batch superposition decision (no device sync);
    `rng` draws everything else on `device`. The noise is scaled by `noise_sigma` here, so the
    generator holds no per-run value besides its weights (packs stack generators).
    """
    superpose = mix_prob > 0 and (mix_mode == "sample"
                                  or torch.rand((), generator=coin).item() < mix_prob)
    k = mix_classes if superpose else 1
    labels = torch.randint(num_classes, (batch, k), generator=rng, device=device)
    noise = torch.randn(batch, k, latent_dim, generator=rng, device=device)
    if noise_sigma != 1.0:
        noise = noise_sigma * noise
    if k > 1:
        weights = torch.softmax(torch.randn(batch, k, generator=rng, device=device), dim=1)
    else:
        weights = torch.ones(batch, 1, device=device)
    if superpose and mix_mode == "sample":
        mixed = torch.rand(batch, generator=rng, device=device) < mix_prob
        # plain samples keep slot 0 only: weight 1 there, 0 elsewhere
        plain_w = F.one_hot(torch.zeros_like(labels[:, 0]), k).to(weights.dtype)
        weights = torch.where(mixed[:, None], weights, plain_w)
    else:
        mixed = torch.full((batch,), superpose, dtype=torch.bool, device=device)
    if k == 1:                             # one slot: standardised per sample like a plain one
        mixed = torch.zeros_like(mixed)
    targets = torch.zeros(batch, num_classes, device=device).scatter_add_(1, labels, weights)
    return Latents(labels, weights, noise, targets, mixed)


def stack_latents(lats: list[Latents]) -> Latents:
    """Members' latents as one pack batch with a leading member dimension N.

    Members may superpose different numbers of slots (K, or 1 for a plain batch): slots are
    padded to the largest with weight 0, so they add nothing to the superposition, the soft
    labels or (being standardised on their own) to the other slots.
    """
    if len(lats) == 1:
        lat = lats[0]
        return Latents(lat.labels[None], lat.weights[None], lat.noise[None], lat.targets[None],
                       lat.mixed[None])
    k = max(lat.labels.shape[1] for lat in lats)

    def pad(t: Tensor) -> Tensor:          # (B, k_i, ...) -> (B, k, ...), zeros appended
        extra = k - t.shape[1]
        if extra == 0:
            return t
        return torch.cat([t, t.new_zeros(t.shape[0], extra, *t.shape[2:])], dim=1)

    return Latents(torch.stack([pad(lat.labels) for lat in lats]),
                   torch.stack([pad(lat.weights) for lat in lats]),
                   torch.stack([pad(lat.noise) for lat in lats]),
                   torch.stack([lat.targets for lat in lats]),
                   torch.stack([lat.mixed for lat in lats]))


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


def _standardize_slots(u: Tensor, rows: Tensor) -> Tensor:
    """Standardise each slot k of u (B, K, D) over the samples where `rows` (B,) is true and
    all D coordinates (biased variance). Masked rather than indexed, so that it has one shape
    whatever `rows` holds (vmap over a pack needs that)."""
    m = rows.to(u.dtype)[:, None, None]                           # (B, 1, 1)
    count = (m.sum() * u.shape[2]).clamp_min(1)
    mean = (u * m).sum((0, 2), keepdim=True) / count               # (1, K, 1)
    var = ((u - mean).square() * m).sum((0, 2), keepdim=True) / count
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
                 dm_layers: int = 1, dm_width: int = 100,
                 dm_activation: str = "leaky_relu", embeddings: Tensor | None = None,
                 freeze_embeddings: bool = False, conditional_bn: bool = False,
                 latent_input: str = "additive", cbn_mix: str = "mean"):
        super().__init__()
        self.num_classes, self.latent_dim = num_classes, latent_dim
        self.latent_input = latent_input
        self.conditional_bn = conditional_bn
        emb = embeddings.detach().clone().float() if embeddings is not None \
            else torch.randn(num_classes, latent_dim)
        if emb.shape != (num_classes, latent_dim):
            raise ValueError(f"embeddings must be ({num_classes}, {latent_dim}), "
                             f"got {tuple(emb.shape)}")
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
        # 0.8 is eps, as in the official code (§11 #20); ZAQ's unconditional trunk uses 1e-5
        eps = 1e-5 if latent_input == "unconditional" else 0.8
        self.bn1 = bn(128, eps)
        self.conv2 = nn.Conv2d(128, 64, 3, padding=1)
        self.bn2 = bn(64, eps)
        self.conv3 = nn.Conv2d(64, channels, 3, padding=1)
        self.bn_out = nn.BatchNorm2d(channels, affine=False)

    # ---- latent -> trunk input --------------------------------------------------------------
    def embed(self, labels: Tensor, weights: Tensor, noise: Tensor, mixed: Tensor) -> Tensor:
        """(B, K) labels, (B, K) lambda, (B, K, D) noise, (B,) mixed -> (B, trunk input).

        Plain samples are standardised per sample over D; superposed ones (`mixed`) per slot
        over the superposed samples and D (§3.4). Both are computed and one is picked per
        sample, so a batch of any mixture has one code path (and one shape under vmap).
        """
        if self.latent_input == "unconditional":      # ZAQ: z alone, no class
            return noise[:, 0]
        if self.latent_input == "multiplicative":     # original GDFQ: E[y] * z, no normaliser
            z = noise[:, 0]
            return z if self.conditional_bn else self.embeddings[labels[:, 0]] * z
        u = self.embeddings[labels] + noise                               # (B, K, D)
        v = torch.where(mixed[:, None, None], _standardize_slots(u, mixed),
                        _standardize(u, (2,)))
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
        """`noise` is sigma * z; `mixed` defaults to "superposed iff K > 1"."""
        if mixed is None:
            mixed = torch.full(labels.shape[:1], labels.shape[1] > 1, dtype=torch.bool,
                               device=labels.device)
        return self.render(self.embed(labels, weights, noise, mixed), labels, weights)

    def generate(self, lat: Latents) -> Tensor:
        return self(lat.labels, lat.weights, lat.noise, lat.mixed)
