"""Table 6 (supplement): top-1 accuracy (%) of GDFQ with noise standard deviation
sigma_z in {0.25, 0.5, 1.0 (default), 1.5, 2.0}, with Qimera (sigma_z = 1) for reference, for
every dataset, model and bit width of the main results.

GDFQ here is the Qimera generator with superposition, DM and extracted embeddings switched off
(`build(preset, method="gdfq")`), the only GDFQ generator that has a sigma to vary.

    python -m sweeps.table6 [--smoke-test] [--only cifar10-] [--seeds 3]
"""

from qimera_core.tablespec import get

BLOCKS = get("table6").blocks      # the spec (qimera_core.paper_specs) holds the table

if __name__ == "__main__":
    import sys

    from sweeps.launch import main
    sys.exit(main("table6", BLOCKS, doc=__doc__))
