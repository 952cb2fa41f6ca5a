"""Table 9 (supplement): top-1 accuracy (%) of Qimera at 4w4a for each superposition
probability p and number of superposed class embeddings K, on CIFAR-100 with ResNet-20 and
ImageNet with ResNet-50.

    python -m sweeps.table9 [--smoke-test] [--only cifar100] [--seeds 3]
"""

from qimera_core.tablespec import get

BLOCKS = get("table9").blocks      # the spec (qimera_core.paper_specs) holds the table

if __name__ == "__main__":
    import sys

    from sweeps.launch import main
    sys.exit(main("table9", BLOCKS, doc=__doc__))
