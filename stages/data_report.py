"""DVC stage ``data_report``: metrics/data.json and the label-distribution plot (paper Figure 4)."""

import sys
from pathlib import Path

from palbert.config import ParamsError, load_params
from palbert.data.readers import DataError
from palbert.data.report import summary, write_data_report
from palbert.logs import setup_logging


def main() -> int:
    setup_logging()
    try:
        load_params("params.yaml")  # fail early on a broken params file, like every stage
        report = write_data_report(Path("data/prepared"), Path("metrics/data.json"),
                                   Path("metrics/plots/label_distribution.csv"))
    except (DataError, ParamsError) as exc:
        print(f"data_report failed: {exc}", file=sys.stderr)
        return 1
    print(f"data_report: {summary(report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
