"""Results records: one small folder per finished Table 3 run, committed to the repository.

A record is what a table is rebuilt from on any clone, with no training, no DVC experiment refs and no
MLflow store (neither travels with ``git clone``):

    results/table3/<table-id>/<row>-s<seed>/
        record.json                    settings, scale, commit, dev metrics per epoch and kept, wall time,
                                       machine, precision, versions, and the SHA-256 of every file below
        predictions/<task>-dev.csv.gz  id,prediction,label   (what the bootstrap needs)
        predictions/<task>-test.csv.gz id,prediction         (as the evaluate stage wrote them)
        curves.csv.gz                  step,series,value     (training losses per task, SimCSE, LR)

The folder is written in one rename and ``record.json`` carries checksums, so a truncated, edited or
half-copied record is caught when read (``RecordError`` names the path) instead of entering a table.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from palbert.atomic import atomic_dir, read_json_object, write_json
from palbert.tasks import EXTRA_DATASETS, TASK_DATASET, TASK_SPECS, TASKS
from palbert.machine import describe_machine
from palbert.metrics import DEV_METRICS, TASK_METRIC, overall, score
from palbert.table3.plan import PlannedRun, Table3Error

log = logging.getLogger(__name__)

RECORD_FORMAT = 1
RECORD_FILE = "record.json"
CURVES_FILE = "curves.csv.gz"
#: Training curves kept from each run's plot CSVs (metrics/plots/train/<series>.csv).
#: Records written before extra data had curves of its own hold its loss in its task's (loss_sst: SST + CFIMDB).
CURVE_SERIES: tuple[str, ...] = (*(f"loss_{name}" for name in (*TASKS, *EXTRA_DATASETS)), "loss_simcse", "lr")


#: Half a unit in the last decimal of a written score prediction (``TaskSpec.format``: 4 decimals).
SCORE_ROUNDING = 0.5e-4


class RecordError(Table3Error):
    """A record that cannot be used as it is; the message starts with its path."""


class StaleRecordError(RecordError):
    """A sound record whose settings are not what the workspace's params give its row (now)."""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_csv_gz(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A gzip CSV whose bytes depend only on its rows (no timestamp in the gzip header)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as handle:
        handle.write(text.getvalue().encode("utf-8"))


def read_csv_gz(path: Path, header: Sequence[str]) -> list[list[str]]:
    try:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise RecordError(f"{path}: not a readable gzip CSV ({exc})") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or rows[0] != list(header):
        raise RecordError(f"{path}: expected the header {','.join(header)}, got {rows[0] if rows else 'nothing'}")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise RecordError(f"{path}, line {line}: expected {len(header)} columns, got {len(row)}")
    return rows[1:]


@dataclass
class DevPredictions:
    """One run's dev predictions and the labels they are scored against, per task, in file order."""

    ids: dict[str, np.ndarray]
    predictions: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]


@dataclass
class RunRecord:
    folder: Path
    data: dict[str, Any]
    #: The dev predictions once read: reading a record checks its dev block against them, and the table's
    #: bootstrap needs them again (a full-scale record holds ~22,000 dev rows).
    _dev: DevPredictions | None = field(default=None, repr=False, compare=False)

    @property
    def row(self) -> str:
        return str(self.data["row"])

    @property
    def seed(self) -> int:
        return int(self.data["seed"])

    @property
    def dev(self) -> dict[str, float]:
        return {name: float(self.data["dev"][name]) for name in DEV_METRICS}

    def dev_predictions(self) -> DevPredictions:
        if self._dev is None:
            self._dev = self._read_dev_predictions()
        return self._dev

    def _read_dev_predictions(self) -> DevPredictions:
        ids, predictions, labels = {}, {}, {}
        for task in TASKS:
            path = self.folder / "predictions" / f"{task}-dev.csv.gz"
            rows = read_csv_gz(path, ["id", "prediction", "label"])
            try:
                values = np.asarray([[float(p), float(y)] for _, p, y in rows], dtype=np.float64).reshape(-1, 2)
            except ValueError as exc:
                raise RecordError(f"{path}: a prediction or label is not a number ({exc})") from None
            ids[task] = np.asarray([row[0] for row in rows])
            predictions[task], labels[task] = values[:, 0], values[:, 1]
        return DevPredictions(ids=ids, predictions=predictions, labels=labels)

    def curves(self) -> list[tuple[int, str, float]]:
        rows = read_csv_gz(self.folder / CURVES_FILE, ["step", "series", "value"])
        return [(int(step), series, float(value)) for step, series, value in rows]


def read_record(folder: Path, run: PlannedRun | None = None, scale: Mapping[str, Any] | None = None,
                row_only: bool = False) -> RunRecord:
    """A record, checked: complete files, this format, and (when given) the run's scale and settings: every one of
    them (``run.settings()``, before a run is kept instead of trained), or (``row_only``, for a rebuild) only
    those its row, scale and seed define, whatever the rest of ``params.yaml`` holds today."""
    path = folder / RECORD_FILE
    data = read_json_object(path, RecordError, "an interrupted copy?")
    if data.get("format") != RECORD_FORMAT:
        raise RecordError(f"{path}: not a format-{RECORD_FORMAT} record")
    for key in ("row", "seed", "settings", "scale", "dev", "files"):
        if key not in data:
            raise RecordError(f"{path}: no {key!r}")
    if any(not isinstance(data["dev"].get(name), (int, float)) for name in DEV_METRICS):
        raise RecordError(f"{path}: dev metrics incomplete (need {', '.join(DEV_METRICS)})")
    for name, digest in data["files"].items():
        member = folder / name
        if not member.is_file():
            raise RecordError(f"{member}: missing (listed in {RECORD_FILE})")
        if _digest(member) != digest:
            raise RecordError(f"{member}: does not match its checksum in {RECORD_FILE} (truncated or edited)")
    if scale is not None and data["scale"].get("overrides") != dict(scale):
        raise RecordError(f"{path}: of scale {data['scale']}, not this table's {dict(scale)}")
    if run is not None:
        if (data["row"], data["seed"]) != (run.row, run.seed):
            raise RecordError(f"{path}: holds row {data['row']} seed {data['seed']}, not {run.row} seed {run.seed}")
        if row_only:
            problems = run.row_differences(data["overrides"], data["settings"])
            if problems:
                raise StaleRecordError(f"{path}: its settings disagree with row {run.row} of the catalogue "
                                       f"({'; '.join(problems[:3])})")
        elif data["settings"] != run.settings():
            raise StaleRecordError(f"{path}: ran with other settings than row {run.row} has now "
                                   f"({_first_differences(data['settings'], run.settings())})")
    record = RunRecord(folder=folder, data=data)
    _check_dev_block(record)
    return record


def _check_dev_block(record: RunRecord) -> None:
    """The ``dev`` block is what the checksummed dev predictions score: record.json itself has no checksum,
    so a table may only trust the numbers that its predictions and labels back."""
    dev = record.dev_predictions()
    recomputed = {TASK_METRIC[task]: score(task, dev.predictions[task], dev.labels[task]) for task in TASKS}
    recomputed["overall"] = overall(recomputed)
    tolerance = {TASK_METRIC[task]: _rounding_tolerance(task, dev.predictions[task]) for task in TASKS}
    tolerance["overall"] = sum(tolerance.values()) / len(TASKS)
    wrong = [f"{name} {record.dev[name]:.6f} but its predictions score {value:.6f}"
             for name, value in recomputed.items() if not abs(record.dev[name] - value) <= tolerance[name]]
    if wrong:
        raise RecordError(f"{record.folder / RECORD_FILE}: its dev block disagrees with its own dev predictions "
                          f"({'; '.join(wrong)}): edited by hand?")


def _rounding_tolerance(task: str, predictions: np.ndarray) -> float:
    """How far a metric recomputed from written predictions may be from the one scored before they were written.

    Class predictions are written exactly. Score predictions are rounded by up to ``SCORE_ROUNDING`` each, which
    moves Pearson r by at most about 2 * SCORE_ROUNDING / std(predictions): 8e-5 for a trained model's spread of
    1.2, far more for the nearly constant predictions of a model that learnt little.
    """
    if TASK_SPECS[task].integer_labels:
        return 1e-12
    spread = float(np.std(predictions))
    return 1e-6 + (2 * SCORE_ROUNDING / spread if spread > 0 else 2.0)


def _first_differences(have: Mapping[str, Any], want: Mapping[str, Any], limit: int = 3) -> str:
    found = []
    for section in sorted(set(have) | set(want)):
        a, b = have.get(section) or {}, want.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key, "<absent>") != b.get(key, "<absent>"):
                found.append(f"{section}.{key}: {a.get(key, '<absent>')!r} in the record, {b.get(key, '<absent>')!r} now")
    return "; ".join(found[:limit]) + (f"; and {len(found) - limit} more" if len(found) > limit else "")


def write_record(folder: Path, data: Mapping[str, Any], tables: Mapping[str, tuple[Sequence[str], list]]) -> RunRecord:
    """Write ``tables`` (relative path -> (header, rows)) as gzip CSVs and ``record.json`` with their checksums."""
    with atomic_dir(folder) as tmp:
        for name, (header, rows) in tables.items():
            write_csv_gz(tmp / name, header, rows)
        files = {name: _digest(tmp / name) for name in sorted(tables)}
        write_json(tmp / RECORD_FILE, {**data, "files": files})
    return read_record(folder)


# --------------------------------------------------------------------------------------------
# From a finished run's workspace to a record
# --------------------------------------------------------------------------------------------


def _dev_labels(prepared: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each task's dev ids and labels as the run prepared them."""
    from palbert.data.prepared import load_prepared

    out = {}
    for task in TASKS:
        split = load_prepared(prepared, TASK_DATASET[task], "dev")
        if split is None or split.labels is None:
            raise Table3Error(f"{prepared / TASK_DATASET[task]}/dev.npz: missing or without labels")
        out[task] = (np.asarray(split.ids).astype(str), np.asarray(split.labels))
    return out


def _read_prediction_csv(path: Path, where: str) -> dict[str, str]:
    """``id,prediction`` (the predictions contract, docs/pipeline.md) -> id -> prediction text, kept as written."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows or rows[0] != ["id", "prediction"]:
        raise Table3Error(f"{where}: expected the header 'id,prediction', got {rows[0] if rows else 'nothing'}")
    out = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise Table3Error(f"{where}, line {line}: expected 2 columns, got {len(row)}")
        out[row[0]] = row[1]
    return out


def record_from_workspace(workspace: Path, folder: Path, run: PlannedRun, scale_name: str, code_commit: str,
                          execution: Mapping[str, Any]) -> RunRecord:
    """The record of ``run`` from the workspace its stages ran in: ``metrics/train.json`` and ``metrics/dev.json``,
    the dev and test predictions scored against the prepared dev labels, and the training curves."""
    summary = read_json_object(workspace / "metrics" / "train.json", Table3Error, "did the train stage run?")
    metrics = read_json_object(workspace / "metrics" / "dev.json", Table3Error, "did the evaluate stage run?")
    if any(not isinstance(metrics.get(name), (int, float)) for name in DEV_METRICS):
        raise Table3Error(f"{run.name}: metrics/dev.json lacks some of {', '.join(DEV_METRICS)}")
    labels = _dev_labels(workspace / "data" / "prepared")
    tables: dict[str, tuple[Sequence[str], list]] = {}
    predictions = workspace / "predictions"
    for task in TASKS:
        where = f"{run.name}: predictions/{task}-dev.csv"
        if not (predictions / f"{task}-dev.csv").is_file():
            raise Table3Error(f"{where} is missing")
        predicted = _read_prediction_csv(predictions / f"{task}-dev.csv", where)
        ids, values = labels[task]
        missing = [i for i in ids if i not in predicted]
        if missing or len(predicted) != len(ids):
            raise Table3Error(f"{where}: predicted ids differ from the dev labels ({len(missing)} labelled "
                              f"ids missing, {len(predicted)} predicted vs {len(ids)})")
        tables[f"predictions/{task}-dev.csv.gz"] = (
            ["id", "prediction", "label"],
            [[i, predicted[i], TASK_SPECS[task].format(float(y))] for i, y in zip(ids, values)])
        test = predictions / f"{task}-test.csv"
        if test.is_file():
            rows = _read_prediction_csv(test, f"{run.name}: predictions/{test.name}")
            tables[f"predictions/{task}-test.csv.gz"] = (["id", "prediction"], [[i, p] for i, p in rows.items()])
    curves = []
    for series in CURVE_SERIES:
        path = workspace / "metrics" / "plots" / "train" / f"{series}.csv"
        if not path.is_file():  # a series the run did not log (no SimCSE)
            continue
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            curves += [[int(step), series, value] for step, value in reader]
    tables[CURVES_FILE] = (["step", "series", "value"], curves)
    data = {
        "format": RECORD_FORMAT,
        "table_id": run.table_id,
        "row": run.row,
        "seed": run.seed,
        "scale": {"name": scale_name, "overrides": run.scale},
        "overrides": run.row_overrides,
        "settings": run.settings(),
        "code_commit": code_commit,
        "execution": dict(execution),
        "mlflow_run_id": summary.get("mlflow_run_id"),
        "dev": {name: metrics[name] for name in DEV_METRICS},
        "best_epoch": summary.get("best_epoch"),
        "dev_per_epoch": summary.get("dev_per_epoch"),
        "steps": summary.get("steps"),
        "train_wall_s": summary.get("train_wall_s"),
        "examples_per_s": summary.get("examples_per_s"),
        "world_size": summary.get("world_size"),
        "precision": summary.get("precision"),
        "machine": summary.get("machine") or describe_machine(),
        "collected": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return write_record(folder, data, tables)
