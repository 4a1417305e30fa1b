"""The README's commands as a newcomer runs them after a real (tiny) run, with the real dvc, MLflow and a real
120-column terminal (tmux): the quick look in a temporary copy leaves the workspace as committed, the
`dvc exp show` recipe shows the four dev scores and the changed params on the screen, and a model pushed to a
DVC remote is pulled into a fresh clone."""

from __future__ import annotations

import csv
import filecmp
import io
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import HAVE_MIRROR, PROJECT, project_env
from palbert.metrics import DEV_METRICS
from test_dvc_experiments import dvc, git, tiny_project

TMUX = shutil.which("tmux")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not HAVE_MIRROR, reason="data mirror not present")]
README = (PROJECT / "README.md").read_text(encoding="utf-8")
QUICK_LOOK = "dvc exp run --temp -S data.subset=500 -S train.epochs=1 -S train.steps_per_epoch=100"


def readme_command(start: str) -> list[str]:
    """The README's command line that starts with ``start``, without its comment."""
    line = next(line for line in README.splitlines() if line.startswith(start))
    return shlex.split(line.split("   #")[0])


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


def _exp_row(project: Path, name: str) -> dict[str, str]:
    table = dvc(project, "exp", "show", "--csv")
    return next(row for row in csv.DictReader(io.StringIO(table)) if row["Experiment"] == name)


@pytest.mark.skipif(TMUX is None, reason="tmux not installed")
def test_the_readmes_exp_show_recipe_shows_the_scores_and_changed_params_in_a_120_column_terminal(project):
    recipe = readme_command("dvc exp show")
    values = _exp_row(project, "quick")
    socket = f"palbert-test-{uuid.uuid4().hex[:8]}"
    tmux = [TMUX, "-L", socket, "-f", "/dev/null"]
    env = project_env(project)
    env.pop("TMUX", None)
    try:
        subprocess.run([*tmux, "new-session", "-d", "-x", "120", "-y", "50", "-c", str(project),
                        "env", f"PATH={env['PATH']}", f"PYTHONPATH={project}", "DVC_NO_ANALYTICS=1",
                        "bash", "--norc", "--noprofile"], env=env, check=True, timeout=30)
        # the marker that says it ended is not in the typed line itself (RECIPE-$((1+1))-DONE prints RECIPE-2-DONE)
        subprocess.run([*tmux, "send-keys", shlex.join(recipe) + "; echo RECIPE-$((1+1))-DONE", "Enter"], env=env,
                       check=True, timeout=30)
        deadline, screen = time.monotonic() + 300, ""
        while time.monotonic() < deadline and "RECIPE-2-DONE" not in screen:
            time.sleep(1)
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-J"], env=env, capture_output=True, text=True,
                                    timeout=30).stdout
            if screen.rstrip().endswith(":"):  # the pager waits for a key: the table did not fit one screen
                subprocess.run([*tmux, "send-keys", "q"], env=env, check=True, timeout=30)
        screen = subprocess.run([*tmux, "capture-pane", "-p"], env=env, capture_output=True, text=True,
                                timeout=30).stdout
    finally:
        subprocess.run([*tmux, "kill-server"], env=env, capture_output=True, timeout=30)
    lines = screen.splitlines()
    assert all(len(line) <= 120 for line in lines), screen
    assert "…" not in screen, screen  # no column cut
    quick = next(line for line in lines if "[quick]" in line)
    for metric in DEV_METRICS:
        assert metric in screen, screen
        assert values[metric] and f"{float(values[metric]):.5g}"[:6] in quick, (metric, values[metric], screen)
    assert "train.seed" not in screen and "data.subset" not in screen  # unchanged params are left out...
    assert "train.steps_per_epoch" in screen and "tracking.enabled" in screen  # ...changed ones shown
    assert "palbert/" not in screen and ".py" not in screen  # no code dependency hashes


def test_a_model_pushed_to_a_dvc_remote_is_pulled_into_a_fresh_clone(project, tmp_path):
    remote = tmp_path / "palbert-models"
    add = readme_command("dvc remote add -d models")
    add[add.index("/path/to/palbert-models")] = str(remote)
    dvc(project, *add[1:])
    dvc(project, *readme_command("dvc push models/best")[1:])
    assert any(remote.rglob("*")), "nothing was pushed"
    git(project, "add", ".dvc/config")
    git(project, "commit", "-qm", "the models remote")

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    assert not (clone / "models/best").exists()
    dvc(clone, *readme_command("dvc pull models/best")[1:])
    compared = filecmp.dircmp(project / "models/best", clone / "models/best")
    assert compared.left_list and not (compared.diff_files or compared.left_only or compared.right_only), \
        compared.report()
