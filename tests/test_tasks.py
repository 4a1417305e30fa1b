"""palbert.tasks is the one list of tasks and datasets: the places that must spell them out literally agree with it."""

from __future__ import annotations

import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from palbert.config import DataParams
from palbert.data.readers import TSV_LAYOUTS
from palbert.data.sources import RAW_FILES
from palbert.metrics import DEV_METRICS
from palbert.tasks import DATASET_TASK, DATASETS, EXTRA_DATASETS, PAIR_TASKS, TASK_DATASET, TASK_SPECS, TASKS
from palbert.train.sampling import PLAN_ORDER

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_prepare_foreach_lists_the_datasets():
    """DVC needs the list literal in dvc.yaml; it must name the datasets of palbert.tasks, in their order."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    assert stages["prepare"]["foreach"] == list(DATASETS)


def test_dvc_plots_name_every_task_dataset_and_metric():
    """DVC needs literal plot fields: a new task or dataset must appear in them (this test names where)."""
    plots = {next(iter(p)): next(iter(p.values())) for p in
             yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["plots"]}
    losses = plots["Training loss per task (paper Figures 1-3)"]["y"]
    assert list(losses) == [f"metrics/plots/train/loss_{task}.csv" for task in TASKS]
    assert plots["Task sampling probability"]["y"]["metrics/plots/train/sampling.csv"] == list(DATASETS)
    assert plots["Dev metrics per epoch"]["y"]["metrics/plots/train/dev_epochs.csv"] == list(DEV_METRICS)


def test_extra_datasets_param_allows_the_extra_datasets():
    (literal,) = typing.get_args(typing.get_type_hints(DataParams)["extra"])
    assert typing.get_args(literal) == EXTRA_DATASETS


def test_every_dataset_has_raw_files_a_reader_and_a_task():
    assert set(RAW_FILES) == set(DATASETS)
    assert set(TSV_LAYOUTS) | {"snli"} == set(DATASETS)
    assert set(DATASET_TASK.values()) == set(TASKS)
    assert [DATASET_TASK[TASK_DATASET[task]] for task in TASKS] == list(TASKS)


def test_table_order_is_the_papers():
    """Orders that results depend on (PAL creation, seeds, sequential epochs) and metrics/dev.json's names."""
    assert TASKS == ("sst", "para", "sts")
    assert PAIR_TASKS == ("para", "sts")
    assert DATASETS == ("sst", "quora", "sts", "snli", "cfimdb")
    assert EXTRA_DATASETS == ("snli", "cfimdb")
    assert PLAN_ORDER == ("sst", "cfimdb", "quora", "snli", "sts")
    assert DEV_METRICS == ("sst_acc", "para_acc", "sts_pearson", "overall")


@pytest.mark.parametrize("task, output, expected", [
    ("sst", torch.tensor([[0.1, 2.0, 0.0, -1.0, 0.5]]), torch.tensor([1])),
    ("para", torch.tensor([-0.3, 0.0, 0.2]), torch.tensor([0, 0, 1])),
    ("sts", torch.tensor([-1.0, 2.25, 7.0]), torch.tensor([0.0, 2.25, 5.0])),
])
def test_prediction_of_a_raw_output(task, output, expected):
    predicted = TASK_SPECS[task].predict(output)
    assert predicted.dtype == expected.dtype
    assert torch.equal(predicted, expected)


def test_prediction_formats_and_label_types():
    assert [TASK_SPECS[t].format(3.0) for t in TASKS] == ["3", "3", "3.0000"]
    assert [TASK_SPECS[t].python_value(np.float64(1.0)) for t in TASKS] == [1, 1, 1.0]
    assert [type(TASK_SPECS[t].python_value(np.float64(1.0))) for t in TASKS] == [int, int, float]
    assert [TASK_SPECS[t].label_dtype for t in TASKS] == ["int64", "int64", "float32"]
    assert [TASK_SPECS[t].long_targets for t in TASKS] == [True, False, False]
