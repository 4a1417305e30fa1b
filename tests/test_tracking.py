"""MLflow tracking against a real ``mlflow server`` and a real local store (no mocks)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
from mlflow import MlflowClient

from conftest import HANDLED_STOP_SIGNALS, free_port, running_mlflow_server
from palbert.config import Params, TrackingParams
from palbert.errors import TrackingUnavailable
from palbert.paths import find_project_root
from palbert.tracking import (
    CONTEXT_TRAINING,
    CONTEXT_VALIDATION,
    TAG_FALLBACK_FROM,
    TAG_SEED,
    TAG_TABLE3_ROW,
    NullTracker,
    Tracker,
    open_run,
    parameter_counts,
    resolve_tracking_uri,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not see the developer's store, a DVC stage's root or a torchrun rank."""
    for name in ("MLFLOW_TRACKING_URI", "PALBERT_PROJECT_ROOT", "DVC_ROOT", "DVC_EXP_NAME",
                 "DVC_EXP_BASELINE_REV", "RANK"):
        monkeypatch.delenv(name, raising=False)
    # Sample system metrics fast so the background thread gets a sample in during the test.
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as url:
        yield url


def _params(uri: str, on_unreachable: str = "stop") -> Params:
    params = Params()
    params.tracking = TrackingParams(experiment="palbert-test", uri=uri, on_unreachable=on_unreachable,
                                     table3_id="t1", table3_row="BP1")
    params.data.extra = ["snli", "cfimdb"]
    params.train.seed = 7
    return params


def test_run_against_real_server(mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "bp1-seed7")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    params = _params(mlflow_server)
    artifact = tmp_path / "dev.json"
    artifact.write_text('{"overall": 0.77}\n')
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "loss.csv").write_text("step,loss\n0,1.0\n")

    with open_run(params, tmp_path) as tracker:
        assert tracker.tracking_uri == mlflow_server
        for step in range(5):
            tracker.log_metrics({"train/loss": 1.0 / (step + 1), "lr": 2e-5}, step=step * 10)
        tracker.log_artifact(artifact)
        tracker.log_artifacts(tmp_path / "plots", "plots")
        tracker.set_tags({"note": "first"})
        tracker.log_params(parameter_counts({"total": 1200, "pal_per_task": {"sst": 40}, "pal_overhead_pct": 3.14159}))
        tracker.log_datasets(tmp_path / "prepared", {CONTEXT_TRAINING: [_saved_split(tmp_path / "prepared", "train", 3)],
                                                     CONTEXT_VALIDATION: [_saved_split(tmp_path / "prepared", "dev", 2)]})
        run_id = tracker.run_id
        time.sleep(1.5)  # a system-metrics sample, were they on

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "bp1-seed7"
    assert run.data.params["model.pals"] == "True"
    assert run.data.params["train.lr"] == "2e-05"
    assert run.data.params["data.extra"] == '["snli", "cfimdb"]'
    assert run.data.params["tracking.table3_row"] == "BP1"
    assert run.data.params["parameters.total"] == "1200" and run.data.params["parameters.pal_per_task.sst"] == "40"
    assert run.data.params["parameters.pal_overhead_pct"] == "3.14"
    assert len(run.data.params) == len(params.flat()) + 3
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["sst-dev", "sst-train"]
    train = inputs["sst-train"]
    assert [(t.key, t.value) for t in train.tags] == [("mlflow.data.context", "training")]
    assert train.dataset.profile == '{"num_rows": 3}' and len(train.dataset.digest) == 32
    assert json.loads(train.dataset.source)["uri"] == str(tmp_path / "prepared" / "sst" / "train.npz")
    tags = run.data.tags
    assert tags[TAG_SEED] == "7" and tags[TAG_TABLE3_ROW] == "BP1" and tags["table3_id"] == "t1"
    assert tags["dvc_exp_name"] == "bp1-seed7" and tags["dvc_exp_baseline_rev"] == "abc123"
    assert tags["note"] == "first"
    assert TAG_FALLBACK_FROM not in tags
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, round(m.value, 6)) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 1.0), (10, 0.5), (20, round(1 / 3, 6)), (30, 0.25), (40, 0.2)]
    assert not [key for key in run.data.metrics if key.startswith("system/")]  # opt-in only
    # the experiment opens on its runs ("Machine learning"), and the run says what it is
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"].startswith("**Table 3 row BP1 (t1)**: PALs 204 wide, annealed sampling, SimCSE")
    downloaded = client.download_artifacts(run_id, "dev.json", str(tmp_path / "down"))
    assert Path(downloaded).read_text() == artifact.read_text()
    assert [f.path for f in client.list_artifacts(run_id, "plots")] == ["plots/loss.csv"]

    # The evaluate stage reopens the same run and adds to it.
    with open_run(params, tmp_path, run_id=run_id, system_metrics=False) as again:
        again.log_metrics({"dev/overall": 0.77}, step=0)
    run = client.get_run(run_id)
    assert run.data.metrics["dev/overall"] == pytest.approx(0.77)
    assert run.info.status == "FINISHED"


def _saved_split(root: Path, split: str, rows: int) -> Path:
    """A small prepared SST split written where the prepare stage puts it; returns the loaded split."""
    import numpy as np

    from palbert.data.prepared import PreparedSplit, TokenizedTexts, load_split, save_split, split_path

    path = split_path(root, "sst", split)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_split(PreparedSplit("sst", split, np.asarray([str(i) for i in range(rows)]),
                             TokenizedTexts.from_lists([[7, 8]] * rows), None, np.zeros(rows, dtype=np.int64)), path)
    return load_split(path)


def test_a_run_outside_a_dvc_experiment_is_named_after_the_workspace(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
                   cwd=repo, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                            text=True).stdout.strip()
    monkeypatch.chdir(repo)
    with open_run(_params(""), repo, system_metrics=False) as tracker:
        run_id = tracker.run_id
    assert MlflowClient(tracking_uri=tracker.tracking_uri).get_run(run_id).info.run_name == f"workspace@{commit[:7]}"


def test_failure_marks_run_failed(mlflow_server: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        with open_run(_params(mlflow_server), tmp_path, run_name="boom", system_metrics=False) as tracker:
            run_id = tracker.run_id
            raise ValueError("training blew up")
    assert MlflowClient(tracking_uri=mlflow_server).get_run(run_id).info.status == "FAILED"


@pytest.mark.parametrize("interrupt, status", [(KeyboardInterrupt, "KILLED"), (OSError, "FAILED"), (None, "FINISHED")])
def test_leaving_the_with_block_ends_the_run(tmp_path: Path, interrupt: type[BaseException] | None,
                                            status: str) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with contextlib.suppress(BaseException):
        with open_run(_params(uri), tmp_path, system_metrics=False) as tracker:
            if interrupt is not None:
                raise interrupt
    assert isinstance(tracker, Tracker) and tracker.lost is None
    assert MlflowClient(tracking_uri=uri).get_run(tracker.run_id).info.status == status


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_stop_signal_during_a_local_store_write_waits_for_it(tmp_path: Path, signame: str,
                                                                restore_stop_signals: None) -> None:
    """A signal raised inside SQLAlchemy's commit left mlflow.db locked, so the run could not be marked KILLED
    (seen in CI): the write in progress finishes, then the stop is raised, and the run ends KILLED."""
    import os
    import signal

    from palbert.errors import Terminated
    from palbert.stop_signals import stop_on_signals

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    signum = signal.Signals[signame]
    for s in HANDLED_STOP_SIGNALS:
        signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
    stop_on_signals()
    with pytest.raises(KeyboardInterrupt) as stopped:
        with open_run(_params(uri), tmp_path, system_metrics=False) as tracker:
            def write_while_signalled() -> None:
                os.kill(os.getpid(), signum)  # delivered here, in the middle of the store call
                tracker.client.log_param(tracker.run_id, "written_after_the_signal", "yes")

            tracker._send("log_param", write_while_signalled)
            raise AssertionError("the signal was not raised after the store call")
    assert isinstance(stopped.value, Terminated) == (signame != "SIGINT")
    run = MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    assert run.data.params["written_after_the_signal"] == "yes" and tracker.lost is None
    assert run.info.status == "KILLED"


def test_a_server_that_dies_mid_run_does_not_end_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries would take minutes
    (tmp_path / "server").mkdir()
    with running_mlflow_server(tmp_path / "server") as url:
        tracker = open_run(_params(url), tmp_path, run_name="orphan", system_metrics=False)
        tracker.log_metrics({"loss": 1.0}, step=1)
    # the server is gone now: logging goes on without raising, says so once, and remembers why
    with caplog.at_level("ERROR", logger="palbert.tracking"):
        tracker.log_metrics({"loss": 0.5}, step=2)
        tracker.log_metrics({"loss": 0.25}, step=3)
        tracker.log_artifact(Path(__file__), "code")
        tracker.end("FINISHED")
    assert tracker.lost is not None and "log_batch" in tracker.lost
    assert "Connection refused" in tracker.lost, tracker.lost
    assert sum("stopped answering" in r.getMessage() for r in caplog.records if r.name == "palbert.tracking") == 1
    # what was sent before the server died is in its store
    with running_mlflow_server(tmp_path / "server") as url:
        history = MlflowClient(tracking_uri=url).get_metric_history(tracker.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0)]


def test_other_ranks_get_a_null_tracker(tmp_path: Path) -> None:
    tracker = open_run(_params("http://127.0.0.1:9"), tmp_path, rank=1)
    assert isinstance(tracker, NullTracker) and tracker.run_id is None and tracker.lost is None
    with tracker:
        tracker.log_metrics({"loss": 1.0}, step=0)
        tracker.log_artifact(tmp_path / "missing")
    assert not (tmp_path / "mlflow.db").exists()


def test_disabled_tracking_records_nothing_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    params = _params("")
    params.tracking.enabled = False
    with caplog.at_level("WARNING"):
        tracker = open_run(params, tmp_path)
    assert isinstance(tracker, NullTracker)
    assert "NOT recorded in MLflow" in caplog.text
    assert not (tmp_path / "mlflow.db").exists()


def test_unreachable_server_stops_quickly(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=uri.replace(".", r"\.")) as info:
        open_run(_params(uri), tmp_path)
    assert time.monotonic() - started < 20
    assert "on_unreachable=local" in str(info.value)
    assert not (tmp_path / "mlflow.db").exists()


def test_silent_server_times_out_quickly(tmp_path: Path) -> None:
    """A port that accepts connections but never answers (a hung proxy): MLflow's retries must not hang us."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(TrackingUnavailable, match="timed out"):
            open_run(_params(uri), tmp_path)
        assert time.monotonic() - started < 20


def test_unreachable_server_falls_back_to_local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # like a DVC temp workspace: nothing may land in the cwd
    project = tmp_path / "project"
    project.mkdir()
    artifact = tmp_path / "note.txt"
    artifact.write_text("kept\n")

    with open_run(_params(uri, on_unreachable="local"), project, system_metrics=False) as tracker:
        tracker.log_metrics({"loss": 0.5}, step=1)
        tracker.log_artifact(artifact)
        run_id = tracker.run_id
        local_uri = tracker.tracking_uri

    assert local_uri == f"sqlite:///{project.resolve() / 'mlflow.db'}"
    run = MlflowClient(tracking_uri=local_uri).get_run(run_id)
    assert run.data.tags[TAG_FALLBACK_FROM] == uri
    assert run.data.metrics["loss"] == 0.5
    assert (project / "mlruns" / "palbert-test").is_dir()
    assert list(elsewhere.iterdir()) == []
    assert list(project.rglob("note.txt"))


def test_default_uri_is_absolute_in_project_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    (repo / "stages" / "deep").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    monkeypatch.chdir(repo / "stages" / "deep")

    root = find_project_root()
    assert root == repo.resolve()
    uri = resolve_tracking_uri(TrackingParams(), root)
    assert uri == f"sqlite:///{repo.resolve()}/mlflow.db"
    assert uri.startswith("sqlite:////")

    # A relative sqlite path means relative to the project root, not to the cwd.
    assert resolve_tracking_uri(TrackingParams(uri="sqlite:///runs.db"), root) == f"sqlite:///{root}/runs.db"
    # Precedence: tracking.uri, then $MLFLOW_TRACKING_URI.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(TrackingParams(), root) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri(TrackingParams(uri="http://h:1"), root) == "http://h:1"


@pytest.mark.parametrize(("uri", "committed"), [
    ("sqlite:///{root}/mlflow.db", "sqlite:///mlflow.db"),
    ("sqlite:///{root}/stores/runs.db?timeout=30", "sqlite:///stores/runs.db?timeout=30"),
    ("file://{root}/mlruns", "mlruns"),
    ("{root}/mlruns", "mlruns"),
    ("sqlite:////elsewhere/mlflow.db", "sqlite:////elsewhere/mlflow.db"),  # outside the project: as configured
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("", ""),
])
def test_a_store_in_the_project_is_written_relative_to_it_and_read_back(tmp_path: Path, uri: str,
                                                                        committed: str) -> None:
    from palbert.tracking import project_relative_uri

    root = tmp_path.resolve()
    uri = uri.format(root=root)
    assert project_relative_uri(uri, root) == committed
    if committed:  # read back: the same store, wherever the clone is
        back = resolve_tracking_uri(TrackingParams(uri=committed), root)
        assert back == (str(root / "mlruns") if uri.startswith("file:") else uri)


def test_project_root_inside_dvc_temp_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    workspace = repo / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    workspace.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)  # DVC's temp workspace is its own git repo
    monkeypatch.chdir(workspace)
    assert find_project_root() == repo.resolve()

    # What DVC sets for queued and temp experiments wins, and the explicit override beats it.
    monkeypatch.setenv("DVC_ROOT", str(repo))
    assert find_project_root() == repo.resolve()
    monkeypatch.setenv("PALBERT_PROJECT_ROOT", str(tmp_path))
    assert find_project_root() == tmp_path.resolve()


def test_table3_creates_a_new_local_store_before_its_runs_open_it_together(tmp_path: Path) -> None:
    """Eight runs opening a new SQLite store at once each ran MLflow's migrations and all but one failed (alembic:
    "expected to match one row"): ``create_local_store`` migrates it first, so the runs find it at the head."""
    import sqlite3

    from palbert.tracking.store import create_local_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    create_local_store(uri)
    with contextlib.closing(sqlite3.connect(tmp_path / "mlflow.db")) as db:
        (version,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert version and {"experiments", "runs", "metrics", "params"} <= tables
    create_local_store(uri)  # an existing store: nothing to do, no error
    create_local_store("http://127.0.0.1:9")  # a server's store is the server's: not contacted


def test_system_metrics_are_logged_when_asked_with_mlflows_own_switch(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with open_run(_params(uri), tmp_path) as tracker:
        time.sleep(2.0)  # a few samples
    metrics = MlflowClient(uri).get_run(tracker.run_id).data.metrics
    assert any(key.startswith("system/") for key in metrics), metrics.keys()
