"""DVC stage ``data_report``: metrics/data.json and the label-distribution plot (paper Figure 4)."""

import sys

from palbert.data.report import data_report_stage
from palbert.stage import run_stage

if __name__ == "__main__":
    run_stage(data_report_stage, sys.argv[1:])
