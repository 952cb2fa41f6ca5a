"""What a run is built from: its device, the teacher and its quantized copy, the generator.

Below `checkpoint` (which rebuilds a trial's models from here) and `step`/`train`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from qimera_core import models, quant
from qimera_core.config import TrainConfig
from qimera_core.generator import Generator

ZAQ_LATENT = 256


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device='cpu' "
                         "or 'auto'")
    return torch.device(name)


def set_tf32(mode: str, device: torch.device) -> None:
    """cfg.tf32 on a CUDA device (process-wide flags; a no-op on the CPU): "conv" keeps
    PyTorch's defaults (cuDNN convolutions may use TF32, matmuls stay fp32), "off" makes both
    full fp32, "all" lets both use TF32. Only Ampere and newer GPUs have TF32."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.allow_tf32 = mode in ("conv", "all")
    torch.backends.cuda.matmul.allow_tf32 = mode == "all"


def build_models(cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, nn.Module, Generator]:
    """Teacher (FP, eval, frozen), its quantized copy (eval mode throughout, §2.4), generator."""
    teacher, student = build_networks(cfg, device)
    return teacher, student, build_generator(cfg, models.spec(cfg.teacher), teacher, device)


def build_networks(cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The teacher and its quantized copy: what every member of a pack shares or starts from."""
    spec = models.spec(cfg.teacher)
    set_tf32(cfg.tf32, device)
    teacher = models.load_teacher(cfg).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = quant.quantize(copy.deepcopy(teacher), w_bits=cfg.w_bits, a_bits=cfg.a_bits,
                             act_mode=cfg.act_range_mode, act_beta=cfg.act_ema_beta,
                             sites=cfg.act_quant_sites)
    quant.audit_activations(student, torch.zeros(2, *spec.input_shape, device=device),
                            sites=cfg.act_quant_sites)
    for p in student.parameters():
        p.requires_grad_(True)
    student.eval()
    if cfg.channels_last:
        for m in (teacher, student):
            m.to(memory_format=torch.channels_last)
    return teacher, student


def build_generator(cfg: TrainConfig, spec: models.TeacherSpec, teacher: nn.Module,
                    device: torch.device | None = None,
                    freeze_embeddings: bool | None = None) -> Generator:
    """The run's generator, in train mode. Its initialisation depends on `cfg.seed` alone (the
    global RNG is seeded here), so a pack member's generator equals the one it builds alone.
    `freeze_embeddings=False` overrides the config (a pack freezes by masking gradients)."""
    torch.manual_seed(cfg.seed)
    weight = models.classifier_weight(teacher)                  # (C, D)
    # the latent width: the classifier's (Qimera's embeddings), 100 (GDFQ's original), 256 (ZAQ)
    width = {"multiplicative": 100, "unconditional": ZAQ_LATENT}
    channels, height, _ = spec.input_shape
    freeze = cfg.freeze_embeddings if freeze_embeddings is None else freeze_embeddings
    g = Generator(
        num_classes=spec.num_classes, latent_dim=width.get(cfg.latent_input, weight.shape[1]),
        img_size=height, channels=channels,
        dm_layers=cfg.dm_layers, dm_width=cfg.dm_width, dm_activation=cfg.dm_activation,
        embeddings=weight if cfg.emb_init == "extracted" else None,
        freeze_embeddings=freeze,
        conditional_bn=height >= 64 and cfg.latent_input != "unconditional",
        latent_input=cfg.latent_input, cbn_mix=cfg.cbn_mix).to(device or weight.device).train()
    if cfg.channels_last:
        g.to(memory_format=torch.channels_last)
    return g
