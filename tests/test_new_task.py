"""A fourth task is a row of palbert/tasks.py: a toy task added to the registry (and its prepared data) goes
through train -> evaluate -> Table 3 (records, table, figures) and the served model's example, with no other code
naming it. The registry is swapped for the test only; tiny random BERT, real mirror data for the other tasks."""

from __future__ import annotations

import importlib
import json
import pkgutil
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import palbert
import palbert.metrics as metrics
import palbert.tasks as tasks
from conftest import tiny_training_params
from palbert.tasks import TaskSpec

TOY = TaskSpec("toy", "toyset", pair=False, outputs=3, loss="cross_entropy", score="accuracy", metric="toy_acc",
               classes=3, to_prediction=lambda output: output.argmax(dim=-1), describe="class 0..2",
               title="Toy", metric_title="Toy accuracy", column="Toy acc", example=("A toy sentence.", ""),
               output_meaning="toy class 0..2", class_names=("zero", "one", "two"))


def registry(specs: dict[str, TaskSpec], dataset_task: dict[str, str]) -> dict[str, Any]:
    """Every name palbert.tasks and palbert.metrics derive from the task specs and the dataset list."""
    task_names = tuple(specs)
    paper = ("sst", "sts", "para")
    overall_tasks = tuple(sorted((t for t, s in specs.items() if s.overall is not None),
                                 key=lambda t: (paper.index(t) if t in paper else 3, task_names.index(t))))
    task_dataset = {t: s.dataset for t, s in specs.items()}
    formula = "({}) / {}".format(" + ".join(tasks.OVERALL_TERMS[specs[t].overall][1].format(specs[t].metric)
                                            for t in overall_tasks), len(overall_tasks))
    return {
        "TASK_SPECS": specs, "TASKS": task_names, "PAIR_TASKS": tuple(t for t, s in specs.items() if s.pair),
        "OVERALL_TASKS": overall_tasks, "OVERALL_FORMULA": formula, "TASK_DATASET": task_dataset,
        "DATASET_TASK": dataset_task, "DATASETS": tuple(dataset_task),
        "EXTRA_DATASETS": tuple(d for d in dataset_task if d not in task_dataset.values()),
        "TASK_METRIC": {t: s.metric for t, s in specs.items()},
        "DEV_METRICS": (*(s.metric for s in specs.values()), "overall"),
        "PLAN_ORDER": tuple(d for t in task_names for d in dataset_task if dataset_task[d] == t),
        "CURVE_SERIES": (*(f"loss_{name}" for name in (*task_names, *(d for d in dataset_task
                                                                    if d not in task_dataset.values()))),
                         "loss_simcse", "lr"),
    }


def current() -> dict[str, Any]:
    """The registry's names as palbert built them at import."""
    from palbert.table3 import records
    from palbert.train import sampling

    return {name: getattr(next(m for m in (tasks, metrics, sampling, records) if hasattr(m, name)), name)
            for name in registry({}, {})}


def test_the_registry_helper_derives_what_palbert_does():
    """Else the toy test below would check a registry palbert never builds."""
    assert registry(dict(tasks.TASK_SPECS), dict(tasks.DATASET_TASK)) == current()


@pytest.fixture
def toy_task(monkeypatch) -> TaskSpec:
    """The registry with TOY after the real tasks (its dataset after the real ones), in every palbert module
    that imported a name of it."""
    for module in pkgutil.walk_packages(palbert.__path__, "palbert."):  # all imported first: a name derived
        importlib.import_module(module.name)                               # at import time must be caught
    old = current()
    specs, dataset_task = {**tasks.TASK_SPECS, TOY.name: TOY}, {**tasks.DATASET_TASK, TOY.dataset: TOY.name}
    new = registry(specs, dataset_task)
    for module_name, module in list(sys.modules.items()):
        if module_name.split(".")[0] != "palbert" or module is None:
            continue
        for attr, value in list(vars(module).items()):
            for name, before in old.items():
                if value is before:
                    monkeypatch.setattr(module, attr, new[name])
    return TOY


def _toy_split(folder: Path, split: str, rows: int, rng: np.random.Generator) -> None:
    from palbert.data.prepared import PreparedSplit, TokenizedTexts, save_split

    lengths = rng.integers(3, 12, rows)
    texts = TokenizedTexts(flat=rng.integers(1000, 5000, int(lengths.sum())).astype(np.int32),
                           offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    save_split(PreparedSplit(dataset=TOY.dataset, split=split, ids=np.asarray([f"toy{split}{i}" for i in range(rows)]),
                             first=texts, second=None, labels=rng.integers(0, 3, rows).astype(TOY.label_dtype)),
               folder / f"{split}.npz")


@pytest.fixture
def prepared(tmp_path, tiny_prepared) -> Path:
    """The tiny prepared data with a toy dataset: random token ids, 3 classes (same tokenizer meta as sst)."""
    root = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, root)
    toy = root / TOY.dataset
    toy.mkdir()
    shutil.copy(root / "sst" / "meta.json", toy / "meta.json")
    rng = np.random.default_rng(0)
    _toy_split(toy, "train", 48, rng)
    _toy_split(toy, "dev", 40, rng)
    return root


def test_a_fourth_task_trains_evaluates_and_enters_table3(toy_task, prepared, tmp_path, tiny_bert_dir, monkeypatch):
    from palbert.params_file import TABLE3_FILE, load_params, load_table3
    from palbert.data.prepared import load_prepared
    from palbert.metrics import overall, score
    from palbert.mlflow_model import input_example, meaning, metadata
    from palbert.table3 import rebuild_table
    from palbert.table3.plan import plan_runs, select_rows
    from palbert.table3.records import CURVE_SERIES, CURVES_FILE, RECORD_FORMAT, write_record
    from palbert.train.loop import TrainPaths, train
    from palbert.evaluate_stage import EvaluationPaths, evaluate_trained_model

    monkeypatch.setenv("PALBERT_PROJECT_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tiny_training_params(tiny_bert_dir, tracking={"enabled": False},
                                  train={"epochs": 1, "sampling": "round_robin", "cap_passes": True})
    # train: the toy dataset is sampled, its head and PALs trained, its loss plotted, its dev metric scored
    paths = TrainPaths(project_root=tmp_path, prepared=prepared, checkpoints=tmp_path / "checkpoints",
                       best_model=tmp_path / "models" / "best", summary=tmp_path / "metrics" / "train.json",
                       plots=tmp_path / "metrics" / "plots" / "train")
    summary = train(params, paths)
    assert set(summary["best_dev"]) == {"sst_acc", "para_acc", "sts_pearson", "toy_acc", "overall"}
    assert len((paths.plots / "loss_toy.csv").read_text().splitlines()) == 1 + 1  # header, its one step of 4

    # evaluate: dev scores (the overall now the mean of four terms), prediction files
    evaluation = EvaluationPaths(project_root=tmp_path, model=paths.best_model, prepared=prepared,
                                 train_summary=paths.summary, dev_metrics=tmp_path / "metrics" / "dev.json",
                                 predictions=tmp_path / "predictions")
    dev = evaluate_trained_model(params, evaluation)
    assert dev["overall"] == pytest.approx(
        (dev["sst_acc"] + (dev["sts_pearson"] + 1) / 2 + dev["para_acc"] + dev["toy_acc"]) / 4)
    assert json.loads(evaluation.dev_metrics.read_text())["toy_acc"] == dev["toy_acc"]
    toy_rows = (evaluation.predictions / "toy-dev.csv").read_text().splitlines()
    assert toy_rows[0] == "id,prediction" and len(toy_rows) == 41

    # Table 3: records of two rows x two seeds (the evaluated predictions, shifted for the second seed),
    # rebuilt into table.json, table.md (a Toy acc column) and the figures
    table3 = load_table3(Path(__file__).resolve().parents[1] / TABLE3_FILE, load_params("params.yaml"))
    labels, predictions = {}, {}
    for task in tasks.TASKS:
        rows = [line.split(",") for line in (evaluation.predictions / f"{task}-dev.csv").read_text().splitlines()[1:]]
        split = load_prepared(prepared, tasks.TASK_DATASET[task], "dev")
        by_id = dict(zip(split.ids.tolist(), split.labels.tolist()))
        labels[task] = [(i, by_id[i]) for i, _ in rows]
        predictions[task] = [p for _, p in rows]
    runs = plan_runs(table3, select_rows(table3.table3.rows, ["1", "BP1"]), [1, 2], "toy", {"train.epochs": 1})
    folder = tmp_path / "results" / "table3" / "toy"
    for n, run in enumerate(runs):
        tables = {f"predictions/{task}-dev.csv.gz": (
            ["id", "prediction", "label"],
            [[i, p if (n + k) % 7 else tasks.TASK_SPECS[task].format(float(y)), y]  # seeds differ a little
             for k, ((i, y), p) in enumerate(zip(labels[task], predictions[task]))]) for task in tasks.TASKS}
        scored = {tasks.TASK_SPECS[task].metric: score(task, np.asarray([float(r[1]) for r in table[1]]),
                                                       np.asarray([float(r[2]) for r in table[1]]))
                  for task, table in zip(tasks.TASKS, tables.values())}
        scored["overall"] = overall(scored)
        tables[CURVES_FILE] = (["step", "series", "value"],
                               [[s, series, 1.0 / s + n * 0.01] for s in (1, 2, 3) for series in CURVE_SERIES])
        write_record(folder / run.folder, {
            "format": RECORD_FORMAT, "table_id": run.table_id, "row": run.row, "seed": run.seed,
            "scale": {"name": "toy", "overrides": run.scale}, "overrides": run.row_overrides,
            "settings": run.settings(), "code_commit": "c" * 40, "dev": scored, "best_epoch": 1,
            "dev_per_epoch": [{"epoch": 1, **scored}], "train_wall_s": 1.0, "precision": "fp32",
            "machine": {"cores": 2, "cpu_bf16": False, "gpu": None}}, tables)
    table = rebuild_table(tmp_path, table3, "toy")
    assert table["dev_examples"]["toy"] == 40
    measured = [row for row in table["rows"] if row["measured"]]
    assert [row["id"] for row in measured] == ["1", "BP1"] and all("toy_acc" in row for row in measured)
    markdown = (folder / "table.md").read_text()
    rows_table = markdown[markdown.index("| row | model | seeds |"):].split("\n\n")[0].splitlines()
    assert "| STS r | Toy acc | overall |" in rows_table[0]
    assert {line.count("|") for line in rows_table} == {rows_table[0].count("|")}  # measured or not, every cell
    assert (folder / "figures" / "rows.png").is_file()
    assert (folder / "figures" / "figure1_loss_1_vs_BP1.png").is_file()

    # the served model's example and meanings have a toy row
    example = input_example()
    assert example["task"].tolist() == ["sst", "para", "sts", "toy"] and example["sentence1"].iloc[3] == TOY.example[0]
    assert metadata()["prediction"]["toy"] == "toy class 0..2" and meaning("toy", 2.0) == "two"
