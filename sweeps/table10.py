"""Table 10 (supplement): top-1 accuracy (%) of Qimera against DSG on ImageNet: ResNet-18 at
4w4a and ResNet-50 at 6w6a. (DSG's numbers are DSG's own reported values; only Qimera is run.)

The paper's other rows cannot be run with this project's teachers: InceptionV3 takes 299x299
inputs that the ImageNet generator (224x224) does not produce, SqueezeNext is not in the
teacher registry, and DSG's ShuffleNet (v1) is not either (torchvision's ShuffleNetV2 is a
different network). ResNet-50 at 6w6a starts from the 5w5a preset (p = 0.7, K = 100): the
paper does not give p and K for 6 bits.

    python -m sweeps.table10 [--smoke-test] [--seeds 3]
"""

from qimera_core.config import build
from sweeps.grid import Block

BLOCKS = [
    Block("imagenet-resnet18-4w4a", build("imagenet-resnet18-4w4a")),
    Block("imagenet-resnet50-6w6a", build("imagenet-resnet50-5w5a", w_bits=6, a_bits=6)),
]

if __name__ == "__main__":
    import sys

    from sweeps.launch import main
    sys.exit(main("table10", BLOCKS, doc=__doc__))
