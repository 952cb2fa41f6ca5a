"""Table 7 (supplement): top-1 accuracy (%) of Qimera with class embeddings initialised from
the teacher's classifier and frozen ("Extracted Init + Freeze"), next to Qimera with the
extracted embeddings trained and the GDFQ baseline, for every dataset, model and bit width.
(The table's ZeroQ and ZAQ columns are the paper's numbers; they are not run here.)

    python -m sweeps.table7 [--smoke-test] [--only imagenet] [--seeds 3]
"""

from qimera_core.config import PAPER_PRESETS, build
from sweeps.grid import Block

ROWS = list(PAPER_PRESETS)

BLOCKS = [block for preset in ROWS for block in (
    Block(f"{preset}/qimera", build(preset, emb_init="extracted"),
          {"freeze_embeddings": [True, False]}),
    Block(f"{preset}/gdfq", build(preset, method="gdfq")),
)]

if __name__ == "__main__":
    import sys

    from sweeps.launch import main
    sys.exit(main("table7", BLOCKS, doc=__doc__))
