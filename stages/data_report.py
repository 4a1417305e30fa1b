"""DVC stage ``data_report``: metrics/data.json and the label-distribution plot (paper Figure 4)."""

from palbert import paths
from palbert.data.report import summary, write_data_report
from palbert.settings_guard import load_guarded
from palbert.stage import run_stage


def main() -> int:
    _, guard = load_guarded(paths.PARAMS)  # a broken params file stops every stage, this one included
    report = write_data_report(paths.PREPARED, paths.DATA_REPORT,
                               paths.LABEL_DISTRIBUTION)
    guard.check("at the end of the stage")
    print(f"data_report: {summary(report)}")
    return 0


if __name__ == "__main__":
    run_stage(main)
