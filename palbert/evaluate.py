"""Scoring: run a model over prepared dev/test splits, compute the paper's metrics, write predictions.

Used after every epoch by the training loop (to pick the best epoch) and by the ``evaluate`` stage.
Rows are sorted by length before batching (padding is then small) and put back in file order after;
under torchrun each rank predicts a contiguous shard and rank 0 gathers them, so the numbers are the
same as those of one process.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from tqdm import tqdm

from palbert.atomic import write_csv
from palbert.config import TASK_DATASET, TASKS, Params
from palbert.data.batching import SpecialTokens, make_batch
from palbert.data.prepared import PreparedSplit, load_prepared
from palbert.metrics import TASK_METRIC, overall, score
from palbert.precision import autocast
from palbert.train.distributed import DistContext
from palbert.train.streams import shard_indices
from palbert.tracking import find_project_root

log = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    pair_encoding: str
    special: SpecialTokens
    max_length: int
    batch_size: int
    device: torch.device
    precision: str


@dataclass
class SplitPredictions:
    task: str
    split: str
    ids: list[str]
    predictions: np.ndarray
    labels: np.ndarray | None


def _length_order(split: PreparedSplit, rows: np.ndarray) -> np.ndarray:
    return rows[np.argsort(-split.token_lengths()[rows], kind="stable")]


@torch.inference_mode()
def _predict_rows(model: torch.nn.Module, split: PreparedSplit, task: str, rows: np.ndarray,
                  settings: EvalSettings, show_progress: bool) -> np.ndarray:
    ordered = _length_order(split, rows)
    out = np.empty(len(split), dtype=np.float64)
    chunks = [ordered[i : i + settings.batch_size] for i in range(0, len(ordered), settings.batch_size)]
    # delay: no bar at all for a few sentences (`palbert predict`), one after 2 s for a real split
    for chunk in tqdm(chunks, desc=f"predict {task}-{split.split}", leave=False, disable=not show_progress, delay=2):
        batch = make_batch(split, chunk.tolist(), task=task, pair_encoding=settings.pair_encoding,
                           special=settings.special, max_length=settings.max_length)
        with autocast(settings.precision, settings.device):
            predictions = model.predict(batch.to(settings.device, non_blocking=True))
        out[chunk] = predictions.float().cpu().numpy()
    return out[rows]


def predict_split(model: torch.nn.Module, split: PreparedSplit, task: str, settings: EvalSettings,
                  ctx: DistContext | None = None, progress: bool = True) -> SplitPredictions:
    """Predictions for every row of ``split`` in file order (complete on rank 0 under torchrun).

    ``progress=False`` hides the progress bar (the training loop's own bar is open then; two bars at once
    fill a log that is not a terminal with cursor-movement escapes).
    """
    was_training = model.training
    model.eval()
    try:
        if ctx is not None and ctx.distributed:
            rows = np.asarray(shard_indices(len(split), ctx.rank, ctx.world_size), dtype=np.int64)
            mine = _predict_rows(model, split, task, rows, settings, progress and ctx.is_main)
            shards = ctx.all_gather_objects((rows, mine))
            predictions = np.empty(len(split), dtype=np.float64)
            for shard_rows, shard_predictions in shards:
                predictions[shard_rows] = shard_predictions
        else:
            predictions = _predict_rows(model, split, task, np.arange(len(split)), settings, progress)
    finally:
        model.train(was_training)
    return SplitPredictions(task=task, split=split.split, ids=[str(i) for i in split.ids],
                            predictions=predictions, labels=split.labels)


def load_eval_splits(prepared_root: Path, split: str) -> dict[str, PreparedSplit]:
    """The scored split of each task's main dataset that is present (test files may be missing)."""
    out = {}
    for task in TASKS:
        prepared = load_prepared(prepared_root, TASK_DATASET[task], split)
        if prepared is None:
            log.warning("no %s %s split in %s: skipped", TASK_DATASET[task], split, prepared_root)
        else:
            out[task] = prepared
    return out


def dev_metrics(results: Iterable[SplitPredictions]) -> dict[str, float]:
    """``{"sst_acc", "para_acc", "sts_pearson", "overall"}`` from labelled predictions."""
    metrics: dict[str, float] = {}
    for result in results:
        if result.labels is None:
            raise ValueError(f"{result.task}-{result.split} has no labels to score")
        metrics[TASK_METRIC[result.task]] = score(result.task, result.predictions, result.labels)
    if all(name in metrics for name in TASK_METRIC.values()):
        metrics["overall"] = overall(metrics["sst_acc"], metrics["para_acc"], metrics["sts_pearson"])
    return metrics


def write_predictions(result: SplitPredictions, folder: Path) -> Path:
    """``predictions/<task>-<split>.csv``: ``id,prediction`` (sst int 0..4, para 0/1, sts float 0..5)."""
    path = folder / f"{result.task}-{result.split}.csv"
    write_csv(path, ["id", "prediction"],
              ([row_id, f"{value:.4f}" if result.task == "sts" else int(round(value))]
               for row_id, value in zip(result.ids, result.predictions)))
    return path


@dataclass
class EvaluationPaths:
    #: The repository (also from inside a DVC queued-experiment copy): where the MLflow store lives.
    project_root: Path = field(default_factory=find_project_root)
    model: Path = Path("models/best")
    prepared: Path = Path("data/prepared")
    train_summary: Path = Path("metrics/train.json")
    dev_metrics: Path = Path("metrics/dev.json")
    predictions: Path = Path("predictions")


def evaluate_trained_model(params: Params, paths: EvaluationPaths) -> dict[str, float]:
    """The ``evaluate`` stage: score dev, write every prediction file, add both to the training's MLflow run."""
    import json

    from palbert.atomic import write_json
    from palbert.data.prepared import read_meta
    from palbert.model import load_model
    from palbert.plots import confusion_matrix_plot
    from palbert.precision import resolve_precision
    from palbert.tracking import RunTracker

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = load_model(paths.model)
    model.to(device)
    meta = read_meta(paths.prepared, "sst")
    settings = EvalSettings(
        pair_encoding=model.params.pair_encoding,
        special=SpecialTokens(cls_id=meta["cls_id"], sep_id=meta["sep_id"], pad_id=meta["pad_id"]),
        max_length=meta["max_length"],
        batch_size=params.evaluate.batch_size,
        device=device,
        precision=resolve_precision(params.train.precision, device),
    )
    paths.predictions.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}
    sst_dev: SplitPredictions | None = None
    for split in ("dev", "test"):
        results = [predict_split(model, prepared, task, settings) for task, prepared in
                   load_eval_splits(paths.prepared, split).items()]
        for result in results:
            write_predictions(result, paths.predictions)
        if split == "dev":
            metrics = dev_metrics(results)
            sst_dev = next((result for result in results if result.task == "sst"), None)
    write_json(paths.dev_metrics, metrics)
    log.info("dev: %s", " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

    summary = json.loads(paths.train_summary.read_text(encoding="utf-8")) if paths.train_summary.is_file() else {}
    if summary.get("mlflow_run_id"):
        tracker = RunTracker.resume(summary["mlflow_run_id"], params, paths.project_root,
                                    tracking_uri=summary.get("tracking_uri"))
    else:
        tracker = RunTracker.start(params, paths.project_root)
    tracker.log_metrics({f"final_dev_{k}": v for k, v in metrics.items()}, step=0)
    for artifact in sorted(Path(paths.dev_metrics.parent).glob("*.json")):
        tracker.log_artifact(artifact, "metrics")
    tracker.log_artifacts(paths.predictions, "predictions")
    if sst_dev is not None:
        with tempfile.TemporaryDirectory() as folder:
            tracker.log_artifact(confusion_matrix_plot(sst_dev.labels, sst_dev.predictions,
                                                       Path(folder) / "sst_dev_confusion.png"), "plots")
    tracker.log_artifact("params.yaml", "params")
    tracker.log_model(paths.model, registered_model_name=params.tracking.experiment)
    tracker.end("FINISHED")
    return metrics
