"""PNG renderings for MLflow (which shows images, not DVC plot specs): training plots, SST confusion matrix.

The CSVs in ``metrics/plots/train/`` stay the source: `dvc plots` renders them for DVC users, this
module draws the same data once for the MLflow UI.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from palbert.tasks import EXTRA_DATASETS, TASKS  # noqa: E402

log = logging.getLogger(__name__)


def _lines(csv_files: dict[str, Path], column: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(legend label, x, y) per line: ``column`` of each file, or every column of one file (``column="*"``);
    x is the first column. Missing and empty files draw nothing."""
    lines = []
    for label, path in csv_files.items():
        if not path.is_file():
            continue
        frame = pd.read_csv(path, dtype=float)
        if frame.empty:
            continue
        x = frame.iloc[:, 0].to_numpy()
        for name in frame.columns[1:]:
            if column in ("*", name):
                lines.append((label if column != "*" else name, x, frame[name].to_numpy()))
    return lines


def _line_plot(csv_files: dict[str, Path], column: str, title: str, xlabel: str, ylabel: str,
               out: Path) -> Path | None:
    """One line per file (``column``), or per column of one file (``column="*"``); None when no data."""
    lines = _lines(csv_files, column)
    if not lines:
        return None
    figure, axes = plt.subplots(figsize=(7, 4))
    for label, x, y in lines:
        axes.plot(x, y, label=label)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def render_training_plots(csv_folder: Path, out_folder: Path) -> list[Path]:
    """loss per task (paper Figures 1-3), LR, sampling probabilities, dev metrics per epoch."""
    out_folder.mkdir(parents=True, exist_ok=True)
    made = [
        _line_plot({t: csv_folder / f"loss_{t}.csv" for t in (*TASKS, *EXTRA_DATASETS)}, "loss",
                   "Training loss per task (extra datasets apart)", "step", "loss", out_folder / "train_loss.png"),
        _line_plot({"lr": csv_folder / "lr.csv"}, "lr", "Learning rate", "step", "lr", out_folder / "lr.png"),
        _line_plot({"p": csv_folder / "sampling.csv"}, "*", "Task sampling probability", "step", "probability",
                   out_folder / "sampling.png"),
        _line_plot({"dev": csv_folder / "dev_epochs.csv"}, "*", "Dev metrics per epoch", "epoch", "score",
                   out_folder / "dev_epochs.png"),
    ]
    return [path for path in made if path is not None]


def confusion_matrix_plot(labels: np.ndarray, predictions: np.ndarray, out: Path,
                          title: str = "SST dev: confusion matrix") -> Path:
    """The SST classes 0..4, true vs predicted (counts): where the accuracy is lost, e.g. 1 vs 0."""
    classes = list(range(5))
    figure, axes = plt.subplots(figsize=(5.5, 4.5))
    ConfusionMatrixDisplay.from_predictions(np.asarray(labels).astype(int), np.asarray(predictions).astype(int),
                                            labels=classes, ax=axes, colorbar=False)
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
