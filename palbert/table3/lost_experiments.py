"""Records of Table 3 runs whose DVC experiment was not kept, from their MLflow runs.

A queued ``dvc exp run`` trains in a temporary copy and only then commits the result as an experiment ref.
Where that last step does not happen (on a GPU machine, in a shallow clone, all 8 runs of a batch trained,
scored and logged to MLflow, and ``dvc exp show`` listed none of them), the runs are not lost: each MLflow
run holds the dev and test predictions, the curves, the per-epoch dev metrics and every setting it trained
with. This writes their records from there, after checking that each MLflow run is the planned row and
seed and logged exactly the planned settings. What MLflow does not hold (precision, examples/s while
training, processes) comes from the run's own log lines; the machine from the caller, who says who
described it. Such a record's ``dvc_experiment.rev`` is null: there is no experiment commit to point at.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from palbert.metrics import DEV_METRICS
from palbert.table3.plan import PlannedRun, Table3Error
from palbert.table3.records import RunRecord, write_run_record
from palbert.tracking.tags import param_strings

log = logging.getLogger(__name__)

#: Lines of ``palbert.train.loop``'s log that hold what ``metrics/train.json`` has and MLflow does not.
_STARTED = re.compile(r"training (?P<steps>\d+) steps \(.*precision=(?P<precision>\w+).*?, (?P<procs>\d+) process")
_TRAINED = re.compile(r"trained \d+ steps in [\d.]+ s \(.*; (?P<rate>[\d.]+) examples/s while training\)")
_MLFLOW_RUN = re.compile(r"MLflow run (?P<id>[0-9a-f]{32}) ")


def summary_from_log(text: str) -> dict[str, Any]:
    """``precision``, ``world_size``, ``examples_per_s`` and ``mlflow_run_id`` from one run's stage log."""
    started, trained, run = _STARTED.search(text), _TRAINED.search(text), _MLFLOW_RUN.search(text)
    if not (started and trained and run):
        missing = [what for what, found in (("the 'training N steps' line", started), ("the 'trained N steps' "
                   "line", trained), ("an 'MLflow run <id>' line", run)) if not found]
        raise Table3Error(f"not a finished training log: no {', no '.join(missing)}")
    return {"mlflow_run_id": run["id"], "precision": started["precision"], "world_size": int(started["procs"]),
            "examples_per_s": float(trained["rate"])}


def summaries_from_logs(paths: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """MLflow run id -> :func:`summary_from_log` of each log; a log of a run that did not finish is skipped."""
    found = {}
    for path in paths:
        try:
            summary = summary_from_log(path.read_text(encoding="utf-8", errors="replace"))
        except Table3Error as exc:
            log.warning("%s: %s; skipped", path, exc)
            continue
        found[summary["mlflow_run_id"]] = summary
    return found


def logged_settings_problem(run: PlannedRun, params: Mapping[str, str]) -> str | None:
    """Where the MLflow run's params differ from the settings planned for ``run`` (None: none)."""
    flat = {f"{section}.{key}": value for section, values in run.settings().items() for key, value in values.items()}
    want = {key: text for key, text in param_strings(run.params).items() if key in flat}
    wrong = [f"{key}: {params.get(key, '<absent>')!r} logged, {text!r} planned" for key, text in sorted(want.items())
             if params.get(key) != text]
    return "; ".join(wrong[:3]) + (f"; and {len(wrong) - 3} more" if len(wrong) > 3 else "") if wrong else None


def mlflow_summary(client: Any, run_id: str) -> dict[str, Any]:
    """``best_epoch``, ``dev_per_epoch``, ``steps`` and ``train_wall_s`` from the run's metrics, and its dev
    metrics as the evaluate stage scored them (the run's ``metrics/dev.json``).

    The dev metrics carry ``metrics/dev.json``'s names: one value per epoch at the epoch's last step, and the
    evaluate stage's value after them at the last step; the first value logged at each step is the epoch's.
    """
    data = client.get_run(run_id).data
    history = {name: sorted(client.get_metric_history(run_id, name), key=lambda m: (m.step, m.timestamp))
               for name in DEV_METRICS}
    steps = sorted({metric.step for metric in history["overall"]})
    try:
        with tempfile.TemporaryDirectory() as folder:
            dev = json.loads(Path(client.download_artifacts(run_id, "metrics/dev.json", folder)).read_text("utf-8"))
    except Exception as exc:  # MlflowException or OSError: the evaluate stage did not log it
        raise Table3Error(f"MLflow run {run_id}: no metrics/dev.json artifact (did the evaluate stage run?): "
                          f"{exc}") from None
    if not steps or any(name not in dev for name in DEV_METRICS):
        raise Table3Error(f"MLflow run {run_id}: no per-epoch or final dev metrics (did it finish?)")
    per_step: dict[str, dict[int, float]] = {name: {} for name in DEV_METRICS}
    for name in DEV_METRICS:
        for metric in history[name]:
            per_step[name].setdefault(metric.step, metric.value)
    return {
        "best_epoch": int(data.metrics["best_epoch"]),
        "dev_per_epoch": [{"epoch": epoch, **{name: per_step[name][step] for name in DEV_METRICS}}
                          for epoch, step in enumerate(steps, start=1)],
        "steps": int(steps[-1]),
        "train_wall_s": round(float(data.metrics["train_wall_s"]), 1),
        "dev": {name: float(dev[name]) for name in DEV_METRICS},
    }


def record_lost_experiments(folder: Path, runs: Sequence[PlannedRun], scale_name: str, client: Any,
                            experiment: str, labels: Mapping[str, tuple[np.ndarray, np.ndarray]],
                            logs: Mapping[str, Mapping[str, Any]], machine: Mapping[str, Any]) -> list[RunRecord]:
    """Write the record of every planned run that has a finished MLflow run of its table, row and seed in
    ``experiment`` and a training log in ``logs``; a run that has none is named and left; a run with
    other logged settings is an error (nothing of it is written)."""
    found = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id],
        filter_string=f"tags.table3_id = '{runs[0].table_id}' and attributes.status = 'FINISHED'") if runs else []
    by_name: dict[str, Any] = {}
    for mlflow_run in found:
        by_name.setdefault(mlflow_run.data.tags.get("dvc_exp_name", ""), mlflow_run)  # newest first
    written = []
    for run in runs:
        mlflow_run = by_name.get(run.name)
        if mlflow_run is None or mlflow_run.info.run_id not in logs:
            log.info("%s: no finished MLflow run with a training log; left", run.name)
            continue
        run_id = mlflow_run.info.run_id
        problem = logged_settings_problem(run, mlflow_run.data.params)
        if problem:
            raise Table3Error(f"MLflow run {run_id} ({run.name}) trained with other settings than planned: {problem}")
        summary = {**mlflow_summary(client, run_id), **logs[run_id], "machine": dict(machine)}
        dev = summary.pop("dev")
        tags = mlflow_run.data.tags
        commit = tags.get("dvc_exp_baseline_rev") or tags.get("mlflow.source.git.commit")
        written.append(write_run_record(folder / run.folder, run, scale_name, client, run_id, labels, summary, dev,
                                        code_commit=commit,
                                        dvc_experiment={"name": run.name, "rev": None}))
    return written


def read_machine(path: Path) -> dict[str, Any]:
    machine = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(machine, dict) or not machine.get("described_by"):
        raise Table3Error(f"{path}: a machine description needs 'described_by' (who wrote it, from what)")
    return machine
