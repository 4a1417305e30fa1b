"""Write Table 3 records of runs that trained and logged to MLflow but whose DVC experiment was not kept.

    python scripts/record_lost_experiments.py --tracking-uri sqlite:///PATH/mlflow.db --logs 'PATH/*.out' \\
        --machine machine.json [--scale full] [--table-id full] [--labels-rev COMMIT]

``--logs``: the runs' stage logs (``.dvc/tmp/exps/run/*/*.out`` of the queue that ran them); ``--machine``: a
JSON description of where they ran, with ``described_by``. Dev labels come from the DVC cache of ``--labels-repo`` (default:
this clone) at ``--labels-rev`` (default: HEAD). See palbert/table3/lost_experiments.py; docs/table3.md says when it was used.
"""

from __future__ import annotations

import argparse
import glob
import logging
import sys
from pathlib import Path

from palbert.params_file import TABLE3_FILE, load_params, load_table3
from palbert.paths import PARAMS, find_project_root
from palbert.table3.lost_experiments import read_machine, record_lost_experiments, summaries_from_logs
from palbert.table3.plan import plan_runs
from palbert.table3.records import load_dev_labels
from palbert.table3.runner import rebuild_table, table_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", default="palbert", help="the MLflow experiment the runs logged to")
    parser.add_argument("--logs", required=True, help="glob of the runs' stage logs")
    parser.add_argument("--machine", required=True, type=Path)
    parser.add_argument("--scale", default="full")
    parser.add_argument("--table-id")
    parser.add_argument("--labels-repo", type=Path, help="a clone whose DVC cache holds the prepared dev splits "
                        "(default: this one)")
    parser.add_argument("--labels-rev", default="HEAD")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from mlflow import MlflowClient

    root = find_project_root()
    params = load_table3(root / TABLE3_FILE, load_params(root / PARAMS))
    table_id = args.table_id or args.scale
    runs = plan_runs(params, params.table3.rows, params.table3.seeds, table_id, params.table3.scale(args.scale))
    folder = table_folder(root, table_id)
    missing = [run for run in runs if not (folder / run.folder).exists()]
    logs = summaries_from_logs(Path(path) for path in sorted(glob.glob(args.logs)))
    written = record_lost_experiments(folder, missing, args.scale, MlflowClient(tracking_uri=args.tracking_uri),
                                      args.experiment, load_dev_labels(args.labels_repo or root, args.labels_rev), logs,
                                      read_machine(args.machine))
    print(f"wrote {len(written)} record(s): {', '.join(str(r.folder.relative_to(root)) for r in written)}")
    if written:
        rebuild_table(root, params, table_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
