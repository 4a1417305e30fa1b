"""Dev metrics (paper 5.2): accuracy for sst and para, Pearson r for sts, and the overall score.

overall = (sst_acc + (sts_pearson + 1) / 2 + para_acc) / 3 maps Pearson's [-1, 1] onto [0, 1] so the
three tasks weigh alike. ``bootstrap_difference`` says whether two systems' overall scores on the
same dev examples differ by more than resampling noise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score

log = logging.getLogger(__name__)

#: Metric names in metrics/dev.json (the DESIGN.md contract), per task and in table order.
TASK_METRIC: dict[str, str] = {"sst": "sst_acc", "para": "para_acc", "sts": "sts_pearson"}
DEV_METRICS: tuple[str, ...] = (*TASK_METRIC.values(), "overall")


def _pair(predictions: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} must be 1-D of one length")
    if len(p) == 0:
        raise ValueError("no examples to score")
    return p, y


def accuracy(predictions: ArrayLike, labels: ArrayLike) -> float:
    p, y = _pair(predictions, labels)
    return float(accuracy_score(y, p))


def pearson(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Pearson r; 0.0 (with a warning) when either side is constant, where r is undefined.

    0 rather than scipy's NaN keeps dev.json valid JSON and best-epoch selection well defined.
    """
    p, y = _pair(predictions, labels)
    p, y = p.astype(np.float64), y.astype(np.float64)
    if np.ptp(p) == 0 or np.ptp(y) == 0:
        log.warning("pearson: constant predictions or labels; reporting r = 0")
        return 0.0
    return float(pearsonr(p, y).statistic)


def score(task: str, predictions: ArrayLike, labels: ArrayLike) -> float:
    """The paper's dev metric of ``task``: accuracy for sst and para, Pearson r for sts."""
    if task in ("sst", "para"):
        return accuracy(predictions, labels)
    if task == "sts":
        return pearson(predictions, labels)
    raise ValueError(f"unknown task {task!r}: expected sst, para or sts")


def overall(sst_acc: float, para_acc: float, sts_pearson: float) -> float:
    return (sst_acc + (sts_pearson + 1) / 2 + para_acc) / 3


def overall_from_tasks(scores: Mapping[str, float]) -> float:
    """``overall`` from ``{"sst": ..., "para": ..., "sts": ...}`` task scores."""
    return overall(scores["sst"], scores["para"], scores["sts"])


@dataclass(frozen=True)
class BootstrapInterval:
    difference: float  # overall(a) - overall(b) on the dev examples as given
    low: float
    high: float
    confidence: float
    resamples: int


def bootstrap_difference(
    predictions_a: Mapping[str, ArrayLike],
    predictions_b: Mapping[str, ArrayLike],
    labels: Mapping[str, ArrayLike],
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapInterval:
    """Percentile bootstrap interval of overall(a) − overall(b); each maps task → dev predictions.

    Each resample draws every task's dev examples with replacement (tasks independently, as their dev
    sets are distinct) and scores both systems on the same draw, so the interval reflects the paired
    difference. An interval that excludes 0 means the gap is larger than resampling noise.
    """
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need resamples >= 1 and 0 < confidence < 1, got {resamples}, {confidence}")
    tasks = tuple(TASK_METRIC)
    truth = {task: _pair(labels[task], labels[task])[0] for task in tasks}
    system_a = {task: _pair(predictions_a[task], truth[task])[0] for task in tasks}
    system_b = {task: _pair(predictions_b[task], truth[task])[0] for task in tasks}

    def difference(rows: Mapping[str, np.ndarray | slice]) -> float:
        a = {task: score(task, system_a[task][rows[task]], truth[task][rows[task]]) for task in tasks}
        b = {task: score(task, system_b[task][rows[task]], truth[task][rows[task]]) for task in tasks}
        return overall_from_tasks(a) - overall_from_tasks(b)

    rng = np.random.default_rng(seed)
    draws = [
        difference({task: rng.integers(0, len(truth[task]), len(truth[task])) for task in tasks})
        for _ in range(resamples)
    ]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return BootstrapInterval(
        difference=difference({task: slice(None) for task in tasks}),
        low=float(low),
        high=float(high),
        confidence=confidence,
        resamples=resamples,
    )
