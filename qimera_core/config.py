"""TrainConfig: the one frozen description of a run, its checks, `build` (a preset of
qimera_core/presets.py plus overrides), and CLI flags made from it.

Field names are also the CLI flags (`mix_prob` -> `--mix-prob`), the sweep keys and the
Parquet columns. Each field's `help` metadata says what it means (paper symbols in parentheses)
and is its flag's --help text.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .methods import (  # noqa: F401  (re-exported: config.X is how callers name them)
    ADADFQ_FIELDS,
    GDFQ_SWITCHES,
    GENERATOR_FIELDS,
    GENERATOR_METHODS,
    METHOD_ONLY_FIELDS,
    METHODS,
    PTQ_FIELDS,
    PTQ_METHODS,
    PTQ_SWITCHES,
    ZAQ_FIELDS,
    ZAQ_FIXED,
    ZAQ_OFFICIAL_STUDENT,
    ZAQ_SCHEDULE,
    ZAQ_SWITCHES,
    ZEROQ_BATCH,
    adadfq_constants,
    bn_layers,
)
from .presets import (  # noqa: F401  (re-exported: config.PRESETS is how callers name them)
    OFFICIAL_EMB_INIT,
    PAPER_PRESETS,
    PRESETS,
    TABLE10_PRESETS,
)

# plus npz:PATH and imagenet:PATH
EVAL_DATA = ("cifar10", "cifar100", "imagenet", "digits", "synthetic")
NORMALIZATIONS = ("auto", "cifar10", "cifar10-zeroq", "cifar100", "imagenet", "digits", "none")
DEVICES = ("auto", "cpu", "cuda")
# Fields that say where or how fast a run happens, not what it computes: left out of the
# config hash so that the same trial on another machine or cache is recognised as done.
RUN_ONLY_FIELDS = ("device", "num_threads", "cache_dir")
# Fields added after results were recorded, with the value that reproduces those results: left
# out of the config hash at that value, so finished trials keep their hash. (act_quant_sites:
# every teacher that ran before quantizes identically in "call_site" mode, see quant.quantize.)
HASH_DEFAULTS: dict[str, Any] = {"act_quant_sites": "call_site", "tf32": "conv",
                                 "student_nesterov": True, "adadfq_alpha_ds": 0.2,
                                 "adadfq_alpha_as": 0.1, "adadfq_lambda_l": 0.1,
                                 "adadfq_lambda_u": 0.8, "adadfq_beta": 1.0,
                                 "adadfq_calibrate_twice": False, "zaq_alpha": 1.0,
                                 "zaq_beta": 0.1, "zaq_student_steps": 5,
                                 "student_train_mode": False, "zaq_official_normalize": False,
                                 "synth_iters": 500, "synth_lr": 0.5, "synth_patience": 100,
                                 "synth_batches": 1, "synth_init": "normal", "dsg_slack": True,
                                 "dsg_enhance": True, "dsg_eps": 0.9, "dsg_slack_samples": 256}
TF32_MODES = ("conv", "off", "all")


def default_cache_dir() -> str:
    return os.environ.get("QIMERA_CACHE", str(Path("~/.cache/qimera-sweeps").expanduser()))


def _f(default: Any, help: str) -> Any:
    """A field with its meaning, written once: `help` becomes its CLI flag's --help."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything one Qimera/GDFQ run depends on. Defaults = CIFAR-10 ResNet-20 4w4a (paper).

    Each field's `help` (its meaning, paper symbol in parentheses) is its CLI flag's --help.
    """

    # what to quantize and how to evaluate it
    teacher: str = _f("resnet20_cifar10", "teacher to quantize: a registry name, see "
                                          "qimera_core.models.TEACHERS")
    teacher_weights: str = _f("", "teacher weights file; '' = the prepared cache; "
                                  "'random' = random init (tests)")
    eval_data: str = _f("cifar10", "test data: cifar10 | cifar100 | imagenet[:VALDIR] | "
                                   "npz:PATH | digits | synthetic")
    normalization: str = _f("auto", "test-image normalisation: auto (the teacher's own) | "
                                    "cifar10 | cifar10-zeroq (ZeroQ's std) | cifar100 | "
                                    "imagenet | digits | none")
    eval_batch_size: int = _f(200, "batch size of the test-set evaluation")
    eval_limit: int = _f(0, "evaluate on the first N test images only (0 = all)")
    cache_dir: str = _f("", "datasets and teacher weights; '' = $QIMERA_CACHE "
                            "(default ~/.cache/qimera-sweeps)")
    w_bits: int = _f(4, "student weight bits (2..8)")
    a_bits: int = _f(4, "student activation bits (2..8)")

    # the method: Qimera knobs
    method: str = _f("qimera", "qimera | gdfq (gdfq applies GDFQ_SWITCHES: no superposition, "
                               "no DM, random embeddings) | adadfq | zaq (generator baselines "
                               "on the same loop) | zeroq | dsg (post-training: synthesised "
                               "images, calibration, evaluation; epochs > 0 adds KD "
                               "fine-tuning on those images)")
    mix_prob: float = _f(0.4, "(p) probability that a batch is superposed")
    mix_classes: int = _f(2, "(K) class embeddings superposed per sample")
    mix_mode: str = _f("batch", "batch (official: the whole batch with probability p) | "
                                "sample (each sample with probability p)")
    dm_layers: int = _f(1, "disentanglement-mapping (DM) layers; 0 turns DM off")
    dm_width: int = _f(100, "DM output width (official: 100)")
    dm_activation: str = _f("leaky_relu", "activation between stacked DM layers: none | relu | "
                                          "leaky_relu")
    noise_sigma: float = _f(1.0, "(sigma) scale of the noise added to class embeddings")
    emb_init: str = _f("extracted", "class embeddings: extracted (the teacher's classifier "
                                    "rows) | random N(0,1)")
    freeze_embeddings: bool = _f(False, "keep extracted embeddings fixed (supplement Table 7)")
    latent_input: str = _f("additive", "generator input: additive (Qimera) | multiplicative "
                                       "(original GDFQ) | unconditional (ZAQ: z in R^256, no "
                                       "class)")
    cbn_mix: str = _f("mean", "ImageNet generator's conditional BN under superposition: "
                              "mean (official) | sum")

    # optimisation
    epochs: int = _f(400, "training epochs, warm-up included")
    steps_per_epoch: int = _f(200, "generator (and student) steps per epoch")
    batch_size: int = _f(200, "generated images per step")
    warmup_epochs: int = _f(4, "generator-only epochs before the student trains; start_top1 "
                               "is measured at their end (NaN if 0)")
    act_range_epochs: int = _f(4, "epochs in which activation ranges follow the batches "
                                  "(see act_range_mode); then they freeze")
    act_range_mode: str = _f("official", "activation-range update: official (EMA with "
                                         "compounding bias correction) | ema (plain EMA) | "
                                         "minmax (ZeroQ: running min/max from 0)")
    act_ema_beta: float = _f(0.9, "EMA decay of the activation ranges, in (0, 1)")
    act_quant_sites: str = _f("call_site", "activation quantizers: call_site (one per ReLU "
                                           "call) | module (official: one per ReLU module)")
    lr_student: float = _f(1e-4, "student learning rate (SGD)")
    student_nesterov: bool = _f(True, "student SGD with Nesterov momentum (ZAQ: plain)")
    lr_generator: float = _f(1e-3, "generator learning rate (Adam)")
    lr_milestones: tuple[int, ...] = _f((100, 200, 300), "epochs at which both learning "
                                                         "rates are multiplied by lr_gamma")
    lr_gamma: float = _f(0.1, "learning-rate factor at each of lr_milestones")
    momentum: float = _f(0.9, "student SGD (Nesterov) momentum")
    weight_decay: float = _f(1e-4, "student SGD weight decay")
    adam_beta1: float = _f(0.5, "generator Adam beta1")
    adam_beta2: float = _f(0.999, "generator Adam beta2")
    bns_weight: float = _f(0.1, "weight of the BN-statistics loss in the generator loss")
    kd_temperature: float = _f(20.0, "(T) knowledge-distillation temperature")
    kd_alpha: float = _f(1.0, "(alpha) weight of the KD loss in the student loss "
                              "(alpha * KD + CE)")
    kd_reduction: str = _f("elementwise_mean", "KD loss reduction: elementwise_mean "
                                               "(official KLDivLoss) | batchmean")
    eval_every: int = _f(1, "evaluate every N epochs from eval_start_epoch on (the end of the "
                            "warm-up and the last epoch always)")
    eval_start_epoch: int = _f(0, "first epoch evaluated (official ImageNet: 49)")

    # AdaDFQ (baselines doc §4): its generator loss and student loss; the student's entropy
    # loss uses kd_temperature as its T, the BNS weight is bns_weight (gamma)
    adadfq_alpha_ds: float = _f(0.2, "adadfq: (alpha_ds) weight of CE(softmax(t - s), y)")
    adadfq_alpha_as: float = _f(0.1, "adadfq: (alpha_as) weight of CE(softmax(t + s), y)")
    adadfq_lambda_l: float = _f(0.1, "adadfq: (lambda_l) lower bound of the margin on the "
                                     "normalised disagreement entropy")
    adadfq_lambda_u: float = _f(0.8, "adadfq: (lambda_u) upper bound of that margin")
    adadfq_beta: float = _f(1.0, "adadfq: (beta) weight of the two CE terms")
    adadfq_calibrate_twice: bool = _f(False, "adadfq: in calibration epochs, the warm-up's "
                                             "calibration forward moves the ranges besides the "
                                             "generator step's student forward (AdaDFQ's code: "
                                             "two range updates a step, the others one)")

    # ZAQ (baselines doc §3)
    zaq_alpha: float = _f(1.0, "zaq: (alpha) weight of the stage-attention discrepancy (SCRM)")
    zaq_beta: float = _f(0.1, "zaq: (beta) weight of the activation-magnitude term in the "
                              "generator loss")
    zaq_student_steps: int = _f(5, "zaq: student steps per generator step, each on fresh z")
    student_train_mode: bool = _f(False, "zaq: the student's BN in train mode (batch "
                                         "statistics, running statistics from synthetic "
                                         "data; ZAQ's code) instead of eval mode")
    zaq_official_normalize: bool = _f(False, "zaq: F.normalize as ZAQ's code (gradient 1e12 at "
                                             "all-zero channel vectors) instead of a zero "
                                             "gradient there")

    # post-training methods (zeroq, dsg): image synthesis; batch_size images per batch
    synth_iters: int = _f(500, "zeroq/dsg: Adam iterations per synthesised batch")
    synth_lr: float = _f(0.5, "zeroq/dsg: Adam learning rate on the pixels")
    synth_patience: int = _f(100, "zeroq/dsg: ReduceLROnPlateau patience (factor 0.1, "
                                  "min lr 1e-4, stepped on the loss every iteration)")
    synth_batches: int = _f(1, "zeroq/dsg: batches synthesised (each of batch_size images)")
    synth_init: str = _f("normal", "zeroq/dsg: pixel init: normal (the papers, N(0,1)) | "
                                   "uniform (ZeroQ's code, +-0.0235)")
    dsg_slack: bool = _f(True, "dsg: slack distribution alignment (per-layer slacks from "
                               "Gaussian data)")
    dsg_enhance: bool = _f(True, "dsg: layerwise sample enhancement (weights I + 11^T)")
    dsg_eps: float = _f(0.9, "dsg: (epsilon) percentile of the Gaussian data's statistic gaps "
                             "taken as the slack")
    dsg_slack_samples: int = _f(256, "dsg: Gaussian images through the teacher for the slacks "
                                     "(not stated by the paper)")

    # run
    seed: int = _f(0, "random seed: generator init, latents and superposition draws")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    num_threads: int = _f(0, "torch intra-op threads; 0 = all CPUs this process may use")
    channels_last: bool = _f(True, "NHWC memory format (faster convs on CPU and GPU)")
    amp_bf16: bool = _f(False, "CUDA only: bf16 autocast for the teacher and generator "
                               "forwards")
    tf32: str = _f("conv", "CUDA (Ampere+) only: conv (PyTorch's default: cuDNN convs TF32, "
                           "matmuls fp32) | off (all fp32) | all")

    def __post_init__(self) -> None:
        _validate(self)

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a flat dict (a sweep trial, a Parquet row, a checkpoint); unknown keys
        fail."""
        unknown = sorted(set(d) - FIELD_NAMES)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys are the TrainConfig "
                             f"fields: {sorted(FIELD_NAMES)}")
        return cls(**{k: _coerce(k, v) for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def config_hash(self) -> str:
        """Content hash of everything that decides the result (seed included)."""
        d = {k: v for k, v in self.to_dict().items() if k not in RUN_ONLY_FIELDS
             and not (k in HASH_DEFAULTS and v == HASH_DEFAULTS[k])}
        blob = json.dumps(d, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir or default_cache_dir()).expanduser()


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
FIELD_NAMES = frozenset(FIELDS)
# The generator-only fields' values in a PTQ run: their defaults, with GDFQ's switches (no
# superposition, no DM, random embeddings) and no warm-up.
PTQ_NEUTRAL: dict[str, Any] = {**{k: FIELDS[k].default for k in GENERATOR_FIELDS},
                               **GDFQ_SWITCHES, "warmup_epochs": 0}
_HINTS = typing.get_type_hints(TrainConfig)


def _coerce(key: str, value: Any) -> Any:
    """Lists (from JSON, Parquet or Tune) become tuples; numpy scalars become Python scalars."""
    hint = _HINTS[key]
    if hint == tuple[int, ...]:
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        return tuple(int(v) for v in value)
    if hasattr(value, "item") and not isinstance(value, (list, tuple, str)):
        value = value.item()
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def _check_method_fields(c: TrainConfig) -> None:
    """A PTQ method given a generator-only option, or a generator method given a PTQ-only
    option: one line naming the fields and the fix."""
    if c.method in PTQ_METHODS:
        bad = {k: getattr(c, k) for k in GENERATOR_FIELDS if getattr(c, k) != PTQ_NEUTRAL[k]}
        _check(not bad, f"method={c.method!r} is post-training (no generator, no warm-up), but "
                        f"this config sets generator options {bad}; drop them (--method "
                        f"{c.method} and build(method={c.method!r}) set them to "
                        f"{ {k: PTQ_NEUTRAL[k] for k in bad} }), or use a generator method "
                        "(qimera, gdfq)")
    else:
        bad = {k: getattr(c, k) for k in PTQ_FIELDS if getattr(c, k) != FIELDS[k].default}
        _check(not bad, f"method={c.method!r} trains a generator, but this config sets "
                        f"post-training options {bad}; drop them, or use method 'zeroq' or "
                        "'dsg'")
    for method, names in (("adadfq", ADADFQ_FIELDS), ("zaq", ZAQ_FIELDS)):
        if c.method != method:
            bad = {k: getattr(c, k) for k in names if getattr(c, k) != FIELDS[k].default}
            _check(not bad, f"{bad} are {method}'s options, but method={c.method!r}; drop "
                            f"them, or use method={method!r}")
    if c.method == "zaq":
        want = {k: ZAQ_SWITCHES.get(k, FIELDS[k].default) for k in (*ZAQ_FIXED, "latent_input")}
        bad = {k: getattr(c, k) for k in want if getattr(c, k) != want[k]}
        _check(not bad, f"method='zaq' has an unconditional generator (no class input), but this "
                        f"config sets class-conditional options {bad}; drop them (--method zaq "
                        "and build(method='zaq') set them)")
    elif c.latent_input == "unconditional":
        _check(False, "latent_input='unconditional' is ZAQ's generator; use method='zaq'")
    if c.method == "adadfq":
        _check(c.batch_size >= 2, "method='adadfq' normalises its margin term's entropies over "
                                  f"the batch (min to log C), which needs batch_size >= 2, got "
                                  f"{c.batch_size}")
        _check(0 <= c.adadfq_lambda_l <= c.adadfq_lambda_u <= 1,
               "adadfq_lambda_l and adadfq_lambda_u bound a normalised entropy: they need "
               f"0 <= lambda_l <= lambda_u <= 1, got {c.adadfq_lambda_l}, {c.adadfq_lambda_u}")


def _validate(c: TrainConfig) -> None:  # noqa: C901 - a flat list of checks reads best
    for name, hint in _HINTS.items():
        v = getattr(c, name)
        if hint is bool:
            _check(isinstance(v, bool), f"{name} must be true or false, got {v!r}")
        elif hint is int:
            _check(isinstance(v, int) and not isinstance(v, bool),
                   f"{name} must be an integer, got {v!r}")
        elif hint is float:
            _check(isinstance(v, (int, float)) and not isinstance(v, bool),
                   f"{name} must be a number, got {v!r}")
        elif hint is str:
            _check(isinstance(v, str), f"{name} must be a string, got {v!r}")
    _check(2 <= c.w_bits <= 8, f"w_bits must be in 2..8, got {c.w_bits}")
    _check(2 <= c.a_bits <= 8, f"a_bits must be in 2..8, got {c.a_bits}")
    _check(c.method in METHODS, f"method must be one of {METHODS}, got {c.method!r}")
    _check_method_fields(c)
    if c.method == "gdfq":
        bad = {k: getattr(c, k) for k, v in GDFQ_SWITCHES.items() if getattr(c, k) != v}
        _check(not bad, f"method='gdfq' means {GDFQ_SWITCHES}, but this config sets {bad}. "
                        "Build it with qimera_core.config.build(method='gdfq', ...) or "
                        "the CLI's --method gdfq, which apply the switches, or use method='qimera'")
    _check(0.0 <= c.mix_prob <= 1.0, f"mix_prob (p) must be in [0, 1], got {c.mix_prob}")
    _check(c.mix_classes >= 1, f"mix_classes (K) must be >= 1, got {c.mix_classes}")
    _check(c.mix_mode in ("batch", "sample"),
           f"mix_mode must be 'batch' (official) or 'sample', got {c.mix_mode!r}")
    _check(c.dm_layers >= 0, f"dm_layers must be >= 0 (0 turns DM off), got {c.dm_layers}")
    _check(c.dm_width >= 1, f"dm_width must be >= 1, got {c.dm_width}")
    _check(c.dm_activation in ("none", "relu", "leaky_relu"),
           f"dm_activation must be none, relu or leaky_relu, got {c.dm_activation!r}")
    _check(c.noise_sigma >= 0, f"noise_sigma (sigma) must be >= 0, got {c.noise_sigma}")
    _check(c.emb_init in ("extracted", "random"),
           f"emb_init must be 'extracted' or 'random', got {c.emb_init!r}")
    _check(not (c.freeze_embeddings and c.emb_init == "random"),
           "freeze_embeddings=True keeps the teacher's classifier rows fixed and needs "
           "emb_init='extracted'; set emb_init='extracted' or freeze_embeddings=False")
    _check(c.latent_input in ("additive", "multiplicative", "unconditional"),
           "latent_input must be 'additive', 'multiplicative' or 'unconditional', "
           f"got {c.latent_input!r}")
    _check(c.zaq_student_steps >= 1,
           f"zaq_student_steps must be >= 1, got {c.zaq_student_steps}")
    if c.latent_input == "multiplicative":
        _check(c.mix_prob == 0 and c.dm_layers == 0 and c.emb_init == "random",
               "latent_input='multiplicative' is the original GDFQ generator input: it needs "
               "mix_prob=0, dm_layers=0 and emb_init='random' (use method='gdfq')")
    _check(c.cbn_mix in ("mean", "sum"), f"cbn_mix must be 'mean' or 'sum', got {c.cbn_mix!r}")
    for name in ("steps_per_epoch", "batch_size", "eval_batch_size", "eval_every"):
        _check(getattr(c, name) >= 1, f"{name} must be >= 1, got {getattr(c, name)}")
    if c.method in PTQ_METHODS:
        _check(c.epochs >= 0, f"epochs (KD fine-tuning epochs of a {c.method} run; 0 = none) "
                              f"must be >= 0, got {c.epochs}")
    else:
        _check(c.epochs >= 1, f"epochs must be >= 1, got {c.epochs}")
    if c.method in GENERATOR_METHODS:
        _check(c.batch_size >= 2, "batch_size must be >= 2: the generator's BatchNorm needs "
                                  f"at least two samples, got {c.batch_size}")
    _check(0 <= c.warmup_epochs <= c.epochs,
           f"warmup_epochs must be in 0..epochs ({c.epochs}), got {c.warmup_epochs}")
    _check(c.act_range_epochs >= 1, "act_range_epochs must be >= 1: activation ranges need "
                                    f"at least one calibration epoch, got {c.act_range_epochs}")
    _check(c.act_range_mode in ("official", "ema", "minmax"),
           f"act_range_mode must be 'official', 'ema' or 'minmax', got {c.act_range_mode!r}")
    for name in ("synth_iters", "synth_batches", "synth_patience", "dsg_slack_samples"):
        _check(getattr(c, name) >= 1, f"{name} must be >= 1, got {getattr(c, name)}")
    _check(c.synth_lr > 0, f"synth_lr must be > 0, got {c.synth_lr}")
    _check(c.synth_init in ("normal", "uniform"),
           f"synth_init must be 'normal' (the papers) or 'uniform' (ZeroQ's code), "
           f"got {c.synth_init!r}")
    _check(0.0 < c.dsg_eps < 1.0, f"dsg_eps (a percentile) must be in (0, 1), got {c.dsg_eps}")
    _check(c.act_quant_sites in ("call_site", "module"),
           "act_quant_sites must be 'call_site' (one activation quantizer per ReLU call) or "
           f"'module' (official: one per ReLU module), got {c.act_quant_sites!r}")
    _check(0.0 < c.act_ema_beta < 1.0, f"act_ema_beta must be in (0, 1), got {c.act_ema_beta}")
    for name in ("lr_student", "lr_generator", "lr_gamma", "bns_weight", "kd_temperature"):
        _check(getattr(c, name) > 0 or (name == "bns_weight" and c.bns_weight == 0),
               f"{name} must be > 0, got {getattr(c, name)}")
    _check(c.kd_alpha >= 0, f"kd_alpha must be >= 0, got {c.kd_alpha}")
    _check(list(c.lr_milestones) == sorted(c.lr_milestones) and all(m > 0 for m in c.lr_milestones),
           f"lr_milestones must be increasing positive epochs, got {c.lr_milestones}")
    _check(c.kd_reduction in ("elementwise_mean", "batchmean"),
           "kd_reduction must be 'elementwise_mean' (official) or 'batchmean', "
           f"got {c.kd_reduction!r}")
    _check(c.eval_limit >= 0, f"eval_limit must be >= 0 (0 = all), got {c.eval_limit}")
    _check(c.eval_start_epoch >= 0, f"eval_start_epoch must be >= 0, got {c.eval_start_epoch}")
    _check(c.device in DEVICES or c.device.startswith("cuda:"),
           f"device must be auto, cpu, cuda or cuda:N, got {c.device!r}")
    _check(c.tf32 in TF32_MODES,
           f"tf32 must be one of {TF32_MODES} (conv: PyTorch's default, TF32 in cuDNN "
           f"convolutions only; off: full fp32; all: convolutions and matmuls), got {c.tf32!r}")
    _check(c.num_threads >= 0, f"num_threads must be >= 0 (0 = all CPUs), got {c.num_threads}")
    _check(c.normalization in NORMALIZATIONS,
           f"normalization must be one of {NORMALIZATIONS}, got {c.normalization!r}")
    from qimera_core import teachers  # late: keeps `import qimera_core.config` free of torch
    teachers.spec(c.teacher)          # unknown teacher names fail here, listing valid ones
    kind = c.eval_data.split(":", 1)[0]
    _check(kind in EVAL_DATA or kind == "npz",
           f"eval_data must be one of {EVAL_DATA}, 'imagenet:VALDIR' or 'npz:PATH', "
           f"got {c.eval_data!r}")
    if kind == "npz":
        _check(len(c.eval_data) > 4, "eval_data='npz:PATH' needs a path after 'npz:'")


def build(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """A preset plus overrides. `method='gdfq'` applies GDFQ_SWITCHES unless they are overridden."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    d: dict[str, Any] = dict(PRESETS[preset]) if preset else {}
    method = overrides.get("method", d.get("method", "qimera"))
    if method in ("gdfq", "adadfq"):
        d.update(GDFQ_SWITCHES)
    if method == "adadfq":
        d.update(adadfq_constants(d.get("teacher", FIELDS["teacher"].default),
                                  int(overrides.get("w_bits", d.get("w_bits", 4)))))
    if method == "zaq":
        d.update({k: FIELDS[k].default for k in ZAQ_FIXED})
        d.update(ZAQ_SWITCHES)
        if not str(d.get("teacher", "")).startswith(("digits", "tiny")):
            d.update(ZAQ_SCHEDULE)
    if method in PTQ_METHODS:
        d.update(PTQ_NEUTRAL)
        d.update(PTQ_SWITCHES)
        if "batch_size" not in overrides:
            d["batch_size"] = (ZEROQ_BATCH if method == "zeroq" else
                               bn_layers(overrides.get("teacher", d.get("teacher",
                                                                        FIELDS["teacher"].default))))
    d.update(overrides)
    return TrainConfig.from_dict(d)


# ---- CLI flags from the fields -------------------------------------------------------------
class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: with ~50 flags, the usage block argparse prints first
    would bury the line that says what is wrong."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def field_help(name: str) -> str:
    """What field `name` means (its `help` metadata), without the default."""
    return FIELDS[name].metadata["help"]


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One `--kebab-case` flag per field; unset flags stay None so presets are not overridden."""
    for name, f in FIELDS.items():
        hint = _HINTS[name]
        flag = "--" + name.replace("_", "-")
        default = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        helptext = f"{field_help(name)} (default: {default})".replace("%", "%%")
        if hint is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=helptext)
        elif hint == tuple[int, ...]:
            parser.add_argument(flag, dest=name, default=None, metavar="N,N,...", help=helptext)
        else:
            parser.add_argument(flag, dest=name, type=hint, default=None, help=helptext)


def overrides_from_args(args: Any) -> dict[str, Any]:
    """The config fields given on the command line, from parsed flags (an argparse Namespace,
    or any object with `as_dict()`, such as sweeps.cli.Options)."""
    values = args.as_dict() if hasattr(args, "as_dict") else vars(args)
    return {k: v for k, v in values.items() if k in FIELD_NAMES and v is not None}
