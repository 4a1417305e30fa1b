"""The trained model as an MLflow Model: logged to a real SQLite store, loaded by ``mlflow.pyfunc`` and
served by a real ``mlflow models serve`` on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import free_port, running_mlflow_server, stop_process_group, tiny_training_params, wait_until_up
from palbert.config import ModelParams, Params, TrackingParams
from palbert.mlflow_model import input_example, predict_table
from palbert.tasks import SST_CLASSES
from palbert.model import MultitaskBert, load_tokenizer, save_model
from palbert.predict import Predictor
from palbert.registry import CHAMPION, Registration
from palbert.evaluate_stage import log_trained_model
from palbert.tracking import open_run

SERVE_START_TIMEOUT_S = 180  # a cold start imports torch and loads the model, on a busy 2-core machine
REQUEST_TIMEOUT_S = 60
REQUESTS = [
    {"task": "sst", "sentence1": "A gorgeous, witty, seductive movie."},
    {"task": "para", "sentence1": "How do I learn Python?", "sentence2": "What is the best way to learn Python?"},
    {"task": "sts", "sentence1": "A cat sits on the mat.", "sentence2": "A cat is sitting on a mat."},
    {"task": "sst", "sentence1": "Dull.", "sentence2": None},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    model = MultitaskBert.from_pretrained(ModelParams(pretrained=str(tiny_bert_dir), pal_size=8, pal_heads=2))
    return save_model(model, load_tokenizer(str(tiny_bert_dir)), tmp_path_factory.mktemp("model") / "best")


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> tuple[str, str]:
    """(tracking URI, run id) of a finished run whose model was logged the way the evaluate stage does."""
    root = tmp_path_factory.mktemp("store")
    params = Params()
    params.tracking = TrackingParams(experiment="palbert-model-test", uri=f"sqlite:///{root / 'mlflow.db'}")
    with open_run(params, root, system_metrics=False) as tracker:
        tracker.log_metrics({"overall": 0.4, "sst_acc": 0.3}, step=1)  # an epoch's scores
        tracker.log_metrics({"lr": 1e-5}, step=6)  # a training metric of the same step: not the model's
        log_trained_model(tracker, model_dir, Registration(params.tracking.experiment, dev={"overall": 0.5}),
                          scores={"overall": 0.5, "sst_acc": 0.35}, step=6)
    assert tracker.lost is None
    return tracker.tracking_uri, tracker.run_id


def test_the_logged_models_page_shows_the_dev_scores_it_was_logged_with(logged):
    """MLflow's logged-model page lists the model's own metrics: the dev scores of the step it was logged at."""
    uri, run_id = logged
    client = mlflow.MlflowClient(uri)
    (output,) = client.get_run(run_id).outputs.model_outputs
    metrics = {(m.key, m.step): m.value for m in client.get_logged_model(output.model_id).metrics}
    assert metrics == {("overall", 6): 0.5, ("sst_acc", 6): 0.35}


def _expected(model_dir: Path) -> list[float]:
    """What the CLI's predictor says for ``REQUESTS``, task by task."""
    return predict_table(Predictor.load(model_dir), pd.DataFrame(REQUESTS))["prediction"].tolist()


def test_the_logged_model_loads_with_pyfunc_and_predicts_all_three_tasks(logged, model_dir, monkeypatch):
    uri, run_id = logged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert model.metadata.signature.inputs.input_names() == ["task", "sentence1", "sentence2"]
    assert model.metadata.signature.outputs.input_names() == ["prediction", "meaning"]
    assert model.metadata.metadata["task_values"] == ["sst", "para", "sts"]  # what `task` may be, and what comes out
    assert "0 negative" in model.metadata.metadata["prediction"]["sst"]
    assert model.metadata.saved_input_example_info["type"] == "dataframe"
    assert model.predict(input_example()).equals(predict_table(Predictor.load(model_dir), input_example()))
    got = model.predict(pd.DataFrame(REQUESTS))["prediction"].tolist()
    assert got == _expected(model_dir)
    assert got[0] in range(5) and got[1] in (0, 1) and 0.0 <= got[2] <= 5.0
    # no pickle in the logged model: MLflow rebuilds the pyfunc from code, the weights are safetensors
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model"))
    assert not [p.name for p in local.rglob("*") if p.suffix in (".pkl", ".pickle", ".bin", ".pt")]
    # registered: the store (SQLite) has a model registry
    versions = MlflowClient(uri).search_model_versions("name='palbert-model-test'")
    assert [(int(v.version), v.run_id) for v in versions] == [(1, run_id)]


def test_model_config_precision_int8_scores_with_quantized_linear_layers(logged, model_dir, monkeypatch):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    uri, run_id = logged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    default = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert default.model_config == {"precision": "auto", "max_rows": 1000}  # the switches are visible in the MLmodel
    int8 = mlflow.pyfunc.load_model(f"runs:/{run_id}/model", model_config={"precision": "int8"})
    assert any(isinstance(m, DynamicQuantizedLinear) for m in int8.unwrap_python_model().predictor.model.modules())
    got = int8.predict(pd.DataFrame(REQUESTS))["prediction"].tolist()
    assert got == pytest.approx(predict_table(Predictor.load(model_dir, precision="int8"),
                                              pd.DataFrame(REQUESTS))["prediction"].tolist())
    with pytest.raises(ValueError, match="precision='int4'; expected one of auto, bf16, fp32, int8"):
        mlflow.pyfunc.load_model(f"runs:/{run_id}/model", model_config={"precision": "int4"})


def test_a_model_logged_through_a_tracking_server_loads_from_the_registry(model_dir, tmp_path, monkeypatch):
    with running_mlflow_server(tmp_path) as url:
        params = Params()
        params.tracking = TrackingParams(experiment="palbert-served", uri=url)
        with open_run(params, tmp_path, system_metrics=False) as tracker:
            log_trained_model(tracker, model_dir, Registration(params.tracking.experiment, dev={"overall": 0.5}))
        assert tracker.lost is None
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        model = mlflow.pyfunc.load_model("models:/palbert-served/1")
        assert model.predict(pd.DataFrame(REQUESTS))["prediction"].tolist() == _expected(model_dir)


def test_the_evaluate_stage_registers_full_dev_runs_only_with_card_and_tags_and_a_short_one_never_champion(
        tmp_path, monkeypatch, model_dir, tiny_bert_dir, tiny_prepared):
    from palbert.evaluate_stage import EvaluationPaths, evaluate_trained_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # the stage logs ./params.yaml
    Path("params.yaml").write_text("train: {}\n")
    paths = EvaluationPaths(project_root=tmp_path, model=model_dir, prepared=tiny_prepared,
                            train_summary=tmp_path / "metrics" / "train.json",
                            dev_metrics=tmp_path / "metrics" / "dev.json", predictions=tmp_path / "predictions")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    sample = tiny_training_params(tiny_bert_dir)  # data.subset=64: a quick look, scored on a dev sample
    evaluate_trained_model(sample, paths)
    name = sample.tracking.experiment
    assert client.search_model_versions(f"name='{name}'") == []  # logged as the run's model, not registered

    full = tiny_training_params(tiny_bert_dir, data={"subset": 0})  # scored on the full dev splits
    Path("metrics/train.json").write_text('{"steps": 8}')  # far below the default budget
    metrics = evaluate_trained_model(full, paths)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], order_by=["start_time DESC"])
    [version] = client.search_model_versions(f"name='{name}'")
    assert version.run_id == runs[0].info.run_id and runs[0].info.status == "FINISHED"
    assert not client.get_registered_model(name).aliases  # registered, never @champion
    assert version.tags["not_champion"] == "8 training steps (2 epochs), below the default budget of 5400 (3 x 1800)"
    assert float(version.tags["overall"]) == pytest.approx(metrics["overall"], abs=1e-6)
    assert version.tags["run_name"] == runs[0].info.run_name
    assert set(version.tags) <= {*metrics, "run_name", "git_commit", "not_champion"}  # a few tags, not the recipe
    assert "## Dev scores" in version.description and f"{metrics['overall']:.4f}" in version.description
    assert "English only" in version.description and "A quick look" in version.description
    assert "@champion" in client.get_registered_model(name).description
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
    assert model.predict(pd.DataFrame(REQUESTS))["prediction"].tolist() == _expected(model_dir)


def test_champion_moves_only_when_a_new_version_beats_it(model_dir, tmp_path):
    """Three runs with dev overall 0.70, 0.60 (a worse, later run), 0.75: @champion is 1, 1, 3."""
    params = Params()
    params.tracking = TrackingParams(experiment="palbert-champion", uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(params.tracking.uri)
    champions = []
    for overall in (0.70, 0.60, 0.75):
        with open_run(params, tmp_path, system_metrics=False) as tracker:
            log_trained_model(tracker, model_dir, Registration("palbert-champion", dev={"overall": overall}))
        champions.append(client.get_model_version_by_alias("palbert-champion", CHAMPION).version)
    assert [int(v) for v in champions] == [1, 1, 3]
    latest = client.get_latest_versions("palbert-champion")[0]
    assert int(latest.version) == 3 and latest.tags["overall"] == "0.750000"


def test_bad_requests_are_refused_clearly(model_dir):
    predictor = Predictor.load(model_dir)
    with pytest.raises(ValueError, match=r"task para needs sentence2; row\(s\) \[1\]"):
        predict_table(predictor, pd.DataFrame([REQUESTS[0], {"task": "para", "sentence1": "a"}]))
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['sentiment'\]"):
        predict_table(predictor, pd.DataFrame([{"task": "sentiment", "sentence1": "a"}]))
    with pytest.raises(ValueError, match=r"task sst needs sentence1; row\(s\) \[1\]"):
        predict_table(predictor, pd.DataFrame([REQUESTS[0], {"task": "sst", "sentence1": None}]))
    with pytest.raises(ValueError, match="input needs the columns task, sentence1"):
        predict_table(predictor, pd.DataFrame([{"text": "a"}]))
    # a value that is not text is named as what it is, not called missing
    with pytest.raises(ValueError, match=r"^sentence1 must be text; row\(s\) \[0\] hold a number$"):
        predict_table(predictor, pd.DataFrame([{"task": "sst", "sentence1": 5}]))
    with pytest.raises(ValueError, match=r"^sentence2 must be text; row\(s\) \[1\] hold true/false$"):
        predict_table(predictor, pd.DataFrame([REQUESTS[1], {"task": "para", "sentence1": "a", "sentence2": True}]))
    with pytest.raises(ValueError, match=r"^3 rows in one request; at most 2 \(model_config max_rows\)"):
        predict_table(predictor, pd.DataFrame(REQUESTS[:3]), max_rows=2)
    with pytest.raises(TimeoutError, match="scored 0 of 2 sst rows"):
        predict_table(predictor, pd.DataFrame(REQUESTS), deadline=time.monotonic() - 1)


def test_max_rows_bounds_a_request_and_is_set_by_model_config(logged, monkeypatch):
    from mlflow.exceptions import MlflowException

    uri, run_id = logged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    default = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    with pytest.raises(MlflowException, match=r"1001 rows in one request; at most 1000 \(model_config max_rows\)"):
        default.predict(pd.DataFrame([REQUESTS[0]] * 1001))
    small = mlflow.pyfunc.load_model(f"runs:/{run_id}/model", model_config={"max_rows": 3})
    assert len(small.predict(pd.DataFrame(REQUESTS[:3]))) == 3
    with pytest.raises(MlflowException, match="4 rows in one request; at most 3"):
        small.predict(pd.DataFrame(REQUESTS))
    with pytest.raises(ValueError, match="max_rows='many'; expected a whole number of rows, at least 1"):
        mlflow.pyfunc.load_model(f"runs:/{run_id}/model", model_config={"max_rows": "many"})


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_mlflow_models_serve_answers_a_real_request(logged, model_dir, tmp_path, monkeypatch):
    uri, run_id = logged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # for the server, and for runs:/ URIs here (see below)
    monkeypatch.setenv("SERVING_MODEL_CONFIG", json.dumps({"max_rows": 6}))  # how `mlflow models serve` sets it
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{run_id}/model", "--env-manager",
             "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            # the server execs `uvicorn` by name: this venv's bin first, activated or not
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
            cwd=tmp_path, stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/ping", server, log_path, SERVE_START_TIMEOUT_S)

        status, answer = _post(f"{base}/invocations", {"dataframe_records": REQUESTS})
        assert status == 200, answer
        values = [row["prediction"] if isinstance(row, dict) else row for row in answer["predictions"]]
        assert values == pytest.approx(_expected(model_dir), abs=1e-6)

        # the model's own serving example (written by MLflow at logging time) is a valid request too
        # (MLflow 3.17 resolves a logged model's runs:/ URI through the global URI, not a tracking_uri= argument)
        local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "m")))
        example = json.loads((local / "serving_input_example.json").read_text())
        status, answer = _post(f"{base}/invocations", example)
        assert status == 200 and len(answer["predictions"]) == 3, answer

        status, answer = _post(f"{base}/invocations", {"dataframe_records": [{"task": "para", "sentence1": "a"}]})
        assert status >= 400 and "needs sentence2" in json.dumps(answer), (status, answer)
        status, answer = _post(f"{base}/invocations", {"dataframe_records": [{"task": "sst", "sentence1": 5}]})
        assert status == 400 and "sentence1 must be text; row(s) [0] hold a number" in answer["message"], answer
        status, answer = _post(f"{base}/invocations", {"dataframe_records": [REQUESTS[0]] * 7})
        assert status == 400 and "7 rows in one request; at most 6 (model_config max_rows)" in answer["message"]
    finally:
        stop_process_group(server)


def _bare_python(folder: Path) -> Path:
    """A venv with this project's dependencies but not palbert itself (the other machine's environment):
    the site-packages folder is on its path, but its .pth files (palbert's editable install) are not run."""
    import sysconfig
    import venv

    venv.EnvBuilder(with_pip=False).create(folder)
    [site] = list((folder / "lib").glob("python*/site-packages"))
    (site / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = folder / "bin" / "python"
    # `mlflow models serve` execs `uvicorn` by name: this environment's, not the project venv's
    (folder / "bin" / "uvicorn").write_text(f"#!{python}\nfrom uvicorn.main import main\nmain()\n")
    (folder / "bin" / "uvicorn").chmod(0o755)
    return python


def test_the_logged_model_serves_from_its_artifacts_alone_in_another_folder(logged, model_dir, tmp_path,
                                                                           monkeypatch):
    uri, run_id = logged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "elsewhere")))
    mlmodel = (local / "MLmodel").read_text()
    assert "    code: code\n" in mlmodel and (local / "code" / "palbert" / "mlflow_model.py").is_file()
    requirements = (local / "requirements.txt").read_text().split()
    assert not [pin for pin in requirements if "+" in pin]  # versions the package index has (no +cpu)
    assert {"torch", "transformers", "scipy", "scikit-learn", "pyyaml"} <= {pin.split("==")[0] for pin in requirements}
    example = json.loads((local / "serving_input_example.json").read_text())  # strict JSON: no NaN

    python = _bare_python(tmp_path / "bare")
    probe = subprocess.run([str(python), "-c", "import palbert"], capture_output=True, text=True, cwd=tmp_path)
    assert probe.returncode != 0 and "No module named 'palbert'" in probe.stderr
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    with log_path.open("w") as log_file:
        server = subprocess.Popen(
            [str(python), "-m", "mlflow", "models", "serve", "-m", str(local), "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env, cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/ping", server, log_path, SERVE_START_TIMEOUT_S)
        status, answer = _post(f"{base}/invocations", {"dataframe_records": REQUESTS})
        assert status == 200, answer
        assert [row["prediction"] for row in answer["predictions"]] == pytest.approx(_expected(model_dir), abs=1e-6)
        assert answer["predictions"][0]["meaning"] in SST_CLASSES
        assert answer["predictions"][1]["meaning"] in ("paraphrase", "not a paraphrase")
        status, answer = _post(f"{base}/invocations", example)
        assert status == 200 and len(answer["predictions"]) == 3, answer
        # a bad request: 400, and the message (not only the stack trace) says what is wrong
        status, answer = _post(f"{base}/invocations", {"dataframe_records": [{"task": "para", "sentence1": "a"}]})
        assert status == 400 and "task para needs sentence2" in answer["message"], answer
        status, answer = _post(f"{base}/invocations", {"dataframe_records": [{"task": "nli", "sentence1": "a"}]})
        assert status == 400 and "unknown task(s) ['nli']; expected sst, para, sts" in answer["message"], answer
    finally:
        stop_process_group(server)


def _post_raw(url: str, body: dict, timeout_s: float) -> tuple[int, str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.e2e
def test_a_served_request_past_the_server_timeout_stops_scoring(tmp_path, monkeypatch):
    """Real MiniLM weights: 1000 rows of 126-token sentences take far longer than the server's 2 s timeout. The
    server answers 504 at 2 s; the pyfunc stops at the next batch instead of scoring on for nobody."""
    model = MultitaskBert.from_pretrained(ModelParams())
    folder = save_model(model, load_tokenizer("embedded"), tmp_path / "best")
    params = Params()
    params.tracking = TrackingParams(experiment="palbert-timeout", uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with open_run(params, tmp_path, system_metrics=False) as tracker:
        log_trained_model(tracker, folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.tracking_uri)
    monkeypatch.setenv("SERVING_MODEL_CONFIG", json.dumps({"precision": "fp32"}))
    port, log_path = free_port(), tmp_path / "serve.log"
    with log_path.open("w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{tracker.run_id}/model", "--env-manager",
             "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--timeout", "2"],
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
            cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/ping", server, log_path, SERVE_START_TIMEOUT_S)
        long_sentence = " ".join(["a gorgeous witty seductive movie about nothing much"] * 20)  # over 126 tokens
        status, answer = _post_raw(f"{base}/invocations",
                                   {"dataframe_records": [{"task": "sst", "sentence1": long_sentence}] * 1000},
                                   REQUEST_TIMEOUT_S)
        assert status == 504, (status, answer[:300])
        deadline = time.monotonic() + 120  # the batch running at the timeout finishes first
        while "stopped a request" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        log = log_path.read_text()
        stopped = next((line for line in log.splitlines() if "stopped a request" in line), None)
        assert stopped is not None, log[-3000:]
        assert "stopped a request of 1000 rows after" in stopped and "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT=2" in stopped
        scored = int(stopped.split("scored ")[1].split(" of ")[0])
        assert scored < 1000 and stopped.endswith(f"scored {scored} of 1000 sst rows"), stopped
        status, answer = _post_raw(f"{base}/invocations", {"dataframe_records": REQUESTS[:1]}, REQUEST_TIMEOUT_S)
        assert status == 200, answer  # the server goes on answering
    finally:
        stop_process_group(server)
