"""Table 8 (supplement): top-1 accuracy (%) of Qimera at 4w4a with 0 (no disentanglement
mapping), 1, 2, 4 and 8 DM layers; p = 0.4, K = 2 on CIFAR-10 and K = 10 on CIFAR-100
(ResNet-20).

    python -m sweeps.table8 [--smoke-test] [--only cifar10-] [--seeds 3]
"""

from qimera_core.tablespec import get

BLOCKS = get("table8").blocks      # the spec (qimera_core.paper_specs) holds the table

if __name__ == "__main__":
    import sys

    from sweeps.launch import main
    sys.exit(main("table8", BLOCKS, doc=__doc__))
