"""Table 9 (supplement): top-1 accuracy (%) of Qimera at 4w4a for each superposition
probability p and number of superposed class embeddings K, on CIFAR-100 with ResNet-20 and
ImageNet with ResNet-50.

    python -m sweeps.table9 [--smoke-test] [--only cifar100] [--seeds 3]
"""

from qimera_core.config import build
from sweeps.grid import Block

P = [0.10, 0.25, 0.40, 0.55, 0.70, 0.85]          # p: mix_prob

BLOCKS = [
    Block("cifar100-resnet20-4w4a", build("cifar100-resnet20-4w4a"),
          {"mix_prob": P, "mix_classes": [2, 10, 25, 100]}),           # K: mix_classes
    Block("imagenet-resnet50-4w4a", build("imagenet-resnet50-4w4a"),
          {"mix_prob": P, "mix_classes": [100, 250, 500, 1000]}),
]

if __name__ == "__main__":
    import sys

    from sweeps.launch import main
    sys.exit(main("table9", BLOCKS, doc=__doc__))
