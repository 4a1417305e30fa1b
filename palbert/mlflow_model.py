"""A trained palbert model as an MLflow Model: a pyfunc over ``palbert.predict.Predictor``.

MLflow's own tools then read it: ``mlflow.pyfunc.load_model("runs:/<id>/model")``, ``mlflow models serve``,
the UI's Models page and the model registry. One request may mix the three tasks: a table with the
columns ``task`` (sst | para | sts), ``sentence1`` and, for the pair tasks, ``sentence2``; the answer
has one ``prediction`` per row (sst: class 0..4, para: 0/1, sts: similarity 0..5), computed by the same
``Predictor`` as ``palbert predict`` and the ``evaluate`` stage.

It is logged as a "model from code" (MLflow runs ``palbert/pyfunc_script.py`` to build it), not as a
pickled Python object: like ``models/best`` itself, loading it runs no pickle. The palbert package travels
inside the model (``code/palbert``, MLflow's ``code_paths``) and ``requirements.txt`` pins what it imports
(versions from the package index), so the model serves from its artifacts alone, in another folder or on
another machine (``--env-manager virtualenv`` builds that environment from the index).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import mlflow.pyfunc
import numpy as np
import pandas as pd

from palbert.config import SCORING_PRECISIONS
from palbert.tasks import PAIR_TASKS, TASK_SPECS, TASKS

if TYPE_CHECKING:
    from mlflow.models import ModelSignature
    from mlflow.models.model import ModelInfo

    from palbert.predict import Predictor
    from palbert.registry import Registration

log = logging.getLogger(__name__)

#: Where the model goes in the run's artifacts: ``runs:/<id>/model``.
ARTIFACT_PATH = "model"
#: The pyfunc's artifact key for the ``models/best`` folder it wraps.
MODEL_DIR_ARTIFACT = "palbert_model"
TASK, FIRST, SECOND, PREDICTION = "task", "sentence1", "sentence2", "prediction"
#: The file MLflow runs to build the pyfunc (``mlflow.models.set_model``).
CODE_FILE = Path(__file__).with_name("pyfunc_script.py")
#: What the pyfunc and the bundled palbert import at prediction time, pinned to the versions it was logged with.
REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "scipy",
                "scikit-learn", "pyyaml", "tqdm")
MEANING = "meaning"
#: ``model_config`` the model is logged with; ``mlflow.pyfunc.load_model(uri, model_config={"precision": "int8"})``
#: scores in int8 on the CPU (``palbert.quantize``), "fp32"/"bf16" force a dtype. ``max_rows``: the most rows one
#: request may hold (more are refused, HTTP 400 when served), so that one client cannot keep the CPUs busy for
#: minutes; ``mlflow models serve`` takes another value as ``SERVING_MODEL_CONFIG='{"max_rows": 5000}'``.
DEFAULT_MODEL_CONFIG: dict[str, Any] = {"precision": "auto", "max_rows": 1000}
#: Set by ``mlflow models serve`` (``--timeout``, default 60 s): after this long the server has answered 504 and
#: drops the answer, so the pyfunc stops scoring between batches instead of working on for nobody.
REQUEST_TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"


def input_example() -> pd.DataFrame:
    """One row per task, as a request to ``mlflow models serve`` would send them."""
    return pd.DataFrame({
        TASK: list(TASKS),
        FIRST: [TASK_SPECS[task].example[0] for task in TASKS],
        SECOND: [TASK_SPECS[task].example[1] for task in TASKS],  # "" for a single-sentence task: not read
    })


def signature() -> "ModelSignature":
    """``task`` and ``sentence1`` always, ``sentence2`` for the pair tasks only; per row a number and what it
    means in words (the task values and their outputs are spelled out in the MLmodel's ``metadata``)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("string", TASK), ColSpec("string", FIRST), ColSpec("string", SECOND, required=False)])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("double", PREDICTION), ColSpec("string", MEANING)]))


def metadata() -> dict[str, Any]:
    """The MLmodel's ``metadata``: the values of ``task`` and what ``prediction`` means for each."""
    return {"task_values": list(TASKS), "prediction": {task: TASK_SPECS[task].output_meaning for task in TASKS},
            "pair_tasks_need_sentence2": list(PAIR_TASKS)}


def meaning(task: str, value: float) -> str:
    return TASK_SPECS[task].meaning(value)


def _kind(value: Any) -> str | None:
    """What a cell that is not text holds, in words; None for a missing value (null, NaN)."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):  # None, NaN, pd.NA, NaT
        return None
    if isinstance(value, (bool, np.bool_)):
        return "true/false"
    if isinstance(value, (int, float, np.number)):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    return "a list" if isinstance(value, (list, tuple, np.ndarray)) else f"a {type(value).__name__}"


def _texts(table: pd.DataFrame, column: str, rows: np.ndarray, task: str) -> list[str]:
    """The column's strings at ``rows``; a missing column, a null cell or a value that is not text is refused,
    never read as "None" or "5"."""
    values = table[column].iloc[rows].tolist() if column in table.columns else [None] * len(rows)
    wrong = {int(rows[i]): _kind(value) for i, value in enumerate(values) if not isinstance(value, str)}
    absent = [row for row, kind in wrong.items() if kind is None]
    if absent:
        raise ValueError(f"task {task} needs {column}; row(s) {absent[:5]} have none")
    if wrong:
        kind = next(iter(wrong.values()))
        same = [row for row, other in wrong.items() if other == kind]
        raise ValueError(f"{column} must be text; row(s) {same[:5]} hold {kind}")
    return values


def predict_table(predictor: "Predictor", table: pd.DataFrame, *, max_rows: int | None = None,
                  deadline: float | None = None) -> pd.DataFrame:
    """Predictions in the rows' order; each task's rows go through one ``Predictor.predict`` call (batched).

    More than ``max_rows`` rows are refused; past ``deadline`` (``time.monotonic()``) scoring stops between
    batches with a ``TimeoutError``.
    """
    if max_rows is not None and len(table) > max_rows:
        raise ValueError(f"{len(table)} rows in one request; at most {max_rows} (model_config max_rows): send "
                         "the rest in further requests")
    if TASK not in table.columns:
        raise ValueError(f"input needs the columns {TASK}, {FIRST} (and {SECOND} for pairs); got {list(table.columns)}")
    tasks = table[TASK].astype(str).to_numpy()
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; expected {', '.join(TASKS)}")
    out = np.zeros(len(table), dtype=np.float64)
    for task in TASKS:
        rows = np.flatnonzero(tasks == task)
        if len(rows) > 0:
            second = _texts(table, SECOND, rows, task) if task in PAIR_TASKS else None
            out[rows] = predictor.predict(task, _texts(table, FIRST, rows, task), second, deadline=deadline)
    return pd.DataFrame({PREDICTION: out, MEANING: [meaning(task, value) for task, value in zip(tasks, out)]})


class PalbertPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc MLflow builds from ``CODE_FILE``: loads ``models/best`` from the model's artifacts."""

    predictor: "Predictor"
    max_rows: int
    #: Seconds a request may take, when served (``REQUEST_TIMEOUT_ENV``); None elsewhere.
    request_timeout_s: float | None

    def load_context(self, context: Any) -> None:
        from palbert.predict import Predictor

        config = {**DEFAULT_MODEL_CONFIG, **(context.model_config or {})}
        precision, max_rows = config["precision"], config["max_rows"]
        if precision not in SCORING_PRECISIONS:
            raise ValueError(f"model_config precision={precision!r}; expected one of {', '.join(SCORING_PRECISIONS)}")
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"model_config max_rows={max_rows!r}; expected a whole number of rows, at least 1")
        timeout = os.environ.get(REQUEST_TIMEOUT_ENV, "").strip()
        try:
            self.request_timeout_s = float(timeout) if timeout else None
        except ValueError:
            raise ValueError(f"{REQUEST_TIMEOUT_ENV}={timeout!r}; expected seconds") from None
        self.max_rows = max_rows
        self.predictor = Predictor.load(context.artifacts[MODEL_DIR_ARTIFACT], precision=precision)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        started = time.monotonic()
        deadline = None if self.request_timeout_s is None else started + self.request_timeout_s
        try:
            return predict_table(self.predictor, model_input, max_rows=self.max_rows, deadline=deadline)
        except ValueError as exc:  # a bad request: MLflow's server answers 400 with this message (not a generic one)
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        except TimeoutError as exc:  # the server has answered 504 already: this only ends the work
            log.warning("stopped a request of %d rows after %.1f s (%s=%s): %s", len(model_input),
                        time.monotonic() - started, REQUEST_TIMEOUT_ENV, os.environ.get(REQUEST_TIMEOUT_ENV), exc)
            raise MlflowException(f"stopped after {self.request_timeout_s:g} s: {exc}") from None


def _requirements() -> list[str]:
    """``name==version`` without a local label (``torch==2.13.0``, not ``2.13.0+cpu``: that build is not on the
    package index)."""
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


@contextlib.contextmanager
def _package_copy() -> Iterator[Path]:
    """This palbert package, without bytecode, for the model's ``code/`` folder."""
    with tempfile.TemporaryDirectory(prefix="palbert-code.") as folder:
        target = Path(folder) / "palbert"
        shutil.copytree(Path(__file__).parent, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        yield target


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's model logging reads the global tracking URI; set it for the call only (palbert logs through
    a client bound to its own URI, and a caller's global setting must survive)."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved)  # None unsets it again


def log_model(run_id: str, tracking_uri: str, model_dir: str | Path,
              registration: "Registration | None" = None, scores: Mapping[str, float] | None = None,
              step: int = 0) -> "ModelInfo":
    """Log ``model_dir`` (a ``save_model`` folder) as the run's MLflow Model ``model``, and register it
    (``palbert.registry.register``: card, tags, ``@champion``) when asked and the store has a model registry.
    ``scores`` (the dev scores) are logged to the run at ``step`` as the logged model's metrics, the first thing its
    page lists."""
    from mlflow.entities import Metric
    from mlflow.models import Model
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

    from palbert.registry import register, run_tags_for_version

    with _tracking_uri(tracking_uri):
        # Created here, in the run's experiment: left to Model.log, it would go to the active (default) one.
        client = mlflow.MlflowClient(tracking_uri)
        run = client.get_run(run_id)
        logged = client.create_logged_model(run.info.experiment_id, name=ARTIFACT_PATH, source_run_id=run_id,
                                            params=run.data.params)
        if scores:
            # a metric logged with the model's id is the model's (MLflow's own ``step=`` link would also take every
            # training metric logged at that step); before the upload, so that a failed upload keeps the run's scores
            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(key, float(value), now, int(step), model_id=logged.model_id)
                                              for key, value in scores.items()])
        with _package_copy() as package:
            info = Model.log(
                artifact_path=None, name=ARTIFACT_PATH, flavor=mlflow.pyfunc, run_id=run_id, model_id=logged.model_id,
                python_model=str(CODE_FILE), artifacts={MODEL_DIR_ARTIFACT: str(model_dir)}, code_paths=[str(package)],
                signature=signature(), input_example=input_example(), pip_requirements=_requirements(),
                metadata=metadata(), model_config=DEFAULT_MODEL_CONFIG,
            )
        log.info("logged MLflow Model %s (%s)", info.model_uri, info.model_id)
        if registration is not None:
            registration = dataclasses.replace(
                registration, tags={**run_tags_for_version(run.data.tags), **registration.tags})
            try:
                register(client, info.model_uri, registration)
            except UnsupportedModelRegistryStoreURIException as exc:  # any other failure fails the stage
                log.warning("model not registered in %s: %s", tracking_uri, exc.message)
    return info
