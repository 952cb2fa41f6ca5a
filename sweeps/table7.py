"""Table 7 (supplement): top-1 accuracy (%) of Qimera with class embeddings initialised from
the teacher's classifier and frozen ("Extracted Init + Freeze"), next to Qimera with the
extracted embeddings trained and the GDFQ baseline, for every dataset, model and bit width.
The ZeroQ, DSG and ZAQ columns are run here too; one not yet run in a setting shows the
paper's number there, marked "(quoted)".

    python -m sweeps.table7 [--smoke-test] [--only imagenet] [--seeds 3]
"""

from qimera_core.tablespec import get

BLOCKS = get("table7").blocks      # the spec (qimera_core.paper_specs) holds the table

if __name__ == "__main__":
    import sys

    from sweeps.launch import main
    sys.exit(main("table7", BLOCKS, doc=__doc__))
