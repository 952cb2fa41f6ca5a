"""Paper tables and figures from sweep results: `load` reads them, `tables` lays them out as the
paper does, `render` writes CSV/Markdown/LaTeX, `plots` and `samples` draw the figures."""

from .load import AnalysisError, Results, load
from .tables import TABLE_FUNCTIONS, PaperTable, make_tables

__all__ = ["AnalysisError", "PaperTable", "Results", "TABLE_FUNCTIONS", "load", "make_tables"]
