"""Training numerics are pinned: a change that would mix two versions of the code into one Table 3 fails here.

The paper-scale Table 3 is measured over many sessions and machines, so every one of its records must come
from the same training arithmetic. Three tiny fixed-seed runs (the features of every Table 3 row between
them: PALs or not, joint or separate pairs, sequential / round-robin / annealed sampling, SimCSE, the extra
datasets, STLR, the relational layer) on real mirror rows must give the committed per-step losses and LRs.

The tolerance, 1e-5 relative, is ten times the float noise measured between two ways of summing: the same
runs with 1 and with 2 threads differ by at most 9e-7 relative (CPU kinds differ in the same way, by summation
order). A real change moves the losses by more: AdamW's eps 1e-8 -> 1e-6 alone moves them by 2e-5.

After a deliberate change of training numerics (only once the table being measured is complete):
``PALBERT_REPIN=1 python -m pytest tests/test_training_pinned.py`` rewrites the pinned file; commit it with the
reason.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_training_params
from palbert.tasks import DATASET_TASK, EXTRA_DATASETS
from palbert.train.loop import TrainPaths, train

PINNED = Path(__file__).parent / "data" / "pinned_training.json"
RTOL, ATOL = 1e-5, 1e-7
SERIES = ("loss_sst", "loss_para", "loss_sts", "loss_simcse", "lr")

#: Each run's overrides of ``tiny_training_params`` (2 epochs x 4 steps, log every step).
RUNS: dict[str, dict[str, dict]] = {
    "row3_pals_annealed_simcse": {},
    "row0_baseline_sequential_separate": {
        "model": {"pals": False, "pair_encoding": "separate"},
        "train": {"sampling": "sequential", "simcse": False, "cap_passes": True},
    },
    "row6_extra_stlr_relational_round_robin": {
        "data": {"extra": ["snli", "cfimdb"]},
        "model": {"relational_layer": True},
        "train": {"sampling": "round_robin", "cap_passes": True, "schedule": "stlr", "warmup_fraction": 0.25},
    },
}


def _read(path: Path) -> list[list[float]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [[int(step), float(value)] for step, value in list(csv.reader(handle))[1:]]


def _series(folder: Path) -> dict[str, list[list[float]]]:
    """The pinned series; an extra dataset's steps (logged apart, as loss_<dataset>) go back into its task's, as
    they were pinned: one batch a step and a line a step, so the per-step values are the same either way."""
    out = {name: _read(folder / f"{name}.csv") for name in SERIES}
    for dataset in EXTRA_DATASETS:
        if (folder / f"loss_{dataset}.csv").is_file():
            task = f"loss_{DATASET_TASK[dataset]}"
            out[task] = sorted(out[task] + _read(folder / f"loss_{dataset}.csv"))
    return out


def _run(name: str, tiny_bert: Path, prepared: Path, workdir: Path) -> dict[str, list[list[float]]]:
    sections = RUNS[name]
    params = tiny_training_params(tiny_bert, **{
        **sections,
        "train": {"log_every": 1, "checkpoint_every": 1000, **sections.get("train", {})},
        "tracking": {"enabled": False},
    })
    paths = TrainPaths(project_root=workdir, prepared=prepared, checkpoints=workdir / "checkpoints",
                       best_model=workdir / "models" / "best", summary=workdir / "metrics" / "train.json",
                       plots=workdir / "metrics" / "plots" / "train")
    train(params, paths)
    return _series(paths.plots)


@pytest.mark.parametrize("name", list(RUNS))
def test_training_losses_equal_the_pinned_values(name, tiny_bert_dir, tiny_prepared, tmp_path, monkeypatch):
    monkeypatch.setenv("PALBERT_PROJECT_ROOT", str(tmp_path))
    got = _run(name, tiny_bert_dir, tiny_prepared, tmp_path)
    if os.environ.get("PALBERT_REPIN") == "1":
        pinned = json.loads(PINNED.read_text(encoding="utf-8")) if PINNED.is_file() else {}
        pinned[name] = got
        PINNED.parent.mkdir(parents=True, exist_ok=True)
        PINNED.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        pytest.skip(f"PALBERT_REPIN=1: rewrote {name} in {PINNED}")
    want = json.loads(PINNED.read_text(encoding="utf-8"))[name]
    assert sum(len(values) for values in want.values()) >= 16, "the pinned run logged too little to pin anything"
    for series in SERIES:
        steps_got, steps_want = [s for s, _ in got[series]], [s for s, _ in want[series]]
        assert steps_got == steps_want, f"{name} {series}: logged at steps {steps_got}, pinned {steps_want}"
        values_got = np.array([v for _, v in got[series]], dtype=np.float64)
        values_want = np.array([v for _, v in want[series]], dtype=np.float64)
        assert np.allclose(values_got, values_want, rtol=RTOL, atol=ATOL), (
            f"{name} {series}: training numerics changed (max relative difference "
            f"{np.max(np.abs(values_got - values_want) / np.maximum(np.abs(values_want), ATOL)):.2e}; tolerance "
            f"{RTOL:g}). No change of training numerics may land while a Table 3 is measured; see this file's "
            f"docstring.\n  got    {values_got.tolist()}\n  pinned {values_want.tolist()}")


def test_the_pinned_runs_differ_from_each_other():
    """A pin that every configuration satisfies alike would pin nothing: the three runs' losses differ."""
    pinned = json.loads(PINNED.read_text(encoding="utf-8"))
    firsts = {name: tuple(v for _, v in pinned[name]["loss_sst"][:3]) for name in RUNS}
    assert len(set(firsts.values())) == len(RUNS), firsts
    assert not pinned["row0_baseline_sequential_separate"]["loss_simcse"]  # SimCSE off there
    assert len(pinned["row3_pals_annealed_simcse"]["loss_simcse"]) == 8
