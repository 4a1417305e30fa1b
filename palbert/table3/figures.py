"""Figures of a Table 3, drawn from its records only: rows with intervals, and the paper's Figures 1-3.

- ``rows.png``: each row's seed-mean SST accuracy, Quora accuracy, STS r and overall with its 95%
  bootstrap interval (dev examples and seeds), the paper's BERT-base value beside it.
- ``figure1_loss_1_vs_BP1.png``, ``figure2_loss_BP1_vs_4.png``, ``figure3_loss_4_vs_5.png``: the paper's
  training-loss comparisons, each curve the mean over seeds with a band from the lowest to the highest
  seed, smoothed over a few logging windows (one window is ``train.log_every`` steps).
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from palbert.atomic import atomic_path  # noqa: E402
from palbert.metrics import DEV_METRICS  # noqa: E402
from palbert.table3.records import RunRecord  # noqa: E402
from palbert.tasks import TASK_SPECS  # noqa: E402

log = logging.getLogger(__name__)

#: The paper's loss figures: (file, title, row a, row b, tasks).
PAPER_FIGURES: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("figure1_loss_1_vs_BP1.png", "Figure 1: round-robin (row 1) vs annealed sampling (BP1)", "1", "BP1",
     ("sst", "para", "sts")),
    ("figure2_loss_BP1_vs_4.png", "Figure 2: no extra data (BP1) vs SNLI + CFIMDB (row 4)", "BP1", "4",
     ("para", "sst")),
    ("figure3_loss_4_vs_5.png", "Figure 3: constant LR (row 4) vs slanted-triangular LR (row 5)", "4", "5",
     ("para",)),
)
SMOOTHING_WINDOWS = 5


def _metric_title(metric: str) -> str:
    """A dev metric's panel title: the task spec's, or the name itself (``overall``)."""
    return next((spec.metric_title for spec in TASK_SPECS.values() if spec.metric == metric), metric)


def _save(figure: plt.Figure, out: Path) -> None:
    with atomic_path(out) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)


def rows_figure(table: Mapping[str, Any], out: Path) -> Path:
    measured = [row for row in table["rows"] if row["measured"]]
    figure, axes = plt.subplots(1, len(DEV_METRICS), figsize=(4.2 * len(DEV_METRICS), 0.5 * len(table["rows"]) + 2),
                                sharey=True)
    labels = [f"{row['id']}: {row['name']}" for row in table["rows"]]
    position = {row["id"]: i for i, row in enumerate(table["rows"])}
    for axis, metric in zip(axes, DEV_METRICS):
        for row in measured:
            stats, y = row[metric], position[row["id"]]
            axis.errorbar([stats["mean"]], [y], xerr=[[stats["mean"] - stats["low"]], [stats["high"] - stats["mean"]]],
                          fmt="o", color="tab:blue", capsize=3, label="palbert (95% interval)" if y == 0 else None)
            axis.plot(stats["values"], [y + 0.18] * len(stats["values"]), ".", color="gray", markersize=5,
                      label="one seed" if y == 0 else None)
        paper = [(row[metric].get("paper") if row["measured"] else None, position[row["id"]]) for row in table["rows"]]
        paper = [(value, y) for value, y in paper if value is not None]
        if paper:
            axis.plot([value for value, _ in paper], [y for _, y in paper], "x", color="tab:red",
                      label="paper (BERT-base)")
        axis.set_title(_metric_title(metric))
        axis.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].invert_yaxis()
    handles, names = [], []
    for axis in axes:
        for handle, name in zip(*axis.get_legend_handles_labels()):
            if name not in names:
                handles.append(handle)
                names.append(name)
    figure.legend(handles, names, loc="lower center", ncol=3, frameon=False)
    scale = table["scale"].get("name", "?")
    figure.suptitle(f"Table 3 ({scale} scale): seed mean with its 95% interval (dev examples and seeds)")
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    _save(figure, out)
    return out


def _curves(records: Sequence[RunRecord]) -> pd.DataFrame:
    frames = [pd.DataFrame(record.curves(), columns=["step", "series", "value"]).assign(seed=record.seed)
              for record in records]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["step", "series", "value", "seed"])


def loss_figure(records: Mapping[str, Sequence[RunRecord]], names: Mapping[str, str], title: str, row_a: str,
                row_b: str, tasks: Sequence[str], out: Path) -> Path | None:
    """One panel per task: each row's loss (mean over seeds, band min..max), or None when a row has no records."""
    if not records.get(row_a) or not records.get(row_b):
        return None
    figure, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for row, color in ((row_a, "tab:blue"), (row_b, "tab:orange")):
        curves = _curves(records[row])
        for axis, task in zip(axes[0], tasks):
            series = curves[curves.series == f"loss_{task}"]
            if series.empty:
                continue
            per_seed = (series.pivot_table(index="step", columns="seed", values="value")
                        .rolling(SMOOTHING_WINDOWS, min_periods=1).mean())
            axis.plot(per_seed.index, per_seed.mean(axis=1), color=color,
                      label=f"{row}: {names.get(row, row)} ({per_seed.shape[1]} seed{'s' if per_seed.shape[1] > 1 else ''})")
            axis.fill_between(per_seed.index, per_seed.min(axis=1), per_seed.max(axis=1), color=color, alpha=0.2)
            axis.set_title(f"{TASK_SPECS[task].title} training loss")
            axis.set_xlabel("step")
            axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    # wrapped to the figure's width (about 12 characters an inch at 10 pt): a one-panel figure is narrow
    caption = f"{title} (mean over seeds, band: min-max, smoothed over {SMOOTHING_WINDOWS} log windows)"
    figure.suptitle(textwrap.fill(caption, width=int(figure.get_figwidth() * 12)), fontsize=10)
    figure.tight_layout()
    _save(figure, out)
    return out


def write_figures(table: Mapping[str, Any], records: Mapping[str, Sequence[RunRecord]], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = [rows_figure(table, folder / "rows.png")] if any(row["measured"] for row in table["rows"]) else []
    names = {row["id"]: row["name"] for row in table["rows"]}
    for filename, title, row_a, row_b, tasks in PAPER_FIGURES:
        path = loss_figure(records, names, title, row_a, row_b, tasks, folder / filename)
        if path is None:
            log.info("%s: not drawn yet (rows %s and %s need records)", filename, row_a, row_b)
        else:
            written.append(path)
    return written
