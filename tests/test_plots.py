"""plots.py reads the training CSVs with pandas and draws exactly what a plain csv reader finds in them."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import matplotlib.axes
import pytest

from palbert.plots import render_training_plots
from palbert.tasks import TASKS

COMMITTED = Path(__file__).resolve().parents[1] / "metrics" / "plots" / "train"


def _hand_read(path: Path) -> tuple[list[str], list[list[float]]]:
    """A plain csv reader: the reference for what plots.py reads with pandas."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    return header, [[float(v) if v not in ("", "nan") else float("nan") for v in row] for row in body]


def _hand_lines(csv_files: dict[str, Path], column: str) -> list[tuple[str, list[float], list[float]]]:
    """What the old _line_plot passed to axes.plot, line by line."""
    lines = []
    for label, path in csv_files.items():
        if not path.is_file():
            continue
        header, rows = _hand_read(path)
        if not rows:
            continue
        for name in [c for c in header[1:] if column in ("*", c)]:
            lines.append((label if column != "*" else name, [row[0] for row in rows],
                          [row[header.index(name)] for row in rows]))
    return lines


def _same(a: list[float], b) -> bool:
    return len(a) == len(b) and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, map(float, b)))


def test_training_pngs_draw_the_same_data_as_the_hand_parser(tmp_path, monkeypatch):
    """The committed training CSVs, plus a NaN / empty-cell row, a header-only and a missing file."""
    folder = tmp_path / "csv"
    shutil.copytree(COMMITTED, folder)
    with open(folder / "dev_epochs.csv", "a", encoding="utf-8") as handle:
        handle.write("4,nan,,0.5,nan\n")
    (folder / "loss_sts.csv").write_text("step,loss\n", encoding="utf-8")
    (folder / "lr.csv").unlink()
    drawn: list[tuple[str, object, object]] = []
    plot = matplotlib.axes.Axes.plot

    def recording_plot(self, x, y, *args, label=None, **kwargs):
        drawn.append((label, x, y))
        return plot(self, x, y, *args, label=label, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", recording_plot)
    made = render_training_plots(folder, tmp_path / "png")

    expected = (_hand_lines({t: folder / f"loss_{t}.csv" for t in TASKS}, "loss")
                + _hand_lines({"lr": folder / "lr.csv"}, "lr")
                + _hand_lines({"p": folder / "sampling.csv"}, "*")
                + _hand_lines({"dev": folder / "dev_epochs.csv"}, "*"))
    assert [label for label, _, _ in drawn] == [label for label, _, _ in expected]
    for (_, x, y), (_, ref_x, ref_y) in zip(drawn, expected):
        assert _same(ref_x, x) and _same(ref_y, y)
    assert [p.name for p in made] == ["train_loss.png", "sampling.png", "dev_epochs.png"]
    assert all(p.stat().st_size > 0 for p in made)


@pytest.mark.parametrize("content", ["step,loss\n", None])
def test_no_png_without_data(tmp_path, content):
    if content is not None:
        (tmp_path / "lr.csv").write_text(content, encoding="utf-8")
    assert render_training_plots(tmp_path, tmp_path / "png") == []
