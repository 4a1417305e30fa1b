"""One Table 3 run's workspace and MLflow runs across attempts: a stopped training is resumed in its own workspace
and MLflow run; any other leftover is checked out afresh; earlier attempts' runs are ended as retried."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from palbert.table3.task import (TAG_RESUMED_AT, TAG_RETRIED, TAG_RUN_KEY, RunFailed, mark_earlier_attempts,
                                 open_workspace, retag_resumed_run)


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def commits(tmp_path: Path) -> tuple[bytes, str, str]:
    """A bundle of a repository with two commits, and the two commits."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    made = []
    for text in ("one", "two"):
        (repo / "file.txt").write_text(text)
        git(repo, "add", "file.txt")
        git(repo, "commit", "-qm", text)
        made.append(git(repo, "rev-parse", "HEAD"))
    git(repo, "bundle", "create", str(tmp_path / "repo.bundle"), "--all")
    return (tmp_path / "repo.bundle").read_bytes(), made[0], made[1]


def leave_checkpoint(workspace: Path, **state) -> None:
    (workspace / "checkpoints" / "latest").mkdir(parents=True, exist_ok=True)
    (workspace / "checkpoints" / "latest" / "state.json").write_text(json.dumps(state))
    (workspace / "scratch").write_text("left by the earlier attempt")


def test_a_workspace_is_kept_only_with_a_training_to_resume_at_the_same_commit(tmp_path: Path, commits):
    bundle, first, second = commits
    workspace = tmp_path / "work" / "t3-llrd-0.9-s1"  # a dot in the name: nothing beside it may clash
    workspace.parent.mkdir()
    assert open_workspace(workspace, bundle, second, "t3-llrd-0.9-s1") is None
    assert (workspace / "file.txt").read_text() == "two"
    assert sorted(p.name for p in workspace.parent.iterdir()) == ["t3-llrd-0.9-s1"]  # the bundle file is gone

    leave_checkpoint(workspace, step=40, complete=False, mlflow_run_id="abc")
    assert open_workspace(workspace, bundle, second, "t3-llrd-0.9-s1")["step"] == 40
    assert (workspace / "scratch").is_file()  # kept: the training resumes there

    leave_checkpoint(workspace, step=90, complete=True, outputs_written=False, mlflow_run_id="abc")
    assert open_workspace(workspace, bundle, second, "t3-llrd-0.9-s1")["step"] == 90  # its outputs still to write

    assert open_workspace(workspace, bundle, first, "t3-llrd-0.9-s1") is None  # another commit: afresh
    assert (workspace / "file.txt").read_text() == "one" and not (workspace / "scratch").exists()

    leave_checkpoint(workspace, step=90, complete=True, outputs_written=True, mlflow_run_id="abc")
    assert open_workspace(workspace, bundle, first, "t3-llrd-0.9-s1") is None  # a finished training: afresh
    assert not (workspace / "scratch").exists() and not (workspace / "checkpoints").exists()


def test_a_workspace_in_use_by_another_process_is_named(tmp_path: Path, commits, monkeypatch):
    import palbert.table3.task as task

    bundle, _, second = commits
    workspace = tmp_path / "t3-0-s1"
    open_workspace(workspace, bundle, second, "t3-0-s1")
    monkeypatch.setattr(task, "EARLIER_STAGES_WAIT_S", 2)
    sleeper = subprocess.Popen(["sleep", "30"], cwd=workspace)
    try:
        with pytest.raises(RunFailed, match=rf"t3-0-s1: processes \[{sleeper.pid}\] still run in {workspace}"):
            open_workspace(workspace, bundle, second, "t3-0-s1")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert (workspace / "file.txt").is_file()  # nothing removed under a process that works there


def test_the_resumed_run_finishes_and_only_the_other_attempts_are_ended_as_retried(tmp_path: Path):
    """On a real MLflow store: attempt 2 resumes attempt 1's training (same MLflow run), and a third run of the same
    key (an attempt that started afresh) is ended KILLED and tagged retried."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("palbert", artifact_location=str(tmp_path / "artifacts"))
    first = client.create_run(experiment, tags={TAG_RUN_KEY: "k1", "attempt": "1", TAG_RETRIED: "yes: old"})
    other = client.create_run(experiment, tags={TAG_RUN_KEY: "k1", "attempt": "1"})
    unrelated = client.create_run(experiment, tags={TAG_RUN_KEY: "k2", "attempt": "1"})
    resumed = first.info.run_id

    retag_resumed_run(uri, resumed, {TAG_RUN_KEY: "k1", "attempt": "2", "node": "host:1", TAG_RESUMED_AT: "40"})
    mark_earlier_attempts(uri, "k1", 2, keep=resumed)
    retag_resumed_run(uri, "0" * 32, {"attempt": "2"})  # a run this store does not have: nothing to do

    kept = client.get_run(resumed)
    assert kept.info.status == "RUNNING" and TAG_RETRIED not in kept.data.tags
    assert (kept.data.tags["attempt"], kept.data.tags["node"], kept.data.tags[TAG_RESUMED_AT]) == ("2", "host:1", "40")
    ended = client.get_run(other.info.run_id)
    assert ended.info.status == "KILLED" and ended.data.tags[TAG_RETRIED] == "yes: attempt 2 runs it again"
    assert client.get_run(unrelated.info.run_id).info.status == "RUNNING"
