"""Every method of the harness on one setting with the same seeds: Qimera, GDFQ, AdaDFQ, ZAQ
(generators on the one training loop) and ZeroQ, DSG (synthesised images and calibration),
under one teacher, quantizer and evaluation. Its table is the like-with-like comparison, with
bold for the methods that could be the best and the papers' claims tested (Qimera above each
baseline, AdaDFQ above Qimera). No number in it is quoted from another pipeline.

    python -m sweeps.methods --only cifar100-resnet20-4w4a/ [--seeds 3]
    python -m sweeps.methods --offline        # the first setting on digits, minutes on a laptop
"""

from qimera_core.tablespec import get

BLOCKS = get("methods").blocks      # the spec (qimera_core.paper_specs) holds the table

if __name__ == "__main__":
    import sys

    from sweeps.launch import main
    sys.exit(main("methods", BLOCKS, doc=__doc__))
