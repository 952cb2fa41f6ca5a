"""The methods the harness runs and what each one sets: which fields belong to which method, the
switches that turn Qimera into each baseline, and the per-model constants of AdaDFQ and DSG
(docs/baselines.md). `qimera_core.config` builds configs from these; this module only knows the
methods, not the config."""

from __future__ import annotations

from typing import Any

# Generator methods train a generator and the student together (qimera_core.train); the
# post-training (PTQ) methods optimise a fixed set of images, calibrate and evaluate, with an
# optional fine-tuning of the student on that set (qimera_core.ptq; docs/baselines.md).
GENERATOR_METHODS = ("qimera", "gdfq", "adadfq", "zaq")
PTQ_METHODS = ("zeroq", "dsg")
METHODS = (*GENERATOR_METHODS, *PTQ_METHODS)
# The switches that turn Qimera into the GDFQ baseline (method doc §9.2).
GDFQ_SWITCHES: dict[str, Any] = dict(mix_prob=0.0, dm_layers=0, emb_init="random",
                                     freeze_embeddings=False)
# Fields only the generator methods use. A PTQ method keeps each at its PTQ_NEUTRAL value (the
# field's default, or the switch below), so its rows say "no superposition, no DM, no warm-up".
GENERATOR_FIELDS = ("mix_prob", "mix_classes", "mix_mode", "dm_layers", "dm_width",
                    "dm_activation", "noise_sigma", "emb_init", "freeze_embeddings",
                    "latent_input", "cbn_mix", "lr_generator", "adam_beta1", "adam_beta2",
                    "bns_weight", "warmup_epochs", "act_range_epochs", "act_ema_beta")
# Fields only the PTQ methods use; a generator method keeps them at their defaults.
PTQ_FIELDS = ("synth_iters", "synth_lr", "synth_patience", "synth_batches", "synth_init",
              "dsg_slack", "dsg_enhance", "dsg_eps", "dsg_slack_samples")
# Fields of one generator method each (baselines doc §3-4); every other method keeps them at
# their defaults.
ADADFQ_FIELDS = ("adadfq_alpha_ds", "adadfq_alpha_as", "adadfq_lambda_l", "adadfq_lambda_u",
                 "adadfq_beta", "adadfq_calibrate_twice")
ZAQ_FIELDS = ("zaq_alpha", "zaq_beta", "zaq_student_steps", "student_train_mode",
              "zaq_official_normalize")
METHOD_ONLY_FIELDS: dict[str, tuple[str, ...]] = {
    "zeroq": PTQ_FIELDS, "dsg": PTQ_FIELDS, "adadfq": ADADFQ_FIELDS, "zaq": ZAQ_FIELDS}
# What build(method="zaq") sets: an unconditional generator (no class input, so none of the
# class-conditional options, no BN statistics) with ZAQ's generator optimiser (Adam lr 1e-3,
# default betas). ZAQ_SCHEDULE (both lrs x0.1 at epochs 100 and 200, 300 epochs
# of 60 generator steps, batch 256) is set too, except on the short offline (digits) presets.
# The student keeps the harness's eval-mode BN, its optimiser and its warm-up (the ranges
# calibrate on a student that does not move yet): ZAQ's own student optimiser (SGD lr 0.1)
# diverges on an eval-mode student within steps (docs/baselines.md), so it goes with ZAQ's
# train-mode student, and its code has no warm-up: ZAQ_OFFICIAL_STUDENT (docs/baselines.md).
ZAQ_SWITCHES: dict[str, Any] = dict(
    GDFQ_SWITCHES, latent_input="unconditional", bns_weight=0.0, lr_generator=1e-3,
    adam_beta1=0.9)
ZAQ_OFFICIAL_STUDENT: dict[str, Any] = dict(student_train_mode=True, lr_student=0.1,
                                            weight_decay=5e-4, student_nesterov=False,
                                            warmup_epochs=0)
ZAQ_SCHEDULE: dict[str, Any] = dict(lr_milestones=(100, 200), epochs=300, steps_per_epoch=60,
                                    batch_size=256)
# Class-conditional options ZAQ's unconditional generator has no use for.
ZAQ_FIXED = ("mix_prob", "mix_classes", "dm_layers", "emb_init", "freeze_embeddings",
             "noise_sigma", "cbn_mix", "mix_mode")
# What build(method=<PTQ>) sets: no fine-tuning (epochs = 0) and ZeroQ's range rule, running
# min/max from 0 (baselines doc §1). ZeroQ's batch is 64 (its run.sh); DSG's is the number of
# BN layers of the teacher (build() counts them).
PTQ_SWITCHES: dict[str, Any] = dict(epochs=0, act_range_mode="minmax")
ZEROQ_BATCH = 64


def adadfq_constants(teacher: str, bits: int) -> dict[str, Any]:
    """AdaDFQ's per-model constants (its hocons, baselines doc §4; the 4/5-bit values from their
    comments): batch 16, student lr, lr steps, warm-up, alpha_ds/alpha_as, lambda_l/lambda_u,
    the student loss's T (20 in the CIFAR trainer, 5 in the ImageNet one) and BNS weight 1.
    Models without a hocon (digits, Table 10's) take the CIFAR or ResNet-18 row; a digits
    preset keeps its own short schedule."""
    base = dict(batch_size=16, bns_weight=1.0, adadfq_alpha_as=0.1, adadfq_lambda_u=0.8,
                adadfq_beta=1.0)
    if "cifar" in teacher or teacher.startswith("digits") or teacher.startswith("tiny"):
        row = dict(lr_student=1e-4, lr_milestones=(100, 200, 300), warmup_epochs=4,
                   adadfq_alpha_ds=0.2, adadfq_lambda_l=0.1, kd_temperature=20.0)
        if teacher.startswith(("digits", "tiny")):
            row = {k: row[k] for k in ("adadfq_alpha_ds", "adadfq_lambda_l", "kd_temperature")}
            base.pop("batch_size")
        return {**base, **row}
    if teacher == "resnet50":
        return {**base, "lr_student": 1e-4, "kd_temperature": 5.0,
                "lr_milestones": {4: (200, 300, 400), 5: (350, 400)}.get(bits, (150, 300, 400)),
                "warmup_epochs": 50 if bits in (4, 5) else 100,
                "adadfq_alpha_ds": 0.1 if bits == 4 else 0.2,
                "adadfq_lambda_l": 0.3 if bits in (4, 5) else 0.4}
    if teacher.startswith("mobilenetv2"):
        return {**base, "lr_student": 1e-5, "kd_temperature": 5.0, "lr_milestones": (350, 400),
                "warmup_epochs": 50, "adadfq_alpha_ds": 0.3 if bits == 4 else 0.2,
                "adadfq_lambda_l": 0.1}
    return {**base, "lr_student": 1e-5, "kd_temperature": 5.0, "lr_milestones": (350, 400),
            "warmup_epochs": 50, "adadfq_alpha_ds": 0.3 if bits == 5 else 0.2,
            "adadfq_lambda_l": 0.3 if bits in (4, 5) else 0.1}


def bn_layers(teacher: str) -> int:
    """The number of BatchNorm2d layers of a registered teacher (built on the meta device, no
    weights): DSG's batch size. A teacher without BN cannot run DSG or ZeroQ."""
    import torch  # late: keeps `import qimera_core.config` free of torch

    from qimera_core import teachers
    with torch.device("meta"):
        model = teachers.create(teacher)
    n = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    if n == 0:
        raise ValueError(f"teacher {teacher!r} has no BatchNorm2d layer: ZeroQ and DSG match "
                         "the teacher's BN statistics; choose a BN teacher")
    return n
