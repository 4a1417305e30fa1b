"""The ``data_report`` stage: one metrics file with every prepared split's counts, and Figure 4's data.

``metrics/data.json`` is ``{dataset: {split: {"rows", "labels", "skipped", "dropped"}}}`` (the contract `dvc metrics` and the tests read),
so ``dvc metrics diff --targets metrics/data.json`` shows when a change of params or raw files changes what
training sees (a plain output, not a declared metric: its ~50 counts would lead ``dvc exp show``).
``metrics/plots/label_distribution.csv`` holds the label fractions of SST train, SST dev and
CFIMDB train: the paper's Figure 4, which motivates rescaling CFIMDB to 0/4.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from palbert.atomic import write_json, write_text
from palbert.config import DATASETS
from palbert.data.prepared import META_FILE, STATS_FILE
from palbert.paths import DATA_REPORT, LABEL_DISTRIBUTION, PARAMS, PREPARED
from palbert.settings_guard import load_guarded

log = logging.getLogger(__name__)

#: (dataset, split) pairs of the label-distribution plot (paper Figure 4).
FIGURE4_SPLITS: tuple[tuple[str, str], ...] = (("sst", "train"), ("sst", "dev"), ("cfimdb", "train"))


def collect_stats(prepared_root: Path) -> dict[str, dict]:
    """``{dataset: {split: stats}}`` for every prepared dataset; absent datasets are left out."""
    report: dict[str, dict] = {}
    for dataset in DATASETS:
        folder = Path(prepared_root) / dataset
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            log.warning("%s: not prepared (no %s); left out of the report", dataset, meta_path)
            continue
        if json.loads(meta_path.read_text(encoding="utf-8")).get("absent"):
            log.info("%s: raw files were absent; left out of the report", dataset)
            continue
        report[dataset] = json.loads((folder / STATS_FILE).read_text(encoding="utf-8"))
    return report


def label_distribution_csv(report: dict[str, dict]) -> str:
    """CSV ``dataset_split,label,split_label,fraction`` for the Figure 4 splits that were prepared.

    ``split_label`` (e.g. ``sst_train:3``) gives every bar its own name in `dvc plots`.
    """
    frame = pd.DataFrame(
        [(f"{dataset}_{split}", label, count / stats["rows"])
         for dataset, split in FIGURE4_SPLITS if (stats := report.get(dataset, {}).get(split)) and stats["rows"]
         for label, count in stats["labels"].items()],
        columns=["dataset_split", "label", "fraction"])
    frame.insert(2, "split_label", frame["dataset_split"] + ":" + frame["label"].astype(str))
    return frame.to_csv(index=False, float_format="%.4f", lineterminator="\n")


def write_data_report(prepared_root: Path, metrics_path: Path, plot_path: Path) -> dict[str, dict]:
    """Write ``metrics/data.json`` and the Figure 4 CSV; returns the report."""
    report = collect_stats(prepared_root)
    write_json(metrics_path, report)
    write_text(plot_path, label_distribution_csv(report))
    return report


def summary(report: dict[str, dict]) -> str:
    """One line: rows per dataset and the bad rows skipped."""
    parts = []
    for dataset, splits in report.items():
        rows = "/".join(f"{split} {stats['rows']}" for split, stats in splits.items())
        parts.append(f"{dataset} ({rows})")
    skipped = sum(n for splits in report.values() for stats in splits.values() for n in stats.get("skipped", {}).values())
    return f"{'; '.join(parts)}; {skipped} bad rows skipped"


def data_report_stage() -> None:
    """The ``data_report`` stage (``stages/data_report.py``): ``data/prepared/`` -> ``metrics/data.json`` and the
    Figure 4 CSV. It reads no param, but a broken ``params.yaml`` stops it as it stops every stage."""
    _, guard = load_guarded(PARAMS)
    report = write_data_report(PREPARED, DATA_REPORT, LABEL_DISTRIBUTION)
    guard.check("at the end of the stage")
    log.info("data_report: %s", summary(report))
