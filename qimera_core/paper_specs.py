"""The paper's tables as specs (qimera_core.tablespec): the main results and supplement Tables
6-10. Each sweep script (`sweeps/tableN.py`) runs its spec's blocks; the analysis lays the
results out, tests the axes and the claims from it. The claims are the trends the supplement
states, in its direction; a digits setting is tested in the CIFAR direction.
"""

from __future__ import annotations

from qimera_core.config import METHODS, PAPER_PRESETS, PTQ_METHODS, build
from qimera_core.tablespec import Axis, Block, Claim, TableSpec, register

P = [0.10, 0.25, 0.40, 0.55, 0.70, 0.85]                   # Table 9's p: mix_prob
SIGMAS = [0.25, 0.5, 1.0, 1.5, 2.0]                        # Table 6's sigma_z: noise_sigma
DM_LAYERS = [0, 1, 2, 4, 8]                                # Table 8
ROWS = list(PAPER_PRESETS)

_QIMERA_ABOVE_GDFQ = Claim("Qimera is above GDFQ (main table)", "above", "method_label",
                           high={"method_label": "Qimera"}, low={"method_label": "GDFQ"})
_QIMERA_ABOVE_ZEROQ = Claim("Qimera is above ZeroQ (main table)", "above", "method_label",
                            high={"method_label": "Qimera"}, low={"method_label": "ZeroQ"})
_QIMERA_ABOVE_DSG = Claim("Qimera is above DSG (Table 10)", "above", "method_label",
                          high={"method_label": "Qimera"}, low={"method_label": "DSG"})
_QIMERA_ABOVE_ZAQ = Claim("Qimera is above ZAQ (main table)", "above", "method_label",
                          high={"method_label": "Qimera"}, low={"method_label": "ZAQ"})
_ADADFQ_ABOVE_QIMERA = Claim("AdaDFQ is above Qimera (AdaDFQ's paper)", "above", "method_label",
                             high={"method_label": "AdaDFQ"}, low={"method_label": "Qimera"})
# The paper's baselines we run (ZeroQ, DSG: qimera_core.ptq; ZAQ: the generator loop), in the
# tables' column order; where one has not been run, its column shows the paper's number, quoted.
_RUN_BASELINES = ("ZeroQ", "DSG", "ZAQ")
_CLAIMS = (_QIMERA_ABOVE_GDFQ, _QIMERA_ABOVE_ZEROQ, _QIMERA_ABOVE_DSG, _QIMERA_ABOVE_ZAQ)

register(TableSpec(
    name="main", title="Main results", subtitle="data-free quantization accuracy",
    blocks=[Block(f"{preset}/{method}", build(preset, method=method))
            for preset in ROWS for method in METHODS],
    layout="methods", axes=(Axis("method_label", "method"),),
    claims=(*_CLAIMS, _ADADFQ_ABOVE_QIMERA), paper_block="main_results",
    methods=(*_RUN_BASELINES, "GDFQ", "AdaDFQ", "Qimera"), quote_unrun=_RUN_BASELINES))

register(TableSpec(
    name="table6", title="Table 6",
    subtitle="GDFQ accuracy vs. noise scale σ, with Qimera for reference",
    blocks=[block for preset in ROWS for block in (
        Block(f"{preset}/gdfq", build(preset, method="gdfq"), {"noise_sigma": SIGMAS}),
        Block(f"{preset}/qimera", build(preset)))],
    layout="sigma",
    axes=(Axis("noise_sigma", "σ (GDFQ)", where={"method_label": "GDFQ"}, paper="sigma_z"),
          Axis("method_label", "method (σ = 1)", where={"noise_sigma": 1.0})),
    claims=(Claim("a lower σ helps GDFQ slightly (Table 6)", "slope", "noise_sigma", -1,
                  where={"method_label": "GDFQ"}),
            Claim("the noise level alone does not close the gap: Qimera is above GDFQ at its "
                  "best σ ({top:g})", "above", "noise_sigma",
                  high={"method_label": "Qimera", "noise_sigma": 1.0},
                  low={"method_label": "GDFQ"}, low_over="noise_sigma")),
    paper_block="table6_noise_sigma", figure="sigma"))

register(TableSpec(
    name="table7", title="Table 7",
    subtitle="extracted embedding init + freeze vs. trained embeddings",
    blocks=[block for preset in ROWS for block in (
        Block(f"{preset}/qimera", build(preset, emb_init="extracted"),
              {"freeze_embeddings": [True, False]}),
        *(Block(f"{preset}/{m}", build(preset, method=m))
          for m in ("gdfq", "zaq", *PTQ_METHODS)))],
    layout="methods", axes=(Axis("method_label", "method"),),
    claims=(*_CLAIMS,
            Claim("frozen extracted embeddings are below trained ones (Table 7)", "above",
                  "method_label", high={"method_label": "Qimera"},
                  low={"method_label": "Extracted Init + Freeze"})),
    paper_block="table7_extracted_init_freeze", paper_also=("main",),
    paper_methods={"Extracted Init + Freeze": ("Qimera", {"freeze": True})},
    methods=(*_RUN_BASELINES, "GDFQ", "Qimera", "Extracted Init + Freeze"),
    quote_unrun=_RUN_BASELINES))

register(TableSpec(
    name="table8", title="Table 8",
    subtitle="accuracy vs. number of disentanglement-mapping (DM) layers",
    blocks=[Block("cifar10-resnet20-4w4a",
                  build("cifar10-resnet20-4w4a", mix_prob=0.4, mix_classes=2),
                  {"dm_layers": DM_LAYERS}),
            Block("cifar100-resnet20-4w4a",
                  build("cifar100-resnet20-4w4a", mix_prob=0.4, mix_classes=10),
                  {"dm_layers": DM_LAYERS})],
    layout="levels", axes=(Axis("dm_layers", "DM layers", paper="dm_layers"),),
    claims=(Claim("more DM layers help a little: the best, {top} layers, is above 0 (Table 8; "
                  "picked as the best, so optimistic)", "best_above", "dm_layers", level=0),
            Claim("8 DM layers drop below the best other ({top} layers){scope}", "best_above",
                  "dm_layers", level=8, datasets=("CIFAR-100",))),
    paper_block="table8_dm_layers", figure="dm"))

_IMAGENET = {"dataset": ("ImageNet",)}
register(TableSpec(
    name="table9", title="Table 9",
    subtitle="accuracy vs. superposition probability p and classes per sample K (Qimera)",
    blocks=[Block("cifar100-resnet20-4w4a", build("cifar100-resnet20-4w4a"),
                  {"mix_prob": P, "mix_classes": [2, 10, 25, 100]}),
            Block("imagenet-resnet50-4w4a", build("imagenet-resnet50-4w4a"),
                  {"mix_prob": P, "mix_classes": [100, 250, 500, 1000]})],
    layout="grid",
    axes=(Axis("mix_prob", "p", paper="p", fmt="{:.2f}"),
          Axis("mix_classes", "K", log2=True, paper="K")),
    claims=(Claim("higher p is better on ImageNet (Table 9)", "slope", "mix_prob", +1,
                  only=_IMAGENET),
            Claim("higher K is better on ImageNet (Table 9)", "slope", "mix_classes", +1,
                  only=_IMAGENET),
            Claim("lower p is better on CIFAR (Table 9)", "slope", "mix_prob", -1,
                  unless=_IMAGENET),
            Claim("lower K is better on CIFAR (Table 9)", "slope", "mix_classes", -1,
                  unless=_IMAGENET)),
    paper_block="table9_p_k", figure="heatmap"))

# Table 10's settings: (row, preset, overrides); ResNet-50 at 6w6a starts from the 5w5a preset.
_TABLE10 = (("imagenet-resnet18-4w4a", "imagenet-resnet18-4w4a", {}),
            ("imagenet-resnet50-6w6a", "imagenet-resnet50-5w5a", dict(w_bits=6, a_bits=6)),
            ("imagenet-inceptionv3-4w4a", "imagenet-inceptionv3-4w4a", {}),
            ("imagenet-sqnxt23-6w6a", "imagenet-sqnxt23-6w6a", {}),
            ("imagenet-shufflenet-6w6a", "imagenet-shufflenet-6w6a", {}))
register(TableSpec(
    name="table10", title="Table 10", subtitle="comparison with DSG",
    blocks=[Block(f"{row}/{m}", build(preset, method=m, **kw))
            for row, preset, kw in _TABLE10 for m in ("qimera", *PTQ_METHODS)],
    layout="methods", axes=(Axis("method_label", "method"),),
    claims=(Claim("Qimera is above DSG (Table 10)", "above", "method_label",
                  high={"method_label": "Qimera"}, low={"method_label": "DSG"}),),
    paper_block="table10_dsg", methods=("Qimera", "DSG", "ZeroQ"), quote_unrun=("DSG", "ZeroQ"),
    teacher_column=False, improvement_over="DSG"))

# Every method of the harness on one setting, the same seeds: the like-with-like comparison
# (sweeps/methods.py; pick a setting with --only, or --offline for digits). No quoted numbers.
register(TableSpec(
    name="methods", title="Methods", subtitle="every method of the harness, like with like",
    blocks=[Block(f"{preset}/{method}", build(preset, method=method))
            for preset in ROWS for method in METHODS],
    layout="methods", axes=(Axis("method_label", "method"),),
    claims=(*_CLAIMS, _ADADFQ_ABOVE_QIMERA), paper_block="main_results",
    methods=("ZeroQ", "DSG", "ZAQ", "GDFQ", "AdaDFQ", "Qimera")))
