"""Image synthesis for the post-training methods (baselines doc §1-2): ZeroQ's pixel
optimisation against the teacher's BatchNorm statistics, and DSG's slack alignment and
layerwise sample enhancement on top of it. `qimera_core.ptq` runs it, calibrates and evaluates.

For batch element b and BN layer l (the statistics of the BN's input, i.e. the conv output that
feeds it, per sample and channel over the spatial positions):

    mu_bl = mean,  sigma_bl = sqrt(unbiased var + 1e-6),  targets mu_l, sqrt(running var + 1e-6)
    t_bl  = || max(|mu_bl - mu_l| - delta_l, 0) ||^2
          + || max(|sigma_bl - sigma_l| - gamma_l, 0) ||^2
    loss  = (1/B) sum_b ( sum_l w_bl t_bl + input_b )

with the norms summed over channels and input_b the same two terms of the image itself against
mean 0 and std 1 per colour channel. ZeroQ: delta = gamma = 0, w = 1. DSG: delta_l, gamma_l the
`dsg_eps` percentile of the gaps of Gaussian images through the teacher (slack), and
w_bl = 1 + [b mod L == l] (enhancement; I + 11^T when B = L).

A pack optimises its members' batches as one teacher forward; each member keeps its own Adam and
plateau schedule (torch's classes, stepped on its own loss), so it equals the lone run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from qimera_core.config import TrainConfig

STD_EPS = 1e-6             # ZeroQ: sqrt(var + 1e-6), for both the samples and the targets
# ZeroQ's code: (randint(0, 255) - 127.5) / 5418.75, the variance (not the std) of U(-128, 127)
UNIFORM_DIVISOR = 5418.75
MIN_LR = 1e-4              # ZeroQ's ReduceLROnPlateau(factor 0.1, min_lr 1e-4)
SLACK_SEED = 20_21         # the Gaussian images of DSG's slacks: one fixed stream for every seed


class PerSampleBNStats:
    """The frozen teacher with a forward pre-hook on every BatchNorm2d: calling it returns the
    logits and, per BN layer, each sample's per-channel (mean, std) of the BN's input."""

    def __init__(self, teacher: nn.Module) -> None:
        bns = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
        if not bns:
            raise ValueError(f"{type(teacher).__name__} has no BatchNorm2d layer: ZeroQ and DSG "
                             "match the teacher's BN statistics; choose a BN teacher")
        self.teacher = teacher
        self.mean = [bn.running_mean.detach().float() for bn in bns]
        self.std = [torch.sqrt(bn.running_var.detach().float() + STD_EPS) for bn in bns]
        self._stats: list[tuple[Tensor, Tensor]] = []
        self._recording = False
        self._hooks = [bn.register_forward_pre_hook(self._record) for bn in bns]

    @property
    def layers(self) -> int:
        return len(self.mean)

    def _record(self, _bn: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if self._recording:
            self._stats.append(sample_stats(inputs[0].float()))

    def __call__(self, images: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        self._stats = []
        self._recording = True
        try:
            logits = self.teacher(images)
        finally:
            self._recording = False
        stats, self._stats = self._stats, []
        return logits, stats

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def sample_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and sqrt(unbiased variance + 1e-6) over the spatial dims of
    x (B, C, H, W): two (B, C) tensors."""
    var, mean = torch.var_mean(x.flatten(2), dim=2, correction=1)
    return mean, torch.sqrt(var + STD_EPS)


def layer_terms(stats: Sequence[tuple[Tensor, Tensor]], mean: Sequence[Tensor],
                std: Sequence[Tensor], delta: Tensor | None = None,
                gamma: Tensor | None = None) -> Tensor:
    """t_bl for every sample and BN layer, (B, L): the squared gaps summed over channels, less
    the slacks delta_l (means) and gamma_l (stds) where given."""
    out = []
    for li, ((mu, sd), m, s) in enumerate(zip(stats, mean, std, strict=True)):
        gm, gs = (mu - m.to(mu.device)).abs(), (sd - s.to(sd.device)).abs()
        if delta is not None:
            gm = (gm - delta[li]).clamp_min(0)
            gs = (gs - gamma[li]).clamp_min(0)
        out.append(gm.square().sum(1) + gs.square().sum(1))
    return torch.stack(out, 1)


def input_term(images: Tensor) -> Tensor:
    """The image's own term, (B,): its per-sample channel means against 0 and stds against 1."""
    mu, sd = sample_stats(images.float())
    return mu.square().sum(1) + (sd - 1.0).square().sum(1)


def enhancement_weights(batch: int, layers: int) -> Tensor:
    """DSG's layerwise sample enhancement: w_bl = 1 + [b mod L == l], (B, L)."""
    w = torch.ones(batch, layers)
    w[torch.arange(batch), torch.arange(batch) % layers] += 1.0
    return w


def synthesis_loss(terms: Tensor, inputs: Tensor, weights: Tensor | None = None) -> Tensor:
    """(1/B) sum_b (sum_l w_bl t_bl + input_b) per member: terms (N, B, L), inputs (N, B)
    give (N,)."""
    if weights is not None:
        terms = terms * weights.to(terms.device)
    return (terms.sum(-1) + inputs).mean(-1)


@dataclass(frozen=True)
class Slacks:
    """DSG's per-layer slacks: delta (means) and gamma (stds), (L,) each."""

    delta: Tensor
    gamma: Tensor


@torch.no_grad()
def dsg_slacks(bn: PerSampleBNStats, shape: Sequence[int], samples: int, eps: float,
               device: torch.device, batch: int = 64) -> Slacks:
    """The `eps` percentile, per BN layer, of |mu_bl - mu_l| and |sigma_bl - sigma_l| over the
    channels of `samples` N(0, 1) images (a fixed stream, SLACK_SEED) through the teacher."""
    g = torch.Generator().manual_seed(SLACK_SEED)
    gaps_m: list[list[Tensor]] = [[] for _ in range(bn.layers)]
    gaps_s: list[list[Tensor]] = [[] for _ in range(bn.layers)]
    for start in range(0, samples, batch):
        x = torch.randn(min(batch, samples - start), *shape, generator=g).to(device)
        _, stats = bn(x)
        for li, ((mu, sd), m, s) in enumerate(zip(stats, bn.mean, bn.std, strict=True)):
            gaps_m[li].append((mu - m.to(device)).abs().flatten().cpu())
            gaps_s[li].append((sd - s.to(device)).abs().flatten().cpu())

    def pct(parts: list[Tensor]) -> Tensor:
        return torch.quantile(torch.cat(parts).double(), eps).float()

    return Slacks(torch.stack([pct(p) for p in gaps_m]).to(device),
                  torch.stack([pct(p) for p in gaps_s]).to(device))


def batch_generator(seed: int, batch_index: int) -> torch.Generator:
    """The CPU stream of one synthesised batch: the same numbers on every device, and a batch
    redone after a kill starts where the first attempt did."""
    state = np.random.SeedSequence([seed, batch_index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def init_images(cfg: TrainConfig, shape: Sequence[int], batch_index: int) -> Tensor:
    """A batch's starting pixels (normalised input space): N(0, 1) (the papers), or ZeroQ's
    code, integers 0..254 less 127.5 over 5418.75 (about +-0.0235)."""
    g = batch_generator(cfg.seed, batch_index)
    size = (cfg.batch_size, *shape)
    if cfg.synth_init == "normal":
        return torch.randn(size, generator=g)
    return (torch.randint(0, 255, size, generator=g).float() - 127.5) / UNIFORM_DIVISOR


class Synthesizer:
    """Optimises one batch per member of a pack of PTQ configs (equal in all but the seed)."""

    def __init__(self, cfgs: Sequence[TrainConfig], teacher: nn.Module, shape: Sequence[int],
                 device: torch.device) -> None:
        self.cfgs, self.cfg, self.device = list(cfgs), cfgs[0], device
        self.shape = tuple(shape)
        self.bn = PerSampleBNStats(teacher)
        dsg = self.cfg.method == "dsg"
        self.slacks = (dsg_slacks(self.bn, shape, self.cfg.dsg_slack_samples, self.cfg.dsg_eps,
                                  device) if dsg and self.cfg.dsg_slack else None)
        self.weights = (enhancement_weights(self.cfg.batch_size, self.bn.layers).to(device)
                        if dsg and self.cfg.dsg_enhance else None)

    def loss(self, images: Tensor) -> Tensor:
        """Each member's loss, (N,), for images (N, B, C, H, W)."""
        n, b = images.shape[:2]
        flat = images.flatten(0, 1)
        if self.cfg.channels_last and flat.dim() == 4:
            flat = flat.contiguous(memory_format=torch.channels_last)
        _, stats = self.bn(flat)
        s = self.slacks
        terms = layer_terms(stats, self.bn.mean, self.bn.std,
                            s.delta if s else None, s.gamma if s else None)
        return synthesis_loss(terms.view(n, b, -1), input_term(flat).view(n, b), self.weights)

    def batch(self, batch_index: int) -> tuple[Tensor, list[float]]:
        """Batch `batch_index` of every member, (N, B, C, H, W), and each member's final loss."""
        cfg = self.cfg
        xs = [init_images(c, self.shape, batch_index).to(self.device).requires_grad_(True)
              for c in self.cfgs]
        opts = [torch.optim.Adam([x], lr=cfg.synth_lr) for x in xs]
        scheds = [torch.optim.lr_scheduler.ReduceLROnPlateau(
            o, mode="min", factor=0.1, patience=cfg.synth_patience, min_lr=MIN_LR) for o in opts]
        last = [math.nan] * len(xs)
        for _ in range(cfg.synth_iters):
            loss = self.loss(torch.stack(xs))
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.sum().backward()          # a sum: each member's pixels get their own gradient
            last = loss.detach().tolist()
            for o, sch, value in zip(opts, scheds, last, strict=True):
                o.step()
                sch.step(value)
        return torch.stack([x.detach() for x in xs]), last

    def close(self) -> None:
        self.bn.close()


# ---- memory, estimated before any work -------------------------------------------------------
def activation_bytes(teacher: nn.Module, shape: Sequence[int], device: torch.device) -> int:
    """Bytes of every module output of one sample's forward (float32)."""
    total = 0

    def count(_m: nn.Module, _i: tuple, out: object) -> None:
        nonlocal total
        if isinstance(out, Tensor):
            total += out.numel() * 4

    hooks = [m.register_forward_hook(count) for m in teacher.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            teacher(torch.zeros(1, *shape, device=device))
    finally:
        for h in hooks:
            h.remove()
    return total


def free_bytes(device: torch.device) -> int | None:
    """Memory free for this run: the GPU's free memory, or the host's MemAvailable (None when
    neither can be read)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# A forward + backward holds the saved activations, their gradients and conv workspaces: an
# allowance of 3 bytes per byte of forward outputs (an estimate to refuse hopeless batches before
# any work, not a measurement of peak memory).
BACKWARD_FACTOR = 3


def check_memory(cfgs: Sequence[TrainConfig], teacher: nn.Module, shape: Sequence[int],
                 device: torch.device, free: int | None = None) -> int:
    """Raise, naming the batch and the fix, if one synthesis step of the pack needs more memory
    than is free; returns the estimate in bytes."""
    cfg = cfgs[0]
    need = activation_bytes(teacher, shape, device) * cfg.batch_size * len(cfgs) * BACKWARD_FACTOR
    free = free_bytes(device) if free is None else free
    if free is not None and need > free:
        gib = 2.0**30
        raise ValueError(
            f"synthesising a batch of {cfg.batch_size} images for {len(cfgs)} seed(s) of "
            f"{cfg.teacher} needs about {need / gib:.1f} GiB (estimated: the teacher's "
            f"activations x {BACKWARD_FACTOR} for the backward), but {free / gib:.1f} GiB is "
            f"free on {device}; lower --batch-size (and raise --synth-batches for as many "
            "images), or pack fewer seeds")
    return need
