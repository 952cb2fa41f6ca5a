"""Main results: top-1 accuracy (%) of Qimera and the baselines it is compared with, all run
here (ZeroQ, DSG, ZAQ, GDFQ, and AdaDFQ beside them), for every dataset, model and bit width of
the paper (CIFAR-10 and CIFAR-100 with ResNet-20, ImageNet with ResNet-18, ResNet-50 and
MobileNetV2; 4w4a and 5w5a), each from its preset (p and K of the official run scripts). A
baseline not yet run in a setting shows the paper's number there, marked "(quoted)".

    python -m sweeps.main [--smoke-test] [--only cifar] [--seeds 3]
"""

from qimera_core.tablespec import get

BLOCKS = get("main").blocks      # the spec (qimera_core.paper_specs) holds the table

if __name__ == "__main__":
    import sys

    from sweeps.launch import main
    sys.exit(main("main", BLOCKS, doc=__doc__))
