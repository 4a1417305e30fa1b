"""The ``evaluate`` stage's recipe (``stages/evaluate.py``): dev scores of the best epoch's model, predictions for
every dev/test file present, and all of it (with the model as an MLflow Model) added to the training's MLflow run.

Beside ``palbert.train.loop``, the train stage's recipe: both sit above tracking (layer 6), which the scoring of
``palbert.scoring`` (layer 3) must not import.
"""

from __future__ import annotations

import json
import logging
from functools import partial
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from palbert.atomic import check_writable, write_json
from palbert.config import Params
from palbert.data.batching import SpecialTokens
from palbert.data.prepared import read_meta
from palbert.errors import TrackingUnavailable
from palbert.scoring import (
    EvalSettings,
    SplitPredictions,
    dev_metrics,
    load_eval_splits,
    predict_split,
    write_predictions,
    write_scores,
)
from palbert.mlflow_model import log_model
from palbert.model import load_model
from palbert.model_card import card_body
from palbert.paths import BEST_MODEL, DEV_METRICS, PARAMS, PREDICTIONS, PREPARED, TRAIN_SUMMARY, find_project_root
from palbert.plots import confusion_matrix_plot
from palbert.precision import default_device
from palbert.registry import Registration, champion_bar, comparable_dev
from palbert.settings_guard import SettingsGuard, load_guarded
from palbert.tracking import Tracker, open_run
from palbert.tracking.store import check_run_store

log = logging.getLogger("palbert.evaluate")  # the stage's name in its log lines


@dataclass
class EvaluationPaths:
    #: The repository (also from inside a DVC queued-experiment copy): where the MLflow store lives.
    project_root: Path = field(default_factory=find_project_root)
    model: Path = BEST_MODEL
    prepared: Path = PREPARED
    train_summary: Path = TRAIN_SUMMARY
    dev_metrics: Path = DEV_METRICS
    predictions: Path = PREDICTIONS


def evaluate_trained_model(params: Params, paths: EvaluationPaths,
                           guard: SettingsGuard | None = None) -> dict[str, float]:
    """Score dev, write every prediction file, add both (and the model) to the training's MLflow run."""
    check_writable({"predictions": paths.predictions, "metrics": paths.dev_metrics.parent})
    summary = json.loads(paths.train_summary.read_text(encoding="utf-8")) if paths.train_summary.is_file() else {}
    # the store this stage logs to, before the scoring: a store found dead at the end costs the scoring
    check_run_store(params.tracking, paths.project_root, summary.get("tracking_uri"))
    device = default_device()
    model, _ = load_model(paths.model)
    model.to(device)
    meta = read_meta(paths.prepared, "sst")
    settings = EvalSettings.for_params(params, SpecialTokens.from_meta(meta), meta["max_length"], device)
    paths.predictions.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}
    sst_dev: SplitPredictions | None = None
    dev_labels: dict[str, np.ndarray] = {}
    for split in ("dev", "test"):
        results = [predict_split(model, prepared, task, settings) for task, prepared in
                   load_eval_splits(paths.prepared, split).items()]
        for result in results:
            write_predictions(result, paths.predictions)
            if params.evaluate.save_scores:
                write_scores(result, paths.predictions)
        if split == "dev":
            metrics = dev_metrics(results)
            sst_dev = next((result for result in results if result.task == "sst"), None)
            dev_labels = {result.task: result.labels for result in results}
    write_json(paths.dev_metrics, metrics)
    log.info("dev: %s", " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

    if guard is not None:  # nothing goes to MLflow (or is registered) under settings this run did not use
        guard.check("before logging to MLflow", f"{paths.dev_metrics} and {paths.predictions}/ are written")
    # the training's run (a new one when it was not recorded); leaving the block ends it, FAILED on an exception
    with open_run(params, paths.project_root, run_id=summary.get("mlflow_run_id"),
                  tracking_uri=summary.get("tracking_uri")) as tracker:
        for artifact in sorted(Path(paths.dev_metrics.parent).glob("*.json")):
            tracker.log_artifact(artifact, "metrics")
        tracker.log_artifacts(paths.predictions, "predictions")
        if sst_dev is not None:
            with tempfile.TemporaryDirectory() as folder:
                tracker.log_artifact(confusion_matrix_plot(sst_dev.labels, sst_dev.predictions,
                                                           Path(folder) / "sst_dev_confusion.png"), "plots")
        tracker.log_artifact(PARAMS, "params")
        version = registration(params, summary, metrics, dev_labels)
        # metrics/dev.json's names, at the last training step (after the per-epoch values the training logged under
        # the same names, so that the run's latest value is the kept model's score), logged once, with the model
        log_trained_model(tracker, paths.model, version, scores=metrics, step=int(summary.get("steps", 0)))
        if tracker.lost is not None:  # the stage fails, so that the next `dvc repro` runs it (and only it) again
            raise TrackingUnavailable(
                f"MLflow store {tracker.tracking_uri} failed ({tracker.lost}): the model is not (wholly) logged to "
                f"MLflow run {tracker.run_id}{' nor registered' if version else ''}. "
                f"{paths.dev_metrics} and {paths.predictions}/ are written; fix the store and run `dvc repro` again "
                "(only evaluate runs again)")
    return metrics


def log_trained_model(tracker: Tracker, model_dir: Path, registration: Registration | None = None,
                      scores: Mapping[str, float] | None = None, step: int = 0) -> None:
    """``model_dir`` (``models/best``) as the run's MLflow Model ``runs:/<id>/model`` (``palbert.mlflow_model``),
    also a registered version with a ``registration``: this recipe owns the model, the tracker only the run. The
    dev ``scores`` are logged to the run at ``step`` as the model's metrics."""
    tracker.log_with("log_model", partial(log_model, model_dir=model_dir, registration=registration, scores=scores,
                                          step=step))


def registration(params: Params, summary: dict, metrics: dict[str, float],
                 dev_labels: dict[str, np.ndarray] | None = None) -> Registration | None:
    """A registry version for a run scored on the full dev splits, with why it may not become ``@champion``
    (``palbert.registry.champion_bar``); none for a sample run (a quick look)."""
    if not comparable_dev(params):
        log.info("model not registered: data.subset=%s / data.dev_subset=%s score a sample of dev, not "
                 "comparable with the registered versions", params.data.subset, params.data.dev_subset)
        return None
    return Registration(params.tracking.experiment, dev=metrics,
                        description=card_body(params, {**summary, "best_dev": metrics}),
                        not_champion=champion_bar(params, summary.get("steps"), metrics, dev_labels or {}))


def evaluate_stage() -> None:
    """The ``evaluate`` stage: ``models/best`` and the prepared dev/test splits -> ``metrics/dev.json``,
    ``predictions/`` and the training's MLflow run."""
    params, guard = load_guarded(PARAMS)
    evaluate_trained_model(params, EvaluationPaths(), guard)
