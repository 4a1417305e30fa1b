"""The figures of a Table 3 (axis names, the first row off the others' scale, extra data apart from its task's
loss), what `palbert table3 --rebuild` says while it works, and its help text."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from palbert.cli import main
from palbert.table3 import figures, rebuild_table
from palbert.table3.records import CURVES_FILE, RunRecord, write_csv_gz
from test_table3 import labels, params, write_tiny_table  # noqa: F401 - module fixtures used below


@pytest.fixture
def drawn(monkeypatch) -> list[plt.Figure]:
    """The figures as drawn, kept open instead of saved."""
    kept: list[plt.Figure] = []
    monkeypatch.setattr(figures, "_save", lambda figure, out: kept.append(figure))
    yield kept
    for figure in kept:
        plt.close(figure)


def _stats(mean: float, paper: float | None = None) -> dict:
    return {"mean": mean, "std": 0.001, "values": [mean - 0.001, mean, mean + 0.001], "low": mean - 0.004,
            "high": mean + 0.004, "paper": paper}


def test_rows_are_scaled_by_the_rows_after_the_baseline_and_every_axis_is_named(drawn):
    rows = [{"id": "0", "name": "Baseline", "measured": True,
             **{m: _stats(0.40, paper=0.30) for m in figures.DEV_METRICS}}]
    rows += [{"id": str(i), "name": f"row {i}", "measured": True,
              **{m: _stats(0.740 + 0.005 * i, paper=0.80) for m in figures.DEV_METRICS}} for i in (1, 2, 3)]
    figures.rows_figure({"rows": rows, "scale": {"name": "full"}}, Path("rows.png"))
    [figure] = drawn
    axes = figure.axes
    assert axes[0].get_ylabel() == "Table 3 row"
    for axis in axes:
        low, high = axis.get_xlim()
        assert low > 0.40 and high < 0.80, (low, high)  # the baseline and the paper's numbers are off this scale
        assert high - low < 0.04  # so 0.005 between rows is an eighth of the width or more
        assert axis.get_xlabel().startswith("dev ")
        notes = [text.get_text() for text in axis.texts]
        assert "0.400 [0.396, 0.404]" in notes and "paper 0.300" in notes and "paper 0.800" in notes, notes


def _record(folder: Path, seed: int, extra: list[str], series: list[str]) -> RunRecord:
    folder.mkdir(parents=True)
    write_csv_gz(folder / CURVES_FILE, ["step", "series", "value"],
                 [[step, name, 1.0 / step] for step in (10, 20, 30) for name in series])
    return RunRecord(folder=folder, data={"seed": seed, "settings": {"data": {"extra": extra}}})


@pytest.mark.parametrize("own_curve", [True, False], ids=["extra data logged apart", "older record"])
def test_the_sst_loss_of_a_row_with_cfimdb_says_what_it_holds(tmp_path, drawn, own_curve):
    tasks = ["loss_sst", "loss_para", "loss_sts"]
    records = {"BP1": [_record(tmp_path / "BP1", 1, [], tasks)],
               "4": [_record(tmp_path / "4", 1, ["snli", "cfimdb"],
                             tasks + (["loss_snli", "loss_cfimdb"] if own_curve else []))]}
    figures.loss_figure(records, {"BP1": "annealed", "4": "extra"}, "Figure 2", "BP1", "4", ("para", "sst"),
                        tmp_path / "figure2.png")
    [figure] = drawn
    para, sst = figure.axes
    assert sst.get_ylabel() == "training loss (cross-entropy)"
    assert para.get_ylabel() == "training loss (binary cross-entropy)"
    legend = [text.get_text() for text in sst.get_legend().get_texts()]
    if own_curve:
        assert legend == ["BP1: annealed (1 seed)", "4: extra (1 seed)", "4: its CFIMDB batches (extra data) (1 seed)"]
    else:  # its loss_sst holds the CFIMDB batches too: the label says so
        assert legend == ["BP1: annealed (1 seed)", "4: extra, CFIMDB batches included (1 seed)"]


def test_a_rebuild_says_what_it_does_and_draws_the_same_bytes_again(tmp_path, params, labels, caplog):  # noqa: F811
    folder = write_tiny_table(tmp_path, params, labels)
    with caplog.at_level(logging.INFO, logger="palbert"):
        rebuild_table(tmp_path, params, "tiny")
    said = [record.getMessage() for record in caplog.records]
    assert any("reading 8 record(s)" in line for line in said), said
    assert any(line.startswith("bootstrap intervals: 1000 resamples") for line in said), said
    assert any(line == f"drawing {folder / 'figures' / 'rows.png'}" for line in said), said
    first = {path.name: path.read_bytes() for path in (folder / "figures").iterdir()}
    rebuild_table(tmp_path, params, "tiny")
    assert {path.name: path.read_bytes() for path in (folder / "figures").iterdir()} == first


def test_table3_and_check_params_help(capsys):
    with pytest.raises(SystemExit):
        main(["table3", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "95% bootstrap interval" in text and "95%%" not in text
    assert "runs at a time (default: 1)" in text
    assert "bootstrap resamples per interval (default: 1000)" in text
    with pytest.raises(SystemExit):
        main(["check-params", "--help"])
    assert "the params file to check (default: params.yaml" in " ".join(capsys.readouterr().out.split())
