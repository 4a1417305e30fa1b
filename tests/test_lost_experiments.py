"""Records of Table 3 runs whose DVC experiment was not kept, written from a real MLflow store (SQLite)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from palbert.config import TABLE3_FILE, load_params, load_table3
from palbert.metrics import DEV_METRICS, overall, score
from palbert.table3.lost_experiments import (logged_settings_problem, record_lost_experiments, summaries_from_logs,
                                             summary_from_log)
from palbert.table3.plan import Table3Error, plan_runs, select_rows
from palbert.table3.records import read_record
from palbert.tracking.tags import param_strings

REPO = Path(__file__).resolve().parents[1]
SCALE = {"train.epochs": 2, "train.steps_per_epoch": 3}
MACHINE = {"gpu": "NVIDIA H200", "cores": 16, "described_by": "the test"}

#: The train loop's own lines, as a queued run's log holds them (from the H200 runs of results/table3/full/*-s1).
LOG = """\
14:42:54 INFO palbert.train.loop: training 6 steps (2 epochs, sampling=annealed, precision=bf16 [auto: this GPU has native bf16], 1 process(es), batch 16 per process)
14:47:45 INFO palbert.train.loop: trained 6 steps in 291 s (15 s of it scoring dev; 313.9 examples/s while training); best epoch 2: overall=0.7479
14:47:45 INFO palbert.tracking: MLflow run {run_id} ended FINISHED
"""


@pytest.fixture(scope="module")
def params():
    return load_table3(REPO / TABLE3_FILE, load_params(REPO / "params.yaml"))


def test_the_summary_mlflow_lacks_comes_from_the_run_log(tmp_path):
    text = LOG.format(run_id="a" * 32)
    assert summary_from_log(text) == {"mlflow_run_id": "a" * 32, "precision": "bf16", "world_size": 1,
                                      "examples_per_s": 313.9}
    with pytest.raises(Table3Error, match=r"no the 'trained N steps' line"):
        summary_from_log(text.splitlines()[0] + "\n" + text.splitlines()[2])
    (tmp_path / "done.out").write_text(text, encoding="utf-8")
    (tmp_path / "killed.out").write_text(text.splitlines()[0], encoding="utf-8")
    assert list(summaries_from_logs(sorted(tmp_path.glob("*.out")))) == ["a" * 32]  # the unfinished one is skipped


def test_logged_params_are_checked_against_the_planned_settings(params):
    (run,) = plan_runs(params, select_rows(params.table3.rows, ["BP1"]), [1], "t", SCALE)
    logged = {**param_strings(run.params), "train.threads": "2", "tracking.table3_row": "BP1"}  # not settings
    assert logged_settings_problem(run, logged) is None
    assert "train.lr: '5e-05' logged, '2e-05' planned" in logged_settings_problem(run, {**logged, "train.lr": "5e-05"})


def log_finished_run(client, experiment_id: str, run, labels: dict, rng, tmp: Path, params_override=None) -> str:
    """What a queued table run leaves in MLflow: tags, params, per-epoch and final dev metrics, predictions, curves."""
    mlflow_run = client.create_run(experiment_id, tags={"table3_id": run.table_id, "table3_row": run.row,
                                                        "dvc_exp_name": run.name, "dvc_exp_baseline_rev": "c" * 40})
    run_id = mlflow_run.info.run_id
    for key, value in {**param_strings(run.params), **(params_override or {})}.items():
        client.log_param(run_id, key, value)
    folder = tmp / run_id / "predictions"
    folder.mkdir(parents=True)
    predicted = {"sst": np.where(rng.random(len(labels["sst"][1])) < 0.6, labels["sst"][1], 0),
                 "para": labels["para"][1],
                 "sts": (labels["sts"][1] + rng.normal(0, 1, len(labels["sts"][1]))).round(4)}
    for task, (ids, _) in labels.items():
        body = "".join(f"{i},{p:.4f}\n" if task == "sts" else f"{i},{int(p)}\n" for i, p in zip(ids, predicted[task]))
        (folder / f"{task}-dev.csv").write_text("id,prediction\n" + body, encoding="utf-8")
    client.log_artifacts(run_id, str(folder), "predictions")
    (tmp / run_id / "loss_sst.csv").write_text("step,loss\n1,1.6\n2,1.5\n", encoding="utf-8")
    client.log_artifact(run_id, str(tmp / run_id / "loss_sst.csv"), "plots")
    dev = {f"{task}_{'pearson' if task == 'sts' else 'acc'}": score(task, predicted[task], labels[task][1])
           for task in labels}
    dev["overall"] = overall(dev)
    for step in (3, 6):  # per epoch, as training logs them
        for name in DEV_METRICS:
            client.log_metric(run_id, name, dev[name] - (0.01 if step == 3 else 0), timestamp=step, step=step)
    for name in DEV_METRICS:  # the evaluate stage: the same names at the last step, and metrics/dev.json
        client.log_metric(run_id, name, dev[name], timestamp=7, step=6)
    (tmp / run_id / "dev.json").write_text(json.dumps(dev), encoding="utf-8")
    client.log_artifact(run_id, str(tmp / run_id / "dev.json"), "metrics")
    client.log_metric(run_id, "best_epoch", 2, step=6)
    client.log_metric(run_id, "train_wall_s", 291.04, step=6)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def test_lost_experiments_become_records_from_their_mlflow_runs(tmp_path, params):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("palbert", artifact_location=(tmp_path / "artifacts").as_uri())
    rng = np.random.default_rng(0)
    labels = {"sst": (np.array([f"s{i}" for i in range(40)]), rng.integers(0, 5, 40)),
              "para": (np.array([f"p{i}" for i in range(50)]), rng.integers(0, 2, 50)),
              "sts": (np.array([f"t{i}" for i in range(30)]), rng.uniform(0, 5, 30).round(1))}
    runs = plan_runs(params, select_rows(params.table3.rows, ["0", "3", "best"]), [1], "full", SCALE)
    ran = {run.row: log_finished_run(client, experiment_id, run, labels, rng, tmp_path / "logged") for run in runs[:2]}
    logs = {run_id: summary_from_log(LOG.format(run_id=run_id)) for run_id in ran.values()}

    written = record_lost_experiments(tmp_path / "table", runs, "full", client, "palbert", labels, logs, MACHINE)
    assert [record.row for record in written] == ["0", "3"]  # best has no MLflow run: left, not an error
    record = read_record(tmp_path / "table" / "3-s1", runs[1], SCALE)  # checksums, settings and dev block hold
    assert record.data["dvc_experiment"] == {"name": "t3-3-s1", "rev": None}
    assert record.data["mlflow_run_id"] == ran["3"] and record.data["code_commit"] == "c" * 40
    assert (record.data["precision"], record.data["examples_per_s"], record.data["steps"]) == ("bf16", 313.9, 6)
    assert record.data["machine"] == MACHINE and record.data["train_wall_s"] == 291.0
    assert [epoch["epoch"] for epoch in record.data["dev_per_epoch"]] == [1, 2]
    assert record.data["dev_per_epoch"][1]["overall"] == pytest.approx(record.dev["overall"])
    assert [c[1] for c in record.curves()] == ["loss_sst", "loss_sst"]

    (other,) = plan_runs(params, select_rows(params.table3.rows, ["best"]), [1], "full", SCALE)
    run_id = log_finished_run(client, experiment_id, other, labels, rng, tmp_path / "logged",
                              params_override={"train.lr": "3e-05"})
    with pytest.raises(Table3Error, match=r"t3-best-s1\) trained with other settings than planned: train.lr"):
        record_lost_experiments(tmp_path / "table", [other], "full", client, "palbert", labels,
                                {run_id: summary_from_log(LOG.format(run_id=run_id))}, MACHINE)
    assert not (tmp_path / "table" / "best-s1").exists()
