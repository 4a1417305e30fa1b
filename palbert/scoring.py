"""Scoring: run a model over prepared dev/test splits, compute the paper's metrics, write predictions.

Used after every epoch by the training loop (to pick the best epoch) and by the ``evaluate`` stage.
Rows are sorted by length before batching (padding is then small) and put back in file order after;
under torchrun each rank predicts a contiguous shard and rank 0 gathers them, so the numbers are the
same as those of one process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from palbert.atomic import write_csv
from palbert.config import Params
from palbert.cosine_blend import BLENDED_TASK, PretrainedCosine, blend
from palbert.data.batching import SpecialTokens, make_batch
from palbert.data.prepared import PreparedSplit, load_prepared
from palbert.metrics import TASK_METRIC, overall, score
from palbert.distributed import DistContext
from palbert.logs import ProgressBar
from palbert.precision import autocast, resolve_precision
from palbert.tasks import TASK_DATASET, TASK_SPECS, TASKS

log = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    pair_encoding: str
    special: SpecialTokens
    max_length: int
    batch_size: int
    device: torch.device
    precision: str
    #: ``evaluate.sts_cosine_blend`` and the pretrained encoder it needs (``palbert.cosine_blend``)
    sts_cosine_blend: float = 0.0
    pretrained_cosine: PretrainedCosine | None = None

    @classmethod
    def for_params(cls, params: Params, special: SpecialTokens, max_length: int, device: torch.device) -> EvalSettings:
        """How a run with ``params`` is scored; training's dev scoring, the evaluate stage and the speed
        benchmark must agree on it. (``Predictor`` has a saved model and no params: it builds its own.)"""
        weight = params.evaluate.sts_cosine_blend
        return cls(pair_encoding=params.model.pair_encoding, special=special, max_length=max_length,
                   batch_size=params.evaluate.batch_size, device=device,
                   precision=resolve_precision(params.train.precision, device), sts_cosine_blend=weight,
                   pretrained_cosine=PretrainedCosine(params.model.pretrained, device) if weight else None)


@dataclass
class SplitPredictions:
    task: str
    split: str
    ids: list[str]
    predictions: np.ndarray
    labels: np.ndarray | None
    #: The head's raw outputs (sst [N, 5] logits, para [N] logits, sts [N] unclamped scores)
    outputs: np.ndarray | None = None
    #: sts with ``evaluate.sts_cosine_blend``: the pretrained encoder's cosine of each pair
    cosines: np.ndarray | None = None


def _length_order(split: PreparedSplit, rows: np.ndarray) -> np.ndarray:
    return rows[np.argsort(-split.token_lengths()[rows], kind="stable")]


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s contiguous slice of ``range(n)`` for evaluation; concatenated in rank order they
    give ``range(n)`` back. Sizes differ by at most one (ranks may get unequal shards here)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return list(range(start, start + base + (1 if rank < extra else 0)))


@torch.inference_mode()
def _predict_rows(model: torch.nn.Module, split: PreparedSplit, task: str, rows: np.ndarray,
                  settings: EvalSettings, show_progress: bool,
                  deadline: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    ordered = _length_order(split, rows)
    out = np.empty(len(split), dtype=np.float64)
    raw = np.empty((len(split), *(() if TASK_SPECS[task].outputs == 1 else (TASK_SPECS[task].outputs,))))
    chunks = [ordered[i : i + settings.batch_size] for i in range(0, len(ordered), settings.batch_size)]
    # delay: no bar at all for a few sentences (`palbert predict`), one after 2 s for a real split
    for done, chunk in enumerate(ProgressBar(chunks, desc=f"predict {task}-{split.split}", leave=False,
                                             disable=not show_progress, delay=2)):  # in a log: a line per update
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"scored {done * settings.batch_size} of {len(rows)} {task} rows")
        batch = make_batch(split, chunk.tolist(), task=task, pair_encoding=settings.pair_encoding,
                           special=settings.special, max_length=settings.max_length)
        with autocast(settings.precision, settings.device):
            outputs = model(batch.to(settings.device, non_blocking=True)).prediction  # what model.predict maps
            predictions = TASK_SPECS[task].predict(outputs)
        out[chunk] = predictions.float().cpu().numpy()
        raw[chunk] = outputs.float().cpu().numpy()
    return out[rows], raw[rows]


def predict_split(model: torch.nn.Module, split: PreparedSplit, task: str, settings: EvalSettings,
                  ctx: DistContext | None = None, progress: bool = True,
                  deadline: float | None = None) -> SplitPredictions:
    """Predictions for every row of ``split`` in file order (complete on rank 0 under torchrun).

    ``progress=False`` hides the progress bar. Under the training loop's open bar it is a second line on a
    terminal; into a log file both write plain lines (``ProgressBar``).
    Past ``deadline`` (``time.monotonic()``, one process only) scoring stops between batches with a
    ``TimeoutError``.
    """
    was_training = model.training
    model.eval()
    try:
        if ctx is not None and ctx.distributed:
            rows = np.asarray(shard_indices(len(split), ctx.rank, ctx.world_size), dtype=np.int64)
            mine = _predict_rows(model, split, task, rows, settings, progress and ctx.is_main)
            shards = ctx.all_gather_objects((rows, *mine))
            predictions = np.empty(len(split), dtype=np.float64)
            outputs = np.empty((len(split), *mine[1].shape[1:]))
            for shard_rows, shard_predictions, shard_outputs in shards:
                predictions[shard_rows] = shard_predictions
                outputs[shard_rows] = shard_outputs
        else:
            predictions, outputs = _predict_rows(model, split, task, np.arange(len(split)), settings, progress,
                                                 deadline)
    finally:
        model.train(was_training)
    cosines = None
    if task == BLENDED_TASK and settings.sts_cosine_blend and settings.pretrained_cosine is not None:
        cosines = settings.pretrained_cosine.similarities(split, settings.special, settings.max_length,
                                                          settings.batch_size, settings.precision)
        predictions = blend(predictions, cosines, settings.sts_cosine_blend)
    return SplitPredictions(task=task, split=split.split, ids=[str(i) for i in split.ids],
                            predictions=predictions, labels=split.labels, outputs=outputs, cosines=cosines)


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
    """Each task's dev metric (``TaskSpec.metric``) and, when all are there, ``overall``, from labelled predictions."""
    metrics: dict[str, float] = {}
    for result in results:
        if result.labels is None:
            raise ValueError(f"{result.task}-{result.split} has no labels to score")
        metrics[TASK_METRIC[result.task]] = score(result.task, result.predictions, result.labels)
    if all(name in metrics for name in TASK_METRIC.values()):
        metrics["overall"] = overall(metrics)
    return metrics


def write_predictions(result: SplitPredictions, folder: Path) -> Path:
    """``predictions/<task>-<split>.csv``: ``id,prediction`` (sst int 0..4, para 0/1, sts float 0..5)."""
    path = folder / f"{result.task}-{result.split}.csv"
    spec = TASK_SPECS[result.task]
    write_csv(path, ["id", "prediction"],
              ([row_id, spec.format(value)] for row_id, value in zip(result.ids, result.predictions)))
    return path


def _probabilities(task: str, outputs: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Column names and values of a head's outputs as a researcher reuses them: class probabilities of a
    cross-entropy head, the positive class's probability of a binary one, the raw score of a regression."""
    kind = TASK_SPECS[task].loss
    if kind == "cross_entropy":
        shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        return [f"p_{c}" for c in range(outputs.shape[1])], shifted / shifted.sum(axis=1, keepdims=True)
    if kind == "binary_cross_entropy":
        return ["p_1"], (1.0 / (1.0 + np.exp(-outputs)))[:, None]
    return ["score"], outputs[:, None]


def write_scores(result: SplitPredictions, folder: Path) -> Path:
    """``predictions/<task>-<split>-scores.csv`` (``evaluate.save_scores``): ``id``, ``label`` (dev), the head's
    probabilities or raw score (``_probabilities``), and sts's pretrained cosine when the blend used it."""
    if result.outputs is None:
        raise ValueError(f"{result.task}-{result.split}: no head outputs to write")
    names, values = _probabilities(result.task, result.outputs)
    columns = ["id", *(["label"] if result.labels is not None else []), *names]
    if result.cosines is not None:
        columns.append("pretrained_cosine")
        values = np.column_stack([values, result.cosines])
    path = folder / f"{result.task}-{result.split}-scores.csv"
    labels = [None] * len(result.ids) if result.labels is None else [TASK_SPECS[result.task].format(v)
                                                                      for v in result.labels]
    write_csv(path, columns, ([row_id, *([label] if label is not None else []), *(f"{v:.6g}" for v in row)]
                              for row_id, label, row in zip(result.ids, labels, values)))
    return path
