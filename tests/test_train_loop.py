"""The training loop on a tiny BERT and real (subset) mirror data: outputs, MLflow record, exact resume."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import palbert.train.loop as loop
from conftest import tiny_training_params
from palbert.train.loop import TrainPaths, train


def _paths(workdir: Path, prepared: Path) -> TrainPaths:
    return TrainPaths(project_root=workdir, prepared=prepared, checkpoints=workdir / "checkpoints",
                      best_model=workdir / "models" / "best", summary=workdir / "metrics" / "train.json",
                      plots=workdir / "metrics" / "plots" / "train")


@pytest.fixture()
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PALBERT_PROJECT_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _final_weights(paths: TrainPaths) -> dict[str, torch.Tensor]:
    return load_file(str(paths.checkpoints / "latest" / "model.safetensors"))


def test_a_run_writes_its_outputs_and_one_mlflow_run(workdir, tiny_bert_dir, tiny_prepared, caplog):
    params = tiny_training_params(tiny_bert_dir)
    paths = _paths(workdir, tiny_prepared)
    with caplog.at_level("INFO", logger="palbert.train.loop"):
        summary = train(params, paths)
    assert "precision=fp32 [train.precision=fp32]" in caplog.text  # the precision and why
    assert f"s of it scoring dev; {summary['examples_per_s']:.1f} examples/s while training" in caplog.text
    # the rate is training only: the dev scoring after each epoch is left out of it
    assert 0 < summary["dev_scoring_s"] < summary["train_wall_s"]
    examples = summary["steps"] * params.train.batch_size
    training_s = summary["train_wall_s"] - summary["dev_scoring_s"]  # both rounded to 0.1 s in train.json
    assert examples / (training_s + 0.1) <= summary["examples_per_s"] <= examples / max(training_s - 0.1, 1e-9)

    assert summary["steps"] == 8 and summary["best_epoch"] in (1, 2)
    assert set(summary["best_dev"]) == {"sst_acc", "para_acc", "sts_pearson", "overall"}
    on_disk = json.loads(paths.summary.read_text())
    assert on_disk["mlflow_run_id"] == summary["mlflow_run_id"]
    assert on_disk["tracking_uri"] == "sqlite:///mlflow.db"  # the project's store, named relative to the project
    assert [row["epoch"] for row in on_disk["dev_per_epoch"]] == [1, 2]
    # annealed sampling: alpha 1.0 then 0.2 -> probabilities move towards uniform
    probabilities = on_disk["sampling_probabilities"]
    assert set(probabilities) == {"1", "2"}
    # models/best is a Hugging Face BERT folder (the encoder) and still palbert's whole model
    from transformers import AutoModel, AutoTokenizer

    from palbert.model import load_model

    assert type(AutoModel.from_pretrained(paths.best_model)).__name__ == "BertModel"
    assert AutoTokenizer.from_pretrained(paths.best_model)("a film").input_ids[0] == 101  # [CLS]
    assert load_model(paths.best_model)[0].params == params.model
    # its README.md is a model card that huggingface_hub reads, written from the run's params and scores
    from huggingface_hub import ModelCard

    card = ModelCard.load(paths.best_model / "README.md")
    assert card.data.language == "en" and card.data.library_name == "transformers"
    assert f"{summary['best_dev']['overall']:.4f}" in card.text and "English only" in card.text
    assert f"epoch {summary['best_epoch']}" in card.text and summary["mlflow_run_id"] in card.text
    # every file is readable like any other output (safetensors alone writes 0600)
    assert {oct(f.stat().st_mode & 0o777) for f in paths.best_model.iterdir()} == {oct(0o666 & ~_umask())}
    for name in ("loss_sst", "loss_para", "loss_sts", "loss_simcse", "lr", "sampling", "dev_epochs"):
        assert (paths.plots / f"{name}.csv").read_text().count("\n") >= 2, name

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.pals"] == "True" and run.data.params["train.sampling"] == "annealed"
    assert len(client.get_metric_history(run.info.run_id, "lr")) == 8
    # the dev scores carry metrics/dev.json's names, one value per epoch
    assert [m.step for m in client.get_metric_history(run.info.run_id, "overall")] == [summary["steps"] // 2,
                                                                                      summary["steps"]]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/train_loss.png", "plots/lr.png", "plots/dev_epochs.png", "plots/loss_sst.csv"} <= artifacts
    # parameter counts are params (facts), not metrics; no DVC experiment here: the run is the workspace's
    assert int(run.data.params["parameters.total"]) == on_disk["parameters"]["total"]
    assert int(run.data.params["parameters.pal_per_task.sst"]) == on_disk["parameters"]["pal_per_task"]["sst"]
    assert not [key for key in run.data.metrics if key.startswith("params_")]
    assert run.info.run_name.startswith("workspace@") and run.info.run_name != "workspace@"
    assert _datasets(run) == {("sst-train", "training"), ("quora-train", "training"), ("sts-train", "training"),
                              ("sst-dev", "validation"), ("quora-dev", "validation"), ("sts-dev", "validation")}

    # the evaluate stage adds the SST dev confusion matrix (scikit-learn's) to the same run
    from palbert.evaluate_stage import EvaluationPaths, evaluate_trained_model

    evaluate_trained_model(params, EvaluationPaths(
        project_root=workdir, model=paths.best_model, prepared=tiny_prepared, train_summary=paths.summary,
        dev_metrics=workdir / "metrics" / "dev.json", predictions=workdir / "predictions"))
    artifacts = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts["plots/sst_dev_confusion.png"] > 1000
    # ... and the kept model's scores under the same names, at the last step: the run's value is dev.json's
    dev = json.loads((workdir / "metrics" / "dev.json").read_text())
    assert {name: client.get_run(run.info.run_id).data.metrics[name] for name in dev} == pytest.approx(dev)
    history = sorted(client.get_metric_history(run.info.run_id, "overall"), key=lambda m: (m.step, m.timestamp))
    # per epoch, then the kept model's score once more at the last step, logged with the model's id (how MLflow
    # links a metric to a logged model)
    assert [m.step for m in history] == [summary["steps"] // 2, summary["steps"], summary["steps"]]
    assert history[-1].value == pytest.approx(dev["overall"])
    logged_model = client.search_logged_models(experiment_ids=[run.info.experiment_id])[0]
    assert {m.key: m.value for m in logged_model.metrics} == pytest.approx(dev)
    assert not [key for key in client.get_run(run.info.run_id).data.metrics if "dev_" in key or "/" in key]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _datasets(run) -> set[tuple[str, str]]:
    """(name, context) of each dataset input of an MLflow run; a set, so check the count separately."""
    return {(i.dataset.name, next(t.value for t in i.tags if t.key == "mlflow.data.context"))
            for i in run.inputs.dataset_inputs}


def test_interrupted_run_resumes_to_bitwise_identical_weights(workdir, tiny_bert_dir, tiny_prepared, monkeypatch):
    params = tiny_training_params(tiny_bert_dir, train={"epochs": 2, "steps_per_epoch": 6, "checkpoint_every": 2,
                                                        "schedule": "stlr"})
    uninterrupted = _paths(workdir / "a", tiny_prepared)
    train(params, uninterrupted)

    interrupted = _paths(workdir / "b", tiny_prepared)
    real_step, calls = loop.train_step, {"n": 0}

    def ctrl_c_after_seven_steps(*args, **kwargs):
        if calls["n"] == 7:  # Ctrl-C between steps 7 and 8: the last checkpoint is at step 6
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", ctrl_c_after_seven_steps)
    with pytest.raises(KeyboardInterrupt):
        train(params, interrupted)
    state = json.loads((interrupted.checkpoints / "latest" / "state.json").read_text())
    assert (state["step"], state["epoch"], state["position"]) == (6, 2, 0)

    monkeypatch.setattr(loop, "train_step", real_step)
    summary = train(params, interrupted)
    assert summary["steps"] == 12
    first, resumed = _final_weights(uninterrupted), _final_weights(interrupted)
    assert first.keys() == resumed.keys()
    for key in first:
        assert torch.equal(first[key], resumed[key]), key
    # one MLflow run for the whole (interrupted + resumed) training, its datasets logged once
    assert summary["mlflow_run_id"] == state["mlflow_run_id"]
    from mlflow import MlflowClient

    run = MlflowClient(f"sqlite:///{interrupted.project_root}/mlflow.db").get_run(summary["mlflow_run_id"])
    assert len(run.inputs.dataset_inputs) == len(_datasets(run)) == 6


@pytest.mark.parametrize("interrupt, status", [(RuntimeError("CUDA out of memory"), "FAILED"),
                                                (KeyboardInterrupt(), "KILLED")])
def test_an_interrupted_run_ends_its_mlflow_run(workdir, tiny_bert_dir, tiny_prepared, monkeypatch, interrupt, status):
    params = tiny_training_params(tiny_bert_dir, train={"epochs": 1, "checkpoint_every": 1})
    paths = _paths(workdir, tiny_prepared)
    real_step, calls = loop.train_step, {"n": 0}

    def interrupted_at_step_three(*args, **kwargs):
        if calls["n"] == 2:
            raise interrupt
        calls["n"] += 1
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", interrupted_at_step_three)
    with pytest.raises(type(interrupt)):
        train(params, paths)
    run_id = json.loads((paths.checkpoints / "latest" / "state.json").read_text())["mlflow_run_id"]
    from mlflow import MlflowClient

    run = MlflowClient(f"sqlite:///{workdir}/mlflow.db").get_run(run_id)
    assert run.info.status == status
    assert len(run.data.metrics) and run.info.end_time is not None


def test_other_settings_do_not_resume_a_foreign_checkpoint(workdir, tiny_bert_dir, tiny_prepared, caplog):
    params = tiny_training_params(tiny_bert_dir, train={"epochs": 1})
    paths = _paths(workdir, tiny_prepared)
    train(params, paths)
    changed = dataclasses.replace(params, train=dataclasses.replace(params.train, lr=5e-4))
    with caplog.at_level("INFO"):
        summary = train(changed, paths)
    assert summary["steps"] == 4
    assert "resuming" not in caplog.text


def test_extra_data_has_its_own_loss_curve(workdir, tiny_bert_dir, tiny_prepared):
    """CFIMDB and SNLI batches train the sst and para heads, but their losses are curves of their own: the task's
    curve is its main dataset's alone (a lower SST curve must not be the easier CFIMDB reviews)."""
    params = tiny_training_params(tiny_bert_dir, data={"extra": ["snli", "cfimdb"]}, tracking={"enabled": False},
                                  train={"epochs": 1, "steps_per_epoch": 10, "sampling": "round_robin"})
    paths = _paths(workdir, tiny_prepared)
    train(params, paths)
    steps = {name: [row.split(",")[0] for row in (paths.plots / f"loss_{name}.csv").read_text().splitlines()[1:]]
             for name in ("sst", "para", "sts", "snli", "cfimdb")}
    assert all(steps.values()), steps  # round robin: every dataset trained, each logged under its own name
    assert loop.bar_postfix({"cfimdb": [0.5], "sst": [1.0]}, 10.0) == {"loss_sst": "1", "loss_cfimdb": "0.5",
                                                                       "ex/s": "10"}
