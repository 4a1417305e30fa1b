"""`dvc exp apply` of finished queued experiments leaves a workspace that `dvc status` calls up to date (the
train stage's checkpoints/ is no out, so there is nothing to restore), with the real dvc on a copy of the project, the tiny BERT and a few steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import HAVE_MIRROR, copy_project, default_stop_signals, project_env, tiny_training_params, use_dvc_cache
from palbert.config import params_to_dict

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not HAVE_MIRROR, reason="data mirror not present")]


def dvc(project: Path, *args: str) -> str:
    result = subprocess.run(["dvc", *args], cwd=project, env=project_env(project), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"dvc {' '.join(args)}\n" + result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=project, check=True,
                   capture_output=True)


def tiny_project(tmp_path: Path, tiny_bert_dir: Path, steps_per_epoch: int, cache: Path | None = None) -> Path:
    """A copy of the project whose params.yaml trains the tiny BERT for one short epoch, without MLflow; with
    ``cache``, its data stages come from that DVC run-cache once another copy has run them (conftest.use_dvc_cache)."""
    project = copy_project(tmp_path / "project")
    if cache is not None:
        use_dvc_cache(project, cache)
    params = params_to_dict(tiny_training_params(tiny_bert_dir, data={"subset": 32},
                                                 train={"epochs": 1, "steps_per_epoch": steps_per_epoch}),
                            include_table3=False)
    params["tracking"].update(enabled=False)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def test_applying_a_finished_queued_experiment_leaves_the_workspace_up_to_date(tmp_path, tiny_bert_dir,
                                                                              shared_dvc_cache):
    project = tiny_project(tmp_path, tiny_bert_dir, steps_per_epoch=2, cache=shared_dvc_cache)
    dvc(project, "repro")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "baseline")
    assert (project / "checkpoints/latest/state.json").is_file()  # the workspace run's checkpoint

    for seed in (1, 2):
        dvc(project, "exp", "run", "--queue", "-S", f"train.seed={seed}", "--name", f"seed{seed}")
    dvc(project, "exp", "run", "--run-all", "--jobs", "1")
    for name in ("seed1", "seed2"):
        dvc(project, "exp", "apply", name)
        status = dvc(project, "status")
        assert "up to date" in status, f"after `dvc exp apply {name}`:\n{status}"
        assert f"seed: {name[-1]}" in (project / "params.yaml").read_text()


def test_an_interrupted_dvc_repro_resumes_from_its_checkpoint(tmp_path, tiny_bert_dir, shared_dvc_cache):
    """checkpoints/ is no DVC out, so `dvc repro` leaves it in place: Ctrl-C, then `dvc repro` goes on from it.
    The data stages are those of the test above (same data params): they come from the shared run-cache."""
    project = tiny_project(tmp_path, tiny_bert_dir, steps_per_epoch=400, cache=shared_dvc_cache)
    state = project / "checkpoints/latest/state.json"
    job = subprocess.Popen(["dvc", "repro"], cwd=project, env=project_env(project), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=default_stop_signals)
    try:
        deadline = time.monotonic() + 600
        while not state.is_file() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert state.is_file(), "no checkpoint before `dvc repro` ended"
        os.killpg(job.pid, signal.SIGINT)  # Ctrl-C
        job.wait(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    step = json.loads(state.read_text())["step"]
    assert not json.loads(state.read_text())["complete"] and 0 < step < 400

    resumed = subprocess.run(["dvc", "repro"], cwd=project, env=project_env(project), capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming at step" in resumed.stdout + resumed.stderr, (resumed.stdout + resumed.stderr)[-3000:]
    assert "up to date" in dvc(project, "status")
