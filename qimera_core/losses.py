"""Losses (method doc §4): the teacher's BN-statistics loss, soft-label CE and KD."""

from __future__ import annotations

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
