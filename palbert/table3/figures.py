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
from palbert.table3.verdicts import tests_the_paper  # noqa: E402
from palbert.tasks import DATASET_TASK, EXTRA_DATASETS, TASK_SPECS  # noqa: E402

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
#: The y-axis name of each task loss (``TaskSpec.loss``).
LOSS_NAMES = {"cross_entropy": "cross-entropy", "binary_cross_entropy": "binary cross-entropy",
              "mse": "mean squared error"}


def _metric_title(metric: str) -> str:
    """A dev metric's panel title: the task spec's, or the name itself (``overall``)."""
    return next((spec.metric_title for spec in TASK_SPECS.values() if spec.metric == metric), metric)


def _save(figure: plt.Figure, out: Path) -> None:
    with atomic_path(out) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)


def _scale_limits(rows: Sequence[Mapping[str, Any]], metric: str) -> tuple[float, float]:
    """The x range of one metric's panel: every interval and seed of ``rows``, padded a little."""
    values = [v for row in rows for v in (row[metric]["low"], row[metric]["high"], *row[metric]["values"])]
    low, high = min(values), max(values)
    pad = max(high - low, 1e-3) * 0.12
    return low - pad, high + pad


def _off_scale(axis: plt.Axes, value: float, y: float, limits: tuple[float, float], text: str, color: str) -> bool:
    """A value outside the panel's range: an arrow at the edge it lies beyond, with the value written beside it.
    Returns whether it was off the scale."""
    low, high = limits
    if low <= value <= high:
        return False
    left = value < low
    axis.plot([low if left else high], [y], "<" if left else ">", color=color, markersize=7, clip_on=False)
    axis.annotate(text, (low if left else high, y), xytext=(9 if left else -9, 0), textcoords="offset points",
                  ha="left" if left else "right", va="center", fontsize=8, color=color)
    return True


def rows_figure(table: Mapping[str, Any], out: Path) -> Path:
    """Each panel's scale is set by the rows after the first (the baseline, far below the others in every
    metric): differences of a few thousandths between them stay visible; a value off that scale (the baseline's,
    a paper number) is an arrow at the edge with the value written beside it."""
    measured = [row for row in table["rows"] if row["measured"]]
    scaled = measured[1:] or measured
    figure, axes = plt.subplots(1, len(DEV_METRICS), figsize=(4.2 * len(DEV_METRICS), 0.5 * len(table["rows"]) + 2),
                                sharey=True)
    labels = [f"{row['id']}: {row['name']}" for row in table["rows"]]
    position = {row["id"]: i for i, row in enumerate(table["rows"])}
    arrows = False  # whether any value is drawn as an arrow at a panel's edge
    for axis, metric in zip(axes, DEV_METRICS):
        limits = _scale_limits(scaled, metric)
        axis.set_xlim(*limits)
        for row in measured:
            stats, y = row[metric], position[row["id"]]
            interval = f"{stats['mean']:.3f} [{stats['low']:.3f}, {stats['high']:.3f}]"
            off = _off_scale(axis, stats["mean"], y, limits, interval, "tab:blue")
            arrows |= off
            if not off:
                axis.errorbar([stats["mean"]], [y],
                              xerr=[[stats["mean"] - stats["low"]], [stats["high"] - stats["mean"]]],
                              fmt="o", color="tab:blue", capsize=3, label="palbert (95% interval)")
                axis.plot(stats["values"], [y + 0.18] * len(stats["values"]), ".", color="gray", markersize=5,
                          label="one seed")
        for row in table["rows"]:
            value = row[metric].get("paper") if row["measured"] else None
            if value is None:
                continue
            y = position[row["id"]]
            off = _off_scale(axis, value, y - 0.22, limits, f"paper {value:.3f}", "tab:red")
            arrows |= off
            if not off:
                axis.plot([value], [y], "x", color="tab:red", label="paper (BERT-base)")
        axis.set_title(_metric_title(metric))
        axis.set_xlabel(f"dev {_metric_title(metric)}")
        axis.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(labels)), labels)
    paper = tests_the_paper(table)
    axes[0].set_ylabel("Table 3 row" if paper else "row")
    axes[0].invert_yaxis()
    handles, names = [], []
    for axis in axes:
        for handle, name in zip(*axis.get_legend_handles_labels()):
            if name not in names:
                handles.append(handle)
                names.append(name)
    if arrows:
        handles.append(plt.Line2D([], [], marker="<", linestyle="", color="gray"))
        names.append("off this scale (value written beside)")
    figure.legend(handles, names, loc="lower center", ncol=4, frameon=False)
    scale = table["scale"].get("name", "?")
    title = "Table 3" if paper else f"Table {table.get('table3_id')}"
    figure.suptitle(f"{title} ({scale} scale): seed mean with its 95% interval (dev examples and seeds)")
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    _save(figure, out)
    return out


def _curves(records: Sequence[RunRecord]) -> pd.DataFrame:
    frames = [pd.DataFrame(record.curves(), columns=["step", "series", "value"]).assign(seed=record.seed)
              for record in records]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["step", "series", "value", "seed"])


def _extra_datasets(records: Sequence[RunRecord], task: str) -> list[str]:
    """The extra datasets (``data.extra``) that trained ``task`` in these records."""
    used = {dataset for record in records for dataset in record.data["settings"]["data"].get("extra", [])}
    return [dataset for dataset in EXTRA_DATASETS if dataset in used and DATASET_TASK[dataset] == task]


def _plot_seeds(axis: plt.Axes, series: pd.DataFrame, color: str, style: str, label: str) -> None:
    """One curve: the mean over seeds, smoothed, with a band from the lowest to the highest seed."""
    if series.empty:
        return
    per_seed = (series.pivot_table(index="step", columns="seed", values="value")
                .rolling(SMOOTHING_WINDOWS, min_periods=1).mean())
    seeds = per_seed.shape[1]
    axis.plot(per_seed.index, per_seed.mean(axis=1), style, color=color,
              label=f"{label} ({seeds} seed{'s' if seeds > 1 else ''})")
    axis.fill_between(per_seed.index, per_seed.min(axis=1), per_seed.max(axis=1), color=color, alpha=0.2)


def loss_figure(records: Mapping[str, Sequence[RunRecord]], names: Mapping[str, str], title: str, row_a: str,
                row_b: str, tasks: Sequence[str], out: Path) -> Path | None:
    """One panel per task: each row's loss (mean over seeds, band min..max), or None when a row has no records."""
    if not records.get(row_a) or not records.get(row_b):
        return None
    figure, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for row, color in ((row_a, "tab:blue"), (row_b, "tab:orange")):
        curves = _curves(records[row])
        logged = set(curves.series)
        for axis, task in zip(axes[0], tasks):
            extra = _extra_datasets(records[row], task)
            # records written before extra data had curves of its own hold its batches in the task's curve
            mixed = [dataset.upper() for dataset in extra if f"loss_{dataset}" not in logged]
            label = f"{row}: {names.get(row, row)}" + (f", {' + '.join(mixed)} batches included" if mixed else "")
            _plot_seeds(axis, curves[curves.series == f"loss_{task}"], color, "-", label)
            for dataset in extra:
                _plot_seeds(axis, curves[curves.series == f"loss_{dataset}"], color, "--",
                            f"{row}: its {dataset.upper()} batches (extra data)")
            axis.set_title(f"{TASK_SPECS[task].title} training loss")
            axis.set_xlabel("step")
            axis.set_ylabel(f"training loss ({LOSS_NAMES[TASK_SPECS[task].loss]})")
            axis.grid(alpha=0.3)
    for axis in axes[0]:  # each panel its own: a task's curve may carry a note the others do not
        axis.legend(fontsize=8)
    # wrapped to the figure's width (about 12 characters an inch at 10 pt): a one-panel figure is narrow
    caption = f"{title} (mean over seeds, band: min-max, smoothed over {SMOOTHING_WINDOWS} log windows)"
    figure.suptitle(textwrap.fill(caption, width=int(figure.get_figwidth() * 12)), fontsize=10)
    figure.tight_layout()
    _save(figure, out)
    return out


def write_figures(table: Mapping[str, Any], records: Mapping[str, Sequence[RunRecord]], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if any(row["measured"] for row in table["rows"]):
        log.info("drawing %s", folder / "rows.png")
        written.append(rows_figure(table, folder / "rows.png"))
    names = {row["id"]: row["name"] for row in table["rows"]}
    for filename, title, row_a, row_b, tasks in PAPER_FIGURES:
        if row_a not in names or row_b not in names:  # a catalogue without the paper's rows (e.g. recipes.yaml)
            continue
        if records.get(row_a) and records.get(row_b):
            log.info("drawing %s", folder / filename)
        path = loss_figure(records, names, title, row_a, row_b, tasks, folder / filename)
        if path is None:
            log.info("%s: not drawn yet (rows %s and %s need records)", filename, row_a, row_b)
        else:
            written.append(path)
    return written
