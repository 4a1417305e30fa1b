"""Table 3 of the paper, measured: rows x seeds as Ray tasks, results records, the table and figures.

``plan`` (what runs, with which settings), ``task`` (one run in its own workspace on any node), ``executor``
(Ray: where and how many at once), ``records`` (one committed folder per finished run), ``report``
(table.json / table.md from records), ``figures``, ``runner`` (the command). The statistics live in ``palbert.metrics``.
"""

from palbert.table3.plan import Table3Error
from palbert.table3.report import BootstrapSettings
from palbert.table3.runner import Table3Request, make_table3, rebuild_table

__all__ = ["BootstrapSettings", "Table3Error", "Table3Request", "make_table3", "rebuild_table"]
