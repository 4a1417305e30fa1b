"""The README's commands as a newcomer runs them after a real (tiny) run, with the real dvc and MLflow: the quick
look in a temporary copy leaves the workspace as committed and its run in the project's MLflow store."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import HAVE_MIRROR, PROJECT
from palbert.metrics import DEV_METRICS
from test_dvc_experiments import dvc, git, tiny_project

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not HAVE_MIRROR, reason="data mirror not present")]
README = (PROJECT / "README.md").read_text(encoding="utf-8")
QUICK_LOOK = "dvc exp run --temp -S data.subset=500 -S train.epochs=1 -S train.steps_per_epoch=100"


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir, shared_dvc_cache) -> Path:
    """A committed tiny run, then the README's quick look (scaled to the tiny data) with MLflow on, as a user
    runs it: `dvc exp run --temp`."""
    project = tiny_project(tmp_path_factory.mktemp("readme"), tiny_bert_dir, steps_per_epoch=2, cache=shared_dvc_cache)
    dvc(project, "repro")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "baseline")
    assert QUICK_LOOK in README
    quick = shlex.split(QUICK_LOOK)
    # the same flags with the tiny run's sizes (its data stages reused: subset 32, as committed), MLflow on, a name
    quick[quick.index("data.subset=500")] = "data.subset=32"
    quick[quick.index("train.steps_per_epoch=100")] = "train.steps_per_epoch=3"
    dvc(project, *quick[1:], "-S", "tracking.enabled=true", "--name", "quick")
    return project


def test_the_quick_look_leaves_the_workspace_as_committed_and_its_run_in_the_projects_mlflow_store(project):
    status = subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True,
                            check=True).stdout
    assert status == "", status
    assert "up to date" in dvc(project, "status")
    # the run is in <project>/mlflow.db, not in the temporary copy DVC deleted
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name == "palbert"]
    runs = client.search_runs([experiment.experiment_id], "tags.dvc_exp_name = 'quick'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", runs
    assert set(DEV_METRICS) <= {key.removeprefix("dev_") for key in runs[0].data.metrics}
