"""An MLflow store that fails mid-stage: a server that hangs once training has started (a TCP proxy on 127.0.0.1
that stops forwarding to a real ``mlflow server``) holds no call for more than seconds and never delays a stop
signal; an artifact disk that fills while the evaluate stage logs the model fails that stage, in one line."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from conftest import PROJECT, default_stop_signals, project_env, running_mlflow_server, tiny_training_params


class HangingProxy:
    """A TCP proxy on 127.0.0.1 in front of a real server. From the first ``log-batch`` request after the run's
    datasets are logged (``log-inputs``: training has started) it forwards nothing more, either way, and answers
    nothing: a server that hangs mid-run."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.hung = threading.Event()
        self._training = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            threading.Thread(target=self._pump, args=(client,), daemon=True).start()

    def _pump(self, client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", self.target_port)) as upstream:
            while not self._closed.is_set():
                if self.hung.is_set():
                    time.sleep(0.2)  # hold the connection open, forward nothing
                    continue
                readable, _, _ = select.select([client, upstream], [], [], 0.2)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is client:
                        if b"/runs/log-inputs" in data:
                            self._training = True
                        elif self._training and b"/runs/log-batch" in data:
                            self.hung.set()
                            break
                    (upstream if source is client else client).sendall(data)

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    with running_mlflow_server(tmp_path_factory.mktemp("server")) as url:
        yield url


@pytest.fixture()
def hanging_proxy(mlflow_server) -> Iterator[HangingProxy]:
    proxy = HangingProxy(int(mlflow_server.rsplit(":", 1)[1]))
    yield proxy
    proxy.close()


def _stage_project(root: Path, tiny_bert_dir: Path, tiny_prepared: Path, **train) -> Path:
    from palbert.config import params_to_dict

    params = tiny_training_params(tiny_bert_dir, train=train)
    (root / "params.yaml").write_text(yaml.safe_dump(params_to_dict(params, include_table3=False)))
    (root / "data").mkdir()
    (root / "data/prepared").symlink_to(tiny_prepared)
    return root


def _start_train_stage(project: Path, log: Path, tracking_uri: str) -> subprocess.Popen:
    env = project_env(project, PYTHONPATH=str(PROJECT), MLFLOW_TRACKING_URI=tracking_uri)
    for key in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        env.pop(key, None)  # the stage's own bounds, not a user's
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=project, stdout=out,
                                stderr=subprocess.STDOUT, env=env, preexec_fn=default_stop_signals)


def _wait_until_hung(proxy: HangingProxy, proc: subprocess.Popen, log: Path) -> float:
    deadline = time.monotonic() + 300
    while not proxy.hung.wait(0.2):
        assert proc.poll() is None, f"the stage ended before the server hung: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "training did not start"
    return time.monotonic()


def test_a_server_that_hangs_mid_run_holds_training_seconds_not_minutes(tmp_path, tiny_bert_dir, tiny_prepared,
                                                                        hanging_proxy):
    project = _stage_project(tmp_path, tiny_bert_dir, tiny_prepared)
    log = tmp_path / "stage.log"
    proc = _start_train_stage(project, log, hanging_proxy.url)
    try:
        hung_at = _wait_until_hung(hanging_proxy, proc, log)
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
        took = time.monotonic() - hung_at
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert took < 60, f"the stage took {took:.0f} s after the server hung"
    assert re.search(rf"MLflow store {re.escape(hanging_proxy.url)} stopped answering \(log_batch: .*timed out.*\)\. "
                     r"The stage goes on", text), text[-3000:]
    assert "Traceback" not in text
    summary = json.loads((project / "metrics/train.json").read_text())
    assert summary["steps"] == 8 and "timed out" in summary["tracking_lost"]


def test_sigterm_while_a_call_to_a_hung_server_waits_stops_the_stage_at_once(tmp_path, tiny_bert_dir, tiny_prepared,
                                                                             hanging_proxy):
    project = _stage_project(tmp_path, tiny_bert_dir, tiny_prepared, steps_per_epoch=100000, checkpoint_every=100000)
    log = tmp_path / "stage.log"
    proc = _start_train_stage(project, log, hanging_proxy.url)
    try:
        _wait_until_hung(hanging_proxy, proc, log)
        time.sleep(1.0)  # the training loop now waits in its call to the hung server
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        while "ERROR palbert: stopped by SIGTERM" not in log.read_text() and time.monotonic() < signalled + 60:
            time.sleep(0.2)
        took = time.monotonic() - signalled  # then the interpreter exits (seconds more on a busy machine)
        assert proc.wait(timeout=90) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert took < 20, f"the stage took {took:.0f} s to stop after SIGTERM"
    assert re.search(r"stopped by SIGTERM at step \d+; no checkpoint of this run was written: the next run starts "
                     r"over", text), text[-3000:]
    assert "ERROR palbert: stopped by SIGTERM" in text and "Traceback" not in text
    assert not (project / "checkpoints/latest").exists()


def test_bounded_http_settings_are_set_unless_the_user_set_them(mlflow_server, monkeypatch, tmp_path):
    from palbert.config import params_from_dict
    from palbert.tracking import open_run
    from palbert.tracking.store import BOUNDED_HTTP

    for key in BOUNDED_HTTP:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    params = params_from_dict({"tracking": {"uri": mlflow_server}})
    with open_run(params, tmp_path, system_metrics=False):
        pass
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == BOUNDED_HTTP["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"


# ------------------------------------------------------------------ the evaluate stage and its store


def _train_paths(root: Path, prepared: Path):
    from palbert.train.loop import TrainPaths

    return TrainPaths(project_root=root, prepared=prepared, checkpoints=root / "checkpoints",
                      best_model=root / "models/best", summary=root / "metrics/train.json",
                      plots=root / "metrics/plots/train")


def _evaluation_paths(root: Path, prepared: Path):
    from palbert.evaluate_stage import EvaluationPaths

    return EvaluationPaths(project_root=root, model=root / "models/best", prepared=prepared,
                           train_summary=root / "metrics/train.json", dev_metrics=root / "metrics/dev.json",
                           predictions=root / "predictions")


@pytest.fixture()
def small_artifact_disk(tmp_path, monkeypatch) -> Iterator[Path]:
    """An 8 MiB tmpfs as the local store's artifact root (``mlruns/`` beside ``mlflow.db``); root only."""
    monkeypatch.setenv("PALBERT_PROJECT_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mount = tmp_path / "mlruns"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_artifact_disk_fails_the_evaluate_stage_in_one_line(small_artifact_disk, tiny_bert_dir,
                                                                   tiny_prepared):
    from mlflow import MlflowClient

    from palbert.config import TrackingParams
    from palbert.errors import TrackingUnavailable
    from palbert.evaluate_stage import evaluate_trained_model
    from palbert.tracking.store import resolve_tracking_uri
    from palbert.train.loop import train

    root = small_artifact_disk.parent
    params = tiny_training_params(tiny_bert_dir)
    summary = train(params, _train_paths(root, tiny_prepared))
    # the disk fills: room for the small artifacts (metrics, predictions), not for the model (~4 MB)
    free = os.statvfs(small_artifact_disk)
    (small_artifact_disk / "filler").write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 1_000_000))
    paths = _evaluation_paths(root, tiny_prepared)
    with pytest.raises(TrackingUnavailable) as error:
        evaluate_trained_model(params, paths)
    message = str(error.value)
    # metrics/train.json names the project's store relative to the project; the stage opens it at its root
    uri = resolve_tracking_uri(TrackingParams(uri=summary["tracking_uri"]), root)
    assert message.startswith(f"MLflow store {uri} failed (log_model: ") and "\n" not in message
    assert os.strerror(28) in message  # ENOSPC
    assert f"the model is not (wholly) logged to MLflow run {summary['mlflow_run_id']}" in message
    assert "run `dvc repro` again (only evaluate runs again)" in message
    assert json.loads(paths.dev_metrics.read_text())["overall"] > 0  # the stage's own outputs are whole
    run = MlflowClient(uri).get_run(summary["mlflow_run_id"])
    assert run.info.status == "FAILED"
    # with room again, the same stage logs the model
    (small_artifact_disk / "filler").unlink()
    evaluate_trained_model(params, paths)
    client = MlflowClient(uri)
    assert client.get_run(summary["mlflow_run_id"]).info.status == "FINISHED"
    assert client.search_logged_models([client.get_run(summary["mlflow_run_id"]).info.experiment_id])


def test_the_evaluate_stage_checks_its_store_before_scoring(tmp_path, tiny_bert_dir, tiny_prepared, monkeypatch):
    from conftest import free_port
    from palbert.errors import TrackingUnavailable
    from palbert.evaluate_stage import evaluate_trained_model

    monkeypatch.setenv("PALBERT_PROJECT_ROOT", str(tmp_path))
    dead = f"http://127.0.0.1:{free_port()}"
    paths = _evaluation_paths(tmp_path, tiny_prepared)
    paths.train_summary.parent.mkdir(parents=True)
    paths.train_summary.write_text(json.dumps({"mlflow_run_id": "0" * 32, "tracking_uri": dead}))
    with pytest.raises(TrackingUnavailable) as error:
        evaluate_trained_model(tiny_training_params(tiny_bert_dir), paths)  # models/best does not even exist
    assert str(error.value).startswith(f"MLflow tracking server {dead} is not reachable (")
    assert not paths.predictions.exists() and not paths.dev_metrics.exists()
