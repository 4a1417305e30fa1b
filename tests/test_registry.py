"""What may become @champion, what `palbert serve` answers when nothing may be served, and the model card: a real
MLflow store (SQLite), the real `palbert` command, real huggingface_hub and transformers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard
from mlflow import MlflowClient

from conftest import tiny_training_params
from palbert.config import ModelParams, Params, TrackingParams
from palbert.evaluate_stage import log_trained_model
from palbert.metrics import DEV_METRICS
from palbert.model import MultitaskBert, load_tokenizer, save_model
from palbert.model_card import write_model_card
from palbert.registry import CHAMPION, NOT_CHAMPION_TAG, Registration, champion_bar, majority_baseline
from palbert.tracking import open_run

DEV = {"sst_acc": 0.4512, "para_acc": 0.8034, "sts_pearson": 0.7021, "overall": 0.7366}
#: SST 2 of 4 rows are class 1, Quora 3 of 4 are duplicates, a constant similarity has r 0.
LABELS = {"sst": np.array([0, 1, 1, 2]), "para": np.array([1, 1, 1, 0]), "sts": np.array([0.5, 4.0, 2.5, 3.0])}


def test_the_majority_baseline_scores_the_most_frequent_label_through_the_overall_formula():
    baseline = majority_baseline(LABELS)
    assert baseline == pytest.approx({"sst_acc": 0.5, "para_acc": 0.75, "sts_pearson": 0.0,
                                      "overall": (0.5 + 0.75 + 0.5) / 3})


def test_only_a_full_run_of_the_default_budget_above_the_majority_baseline_may_become_champion(tiny_bert_dir):
    quick = tiny_training_params(tiny_bert_dir, data={"subset": 200}, train={"epochs": 1, "steps_per_epoch": 20})
    assert "sample (data.subset=200" in champion_bar(quick, 20, DEV, LABELS)
    full = tiny_training_params(tiny_bert_dir, data={"subset": 0}, train={"epochs": 1, "steps_per_epoch": 20})
    assert champion_bar(full, 20, DEV, LABELS) == ("20 training steps (1 epoch), below the default budget of 5400 "
                                                  "(3 x 1800)")
    weak = {**DEV, "overall": 0.58}
    assert champion_bar(full, 5400, weak, LABELS) == "dev overall 0.5800 is not above the majority baseline's 0.5833"
    assert champion_bar(full, 5400, DEV, LABELS) is None
    assert champion_bar(full, 6000, DEV, {}) is None  # no labels: the budget and the data decide


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    model = MultitaskBert.from_pretrained(ModelParams(pretrained=str(tiny_bert_dir), pal_size=8, pal_heads=2))
    return save_model(model, load_tokenizer(str(tiny_bert_dir)), tmp_path_factory.mktemp("model") / "best")


def _serve_check(project: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PALBERT_PROJECT_ROOT": str(project)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "palbert.cli", "serve", "--check"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)


def test_palbert_serve_says_in_one_line_why_there_is_no_champion_until_one_passes_the_bar(tmp_path, model_dir):
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text("tracking: {experiment: palbert-serve}\n", encoding="utf-8")
    nothing = _serve_check(project)  # a fresh clone: no store at all
    assert nothing.returncode == 1 and nothing.stdout == ""
    assert nothing.stderr.count("\n") == 1 and "Traceback" not in nothing.stderr
    assert f"no MLflow store at {project / 'mlflow.db'}: nothing was trained here yet" in nothing.stderr

    params = Params()
    params.tracking = TrackingParams(experiment="palbert-serve", uri=f"sqlite:///{project / 'mlflow.db'}")
    client = MlflowClient(params.tracking.uri)
    with open_run(params, project) as tracker:  # a 20-step run on the full data: registered, never champion
        log_trained_model(tracker, model_dir, Registration("palbert-serve", dev=DEV, not_champion="20 training "
                                                           "steps (1 epoch), below the default budget of 5400 (3 x 1800)"))
    [version] = client.search_model_versions("name='palbert-serve'")
    assert set(version.tags) == {*DEV_METRICS, "run_name", NOT_CHAMPION_TAG} | ({"git_commit"} & set(version.tags))
    assert version.tags["overall"] == "0.736600"
    refused = _serve_check(project)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert ("none of the 1 version(s) of model 'palbert-serve' in sqlite:///" in refused.stderr
            and "(version 1: 20 training steps (1 epoch), below the default budget of 5400 (3 x 1800))"
            in refused.stderr and "palbert serve --model runs:/<run id>/model" in refused.stderr)

    with open_run(params, project) as tracker:  # one that passes the bar takes the alias
        log_trained_model(tracker, model_dir, Registration("palbert-serve", dev=DEV))
    assert int(client.get_model_version_by_alias("palbert-serve", CHAMPION).version) == 2
    served = _serve_check(project)
    assert served.returncode == 0 and served.stdout == f"models:/palbert-serve@{CHAMPION}\n", served.stderr


def _card(folder: Path, params, summary) -> ModelCard:
    return ModelCard.load(write_model_card(folder, params, summary))


def test_the_model_card_is_a_hugging_face_card_with_license_datasets_scores_and_no_pipeline_tag(tmp_path):
    params = Params()  # the default recipe on the embedded all-MiniLM-L6-v2
    summary = {"steps": 5400, "best_epoch": 3, "best_dev": DEV, "mlflow_run_id": "f" * 32}
    card = _card(tmp_path, params, summary)
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"  # the embedded encoder's own card says so
    assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and data["language"] == "en"
    assert data["datasets"] == ["SetFit/sst5", "nyu-mll/glue"]
    assert "pipeline_tag" not in data
    scores = {(r.dataset_type, r.dataset_config, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert scores == {("SetFit/sst5", None, "sst_acc"): 0.4512, ("nyu-mll/glue", "qqp", "para_acc"): 0.8034,
                      ("nyu-mll/glue", "stsb", "sts_pearson"): 0.7021, ("cs224n-multitask", None, "overall"): 0.7366}
    assert {r.dataset_split for r in card.data.eval_results} == {"validation"}
    text = card.text
    assert "3 epochs" in text and f"models:/palbert@{CHAMPION}" in text and "quick look" not in text
    assert "## Limitations" in text and "Sullivan, Colin Michael and Kumar, Abhishek" in text
    assert f"palbert serve --model runs:/{'f' * 32}/model" in text

    with_extra = Params()
    with_extra.data.extra = ["snli", "cfimdb"]
    assert _card(tmp_path / "extra", with_extra, summary).data.datasets == ["SetFit/sst5", "nyu-mll/glue",
                                                                            "stanfordnlp/snli"]


def test_a_quick_look_card_says_so_says_1_epoch_and_never_points_at_champion(tmp_path, tiny_bert_dir):
    params = tiny_training_params(tiny_bert_dir, data={"subset": 200}, train={"epochs": 1, "steps_per_epoch": 20})
    card = _card(tmp_path, params, {"steps": 20, "best_epoch": 1, "best_dev": DEV, "mlflow_run_id": "e" * 32})
    assert "1 epoch " in card.text and "1 epochs" not in card.text
    assert "A quick look, not a trained model to use" in card.text
    assert "champion" not in card.text.lower()
    assert card.data.license is None  # a local random BERT has no card, so no license to inherit
    assert {r.dataset_name for r in card.data.eval_results} >= {"sst (CS224N dev split; sampled: 200 rows of every "
                                                               "split)"}


def test_no_transformers_pipeline_is_pointed_at_the_folder_by_its_card(tmp_path, model_dir):
    import shutil

    import transformers

    folder = tmp_path / "best"
    shutil.copytree(model_dir, folder)
    write_model_card(folder, Params(), {"steps": 5400, "best_epoch": 3, "best_dev": DEV})
    assert ModelCard.load(folder / "README.md").data.pipeline_tag is None
    # without a task, transformers finds none to infer for a local folder: it refuses rather than guess one
    with pytest.raises(RuntimeError, match="task"):
        transformers.pipeline(model=str(folder))
