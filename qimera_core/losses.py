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
    recorded, and `close()` removes the hooks.
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
        self._hooks = [bn.register_forward_pre_hook(self._record) for bn in bns]

    def _record(self, _bn: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if self._recording:
            var, mean = torch.var_mean(inputs[0].float(), dim=(0, 2, 3), correction=0)
            self._means.append(mean)
            self._vars.append(var)

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        self._means.clear()
        self._vars.clear()
        self._recording = True
        try:
            logits = self.teacher(images)
        finally:
            self._recording = False
        if self._mean.device != images.device:
            self._mean, self._var, self._w = (t.to(images.device)
                                              for t in (self._mean, self._var, self._w))
        gap = (torch.cat(self._means) - self._mean).square() + \
              (torch.cat(self._vars) - self._var).square()
        self._means.clear()
        self._vars.clear()
        return logits, (gap * self._w).sum()

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """-(1/B) sum_b sum_c y_bc log softmax(logits)_bc; plain CE for one-hot targets."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float,
            reduction: str = "elementwise_mean") -> Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)).

    `elementwise_mean` divides by B*C, as PyTorch's KLDivLoss default in the official code does
    (an effective KD weight of alpha*T^2/C); `batchmean` divides by B (the textbook KL).
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    p_t = F.softmax(teacher_logits.float() / temperature, dim=1)
    # Spelled out: PyTorch warns that its "mean" reduction will change meaning.
    divisor = p_t.numel() if reduction == "elementwise_mean" else p_t.shape[0]
    return F.kl_div(log_p_s, p_t, reduction="sum") * (temperature**2 / divisor)
