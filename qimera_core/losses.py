"""Losses (method doc §4): the teacher's BN-statistics loss, soft-label CE and KD; and the
baselines' own terms (baselines doc §3-4): AdaDFQ's margin and entropy losses, ZAQ's output
and stage-attention discrepancies."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TeacherWithBNStats:
    """Wraps the frozen teacher. Calling it returns its logits and the BN-statistics loss:
    the mean over BatchNorm2d layers of the mean-squared gap between the batch mean/biased
    variance of each layer's input and the layer's running statistics.

    It owns its forward hooks; teacher forwards outside `__call__` (evaluation) are not
    recorded, and `close()` removes the hooks. For a pack, the members' batches run through the
    teacher as one (N*B) batch and each member's statistics come from its own B samples.
    """

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher
        bns = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
        if not bns:
            raise ValueError(f"{type(teacher).__name__} has no BatchNorm2d layer: the generator "
                             "needs BN statistics to match; choose a BN teacher")
        # The running statistics never change (teacher in eval mode), so concatenate them
        # once; each element weighs 1/(C_l * L), making the loss one fused reduction.
        self._mean = torch.cat([bn.running_mean.detach().float() for bn in bns])
        self._var = torch.cat([bn.running_var.detach().float() for bn in bns])
        self._w = torch.cat([torch.full((bn.num_features,), 1.0 / (bn.num_features * len(bns)))
                             for bn in bns]).to(self._mean.device)
        self._means: list[Tensor] = []
        self._vars: list[Tensor] = []
        self._recording = False
        self._members = 1
        self._hooks = [bn.register_forward_pre_hook(self._record) for bn in bns]

    def _record(self, _bn: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if self._recording:
            x = _upcast(inputs[0])
            x = x.view(self._members, x.shape[0] // self._members, *x.shape[1:])  # (N, B, C, H, W)
            var, mean = torch.var_mean(x, dim=(1, 3, 4), correction=0)           # (N, C)
            self._means.append(mean)
            self._vars.append(var)

    def __call__(self, images: Tensor, members: int | None = None) -> tuple[Tensor, Tensor]:
        """Logits of `images` (N*B, ...) and the BNS loss per member, (N,); a plain scalar
        when `members` is None (one batch)."""
        self._means.clear()
        self._vars.clear()
        self._members = members or 1
        self._recording = True
        try:
            logits = self.teacher(images)
        finally:
            self._recording = False
        if self._mean.device != images.device:
            self._mean, self._var, self._w = (t.to(images.device)
                                              for t in (self._mean, self._var, self._w))
        gap = (torch.cat(self._means, 1) - self._mean).square() + \
              (torch.cat(self._vars, 1) - self._var).square()                    # (N, sum C_l)
        self._means.clear()
        self._vars.clear()
        loss = (gap * self._w).sum(1)
        return logits, (loss if members else loss[0])

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def _upcast(t: Tensor) -> Tensor:
    """bf16/fp16 (autocast) to float32 for reductions; float32 and float64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """-(1/B) sum_b sum_c y_bc log softmax(logits)_bc; plain CE for one-hot targets.

    (B, C) inputs give a scalar; a pack's (N, B, C) give one value per member, (N,).
    """
    return -(targets * F.log_softmax(_upcast(logits), dim=-1)).sum(-1).mean(-1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float,
            reduction: str = "elementwise_mean") -> Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)).

    `elementwise_mean` divides by B*C, as PyTorch's KLDivLoss default in the official code does
    (an effective KD weight of alpha*T^2/C); `batchmean` divides by B (the textbook KL).
    (B, C) inputs give a scalar; a pack's (N, B, C) give one value per member, (N,).
    """
    log_p_s = F.log_softmax(_upcast(student_logits) / temperature, dim=-1)
    p_t = F.softmax(_upcast(teacher_logits) / temperature, dim=-1)
    # Spelled out: PyTorch warns that its "mean" reduction will change meaning.
    batch, classes = p_t.shape[-2:]
    divisor = batch * classes if reduction == "elementwise_mean" else batch
    return F.kl_div(log_p_s, p_t, reduction="none").sum((-2, -1)) * (temperature**2 / divisor)


# ---- AdaDFQ (baselines doc §4) --------------------------------------------------------------
def entropy(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim, in nats: (..., C) -> (...)."""
    logp = F.log_softmax(_upcast(logits), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def adadfq_margin(disagreement: Tensor, lambda_l: float, lambda_u: float) -> Tensor:
    """AdaDFQ's margin term on d = t - s, (B, C) or a pack's (N, B, C):
    h_b = entropy(softmax(d_b)), h'_b = (h_b - min_b h) / (log C - min_b h) over the batch,
    mean_b max(lambda_l - h'_b, 0) + mean_b max(h'_b - lambda_u, 0)."""
    h = entropy(disagreement)
    lo = h.min(-1, keepdim=True).values
    hn = (h - lo) / (math.log(disagreement.shape[-1]) - lo)
    return (lambda_l - hn).clamp_min(0).mean(-1) + (hn - lambda_u).clamp_min(0).mean(-1)


def adadfq_student_loss(student_logits: Tensor, teacher_logits: Tensor,
                        temperature: float) -> Tensor:
    """-T^2 mean_b entropy(softmax((t_b - s_b) / T)): the student makes its disagreement with
    the teacher uniform (AdaDFQ's student loss, no CE)."""
    return -temperature**2 * entropy((teacher_logits - student_logits) / temperature).mean(-1)


# ---- ZAQ (baselines doc §3) -----------------------------------------------------------------
def _l2_channels(x: Tensor, official: bool = False) -> Tensor:
    """Each position's channel vector over its L2 norm. ZAQ's code calls F.normalize (eps
    1e-12), whose gradient at an all-zero vector is 1/eps = 1e12: quantized activations have
    such vectors, and one step then overflows. Here a vector with norm <= 1e-6 maps to 0 with a
    zero gradient (its direction is undefined); `official` keeps F.normalize."""
    if official:
        return F.normalize(x, dim=-3)
    norm = x.norm(dim=-3, keepdim=True)
    return torch.where(norm > 1e-6, x / norm.clamp_min(1e-6), torch.zeros_like(x))


def spatial_attention(x: Tensor) -> Tensor:
    """x + 0.1 * (x re-weighted by a softmax over the HW x HW affinity), per sample:
    (..., C, H, W). That is attention with the positions' channel vectors as queries, keys and
    values, unscaled: F.scaled_dot_product_attention, which on contiguous (M, 1, HW, C) input
    takes a fused kernel that never holds the HW x HW matrix (ZAQ's CPU step 2.2x faster at
    half the peak memory; docs/benchmarks.md)."""
    c, hw = x.shape[-3], x.shape[-2] * x.shape[-1]
    q = x.flatten(-2).transpose(-1, -2).reshape(-1, 1, hw, c).contiguous()   # (M, 1, HW, C)
    out = F.scaled_dot_product_attention(q, q, q, scale=1.0)                 # (M, 1, HW, C)
    return x + 0.1 * out.reshape(*x.shape[:-3], hw, c).transpose(-1, -2).reshape(x.shape)


def channel_attention(x: Tensor) -> Tensor:
    """x + 0.1 * (softmax over (row max - C x C affinity) applied to x): (..., C, H, W)."""
    f = x.flatten(-2)                                            # (..., C, HW)
    energy = f @ f.transpose(-1, -2)                             # (..., C, C)
    energy = energy.amax(-1, keepdim=True) - energy
    return x + 0.1 * (torch.softmax(energy, dim=-1) @ f).view_as(x)


def _l1(a: Tensor, b: Tensor, lead: int) -> Tensor:
    """Mean |a - b| over all but the first `lead` dims."""
    return (a - b).abs().flatten(lead).mean(-1)


def scrm(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], lead: int = 0,
         official_normalize: bool = False) -> Tensor:
    """ZAQ's stage-attention discrepancy: sum over stages of the L1 between the spatially
    attended maps plus the L1 between the channel-attended maps, each map L2-normalised over
    channels first. `lead` leading dims are kept (1 for a pack's (N, B, C, H, W) features)."""
    total = 0
    for s, t in zip(student_feats, teacher_feats, strict=True):
        s = _l2_channels(_upcast(s), official_normalize)
        t = _l2_channels(_upcast(t), official_normalize)
        total = total + _l1(spatial_attention(s), spatial_attention(t), lead) + \
            _l1(channel_attention(s), channel_attention(t), lead)
    return total


def logit_l1(student_logits: Tensor, teacher_logits: Tensor, lead: int = 0) -> Tensor:
    """ZAQ's output discrepancy: mean |s - t| (keeping `lead` leading dims)."""
    return _l1(_upcast(student_logits), _upcast(teacher_logits), lead)
