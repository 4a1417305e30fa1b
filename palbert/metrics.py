"""Dev metrics (paper 5.2): accuracy for sst and para, Pearson r for sts, and the overall score.

overall = (sst_acc + (sts_pearson + 1) / 2 + para_acc) / 3 (``tasks.OVERALL_FORMULA``, from each ``TaskSpec.overall``)
maps Pearson's [-1, 1] onto [0, 1] so the three tasks weigh alike. ``bootstrap_rows`` says whether rows of seeds (Table 3) differ in overall score
by more than the noise of the dev examples and of the seeds.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score

from palbert.tasks import OVERALL_TASKS, TASK_SPECS, TASKS, TaskSpec

log = logging.getLogger(__name__)

#: Metric names in metrics/dev.json (a contract other tools read: docs/pipeline.md), per task and in table order.
TASK_METRIC: dict[str, str] = {task: spec.metric for task, spec in TASK_SPECS.items()}
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
    return {"accuracy": accuracy, "pearson": pearson}[_spec(task).score](predictions, labels)


def _spec(task: str) -> TaskSpec:
    if task not in TASK_SPECS:
        raise ValueError(f"unknown task {task!r}: expected {', '.join(TASKS)}")
    return TASK_SPECS[task]


def overall(scores: Mapping[str, ArrayLike]) -> Any:
    """The mean of the overall tasks' terms, from dev metrics by name (floats, or arrays of resamples).

    Summed in ``OVERALL_TASKS`` order from 0: bitwise the paper's (sst_acc + (sts_pearson + 1) / 2 + para_acc) / 3.
    """
    return sum(TASK_SPECS[task].overall_term(scores[TASK_SPECS[task].metric]) for task in OVERALL_TASKS) / len(OVERALL_TASKS)


@dataclass(frozen=True)
class BootstrapInterval:
    difference: float  # mean overall(a) - mean overall(b) on the dev examples as given
    low: float
    high: float
    confidence: float
    resamples: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def task_scores(task: str, predictions: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``task``'s dev metric on each row of ``rows`` ([resamples, n] example indices) at once.

    The bootstrap scores a thousand resamples per system: accuracy as one array mean (sklearn's
    ``accuracy_score`` takes one sample at a time), Pearson r with scipy along the last axis; r of a
    constant side is 0, as in ``pearson``.
    """
    if _spec(task).score == "accuracy":
        return (predictions == labels).astype(np.float64)[rows].mean(axis=-1)
    p, y = predictions.astype(np.float64)[rows], labels.astype(np.float64)[rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant resamples: NaN, reported as 0 below
        r = np.atleast_1d(pearsonr(p, y, axis=-1).statistic)
    return np.nan_to_num(np.clip(r, -1.0, 1.0), nan=0.0).reshape(p.shape[:-1])


#: Index matrices of one bootstrap chunk hold at most this many entries (memory stays ~64 MB).
_CHUNK_ENTRIES = 8_000_000

System = Mapping[str, np.ndarray]  # task -> dev predictions in label order


@dataclass
class RowBootstrap:
    """Seed-mean dev metrics of each row on the full dev sets and on every bootstrap resample."""

    point: dict[str, dict[str, float]]  # metric -> row -> value
    draws: dict[str, dict[str, np.ndarray]]  # metric -> row -> [resamples]
    confidence: float
    resamples: int

    def _percentiles(self, values: np.ndarray) -> tuple[float, float]:
        tail = (1 - self.confidence) / 2 * 100
        low, high = np.percentile(values, [tail, 100 - tail])
        return float(low), float(high)

    def interval(self, row: str, metric: str = "overall") -> tuple[float, float]:
        """Percentile interval of one row's seed-mean ``metric``."""
        return self._percentiles(self.draws[metric][row])

    def difference(self, a: str, b: str, metric: str = "overall") -> BootstrapInterval:
        """Percentile interval of row ``a`` minus row ``b``."""
        low, high = self._percentiles(self.draws[metric][a] - self.draws[metric][b])
        return BootstrapInterval(difference=self.point[metric][a] - self.point[metric][b], low=low, high=high,
                                 confidence=self.confidence, resamples=self.resamples)


def bootstrap_rows(rows: Mapping[str, Sequence[System]], labels: Mapping[str, np.ndarray],
                   resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> RowBootstrap:
    """A two-level bootstrap of each row's seed-mean dev metrics, over dev examples and over seeds.

    Each resample draws every task's dev examples with replacement (tasks independently, as their dev
    sets are distinct) and shares that draw across all rows, so differences between rows are paired
    over examples; it also draws each row's seeds with replacement, so a row's seed-to-seed spread widens
    its interval. A difference whose interval excludes 0 is larger than both kinds of noise.
    """
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need resamples >= 1 and 0 < confidence < 1, got {resamples}, {confidence}")
    tasks = tuple(TASK_METRIC)
    sizes = {task: len(labels[task]) for task in tasks}
    for row, systems in rows.items():
        if not systems:
            raise ValueError(f"row {row}: no seed's predictions")
        for system in systems:
            for task in tasks:
                if len(system[task]) != sizes[task]:
                    raise ValueError(f"row {row}, {task}: {len(system[task])} predictions for {sizes[task]} labels")

    def per_seed(systems: Sequence[System], draw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """metric -> [..., seeds]"""
        scores = {TASK_METRIC[task]: np.stack([task_scores(task, s[task], labels[task], draw[task]) for s in systems],
                                              axis=-1) for task in tasks}
        scores["overall"] = overall(scores)
        return scores

    everything = {task: np.arange(sizes[task]) for task in tasks}
    point: dict[str, dict[str, float]] = {metric: {} for metric in DEV_METRICS}
    for row, systems in rows.items():
        for metric, values in per_seed(systems, everything).items():
            point[metric][row] = float(values.mean())
    example_rng = np.random.default_rng([seed, 0])
    seed_rng = np.random.default_rng([seed, 1])
    chunk = max(1, _CHUNK_ENTRIES // max(sizes.values()))
    parts: dict[str, dict[str, list[np.ndarray]]] = {metric: {row: [] for row in rows} for metric in DEV_METRICS}
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        draw = {task: example_rng.integers(0, sizes[task], (count, sizes[task])) for task in tasks}
        for row, systems in rows.items():
            picked = seed_rng.integers(0, len(systems), (count, len(systems)))
            for metric, values in per_seed(systems, draw).items():  # [count, seeds]
                parts[metric][row].append(np.take_along_axis(values, picked, axis=1).mean(axis=1))
    draws = {metric: {row: np.concatenate(p) for row, p in by_row.items()} for metric, by_row in parts.items()}
    return RowBootstrap(point=point, draws=draws, confidence=confidence, resamples=resamples)
