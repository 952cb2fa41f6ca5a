"""Table 10 (supplement): top-1 accuracy (%) of Qimera against DSG on ImageNet: ResNet-18 at
4w4a, ResNet-50 at 6w6a, InceptionV3 at 4w4a, SqueezeNext (sqnxt23_w2) at 6w6a and ShuffleNet
(v1, g=1) at 6w6a. DSG and ZeroQ run here beside Qimera; a setting where one has not run shows
the paper's number (DSG's own reported values), marked "(quoted)".

The teachers are the pytorchcv models ZeroQ and DSG use. InceptionV3 runs at 299x299: the
generator renders 300x300 and centre-crops (qimera_core.generator). The paper gives no p and K
for these rows: ResNet-50 at 6w6a starts from the 5w5a preset (p = 0.7, K = 100); the other
three presets use p = 0.4, K = 100 (qimera_core.presets). Activations are quantized per call
site (act_quant_sites="call_site"), which for ShuffleNet gives each of the 16 units' two ReLU
calls its own range; the official per-module quantizer shares one range between them.

    python -m sweeps.table10 [--smoke-test] [--seeds 3] [--dry-run]
"""

from qimera_core.tablespec import get

BLOCKS = get("table10").blocks      # the spec (qimera_core.paper_specs) holds the table

if __name__ == "__main__":
    import sys

    from sweeps.launch import main
    sys.exit(main("table10", BLOCKS, doc=__doc__))
