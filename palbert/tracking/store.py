"""Where a run's MLflow store is, and whether it answers: checked before any training.

Where runs go (``resolve_tracking_uri``): ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else a
SQLite store at an absolute path in the project root. MLflow's own default (``sqlite:///mlflow.db``
and artifacts in ``./mlruns``) is relative to the current folder, and DVC runs queued and temporary
experiments in ``.dvc/tmp/exps/<tmp>/``, which it deletes afterwards: relative paths would lose runs.

The project root is ``palbert.paths.find_project_root``. A ``project_root`` passed in (stages pass their working
folder) that lies inside ``<repo>/.dvc/tmp/exps/`` is mapped to ``<repo>`` the same way.

Local stores also get an absolute artifact location (beside the SQLite file, ``mlruns/<experiment>``)
when ``experiment_id`` creates the experiment, for the same reason. An unreachable server stops the run or falls
back to the local store (``tracking.on_unreachable``), before anything is logged (``choose_store``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator

from palbert.config import TrackingParams
from palbert.errors import TrackingUnavailable
from palbert.paths import find_project_root, outside_dvc_temp
from palbert.stop_signals import signals_held
from palbert.tracking.tags import TAG_FALLBACK_FROM

log = logging.getLogger("palbert.tracking")

#: How long the start-up check waits for a tracking server.
CHECK_TIMEOUT_S = 5
#: MLflow's HTTP settings for every later call of this process, unless the user set them: a hung server then holds
#: a call (and the training loop) for at most 2 x 5 s (MLflow's own defaults: 120 s and 7 retries, ~20 minutes).
#: The first retry comes at once; later ones would back off 1, 2, 4 s.
BOUNDED_HTTP = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def store_root(project_root: Path | None) -> Path:
    """The given root, or ``find_project_root()``; never a DVC temp workspace.

    Stages pass their working folder (``Path(".")``), which for queued and ``--temp`` experiments is
    ``<repo>/.dvc/tmp/exps/<tmp>/``: DVC deletes it afterwards, so the store must not live there.
    """
    if project_root is None:
        return find_project_root()
    return outside_dvc_temp(Path(project_root).resolve())


def default_store_uri(project_root: Path) -> str:
    return f"sqlite:///{Path(project_root).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(params: TrackingParams, project_root: Path | None = None) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else the project's SQLite store.

    A relative SQLite or file path is taken relative to the project root, not the current folder.
    """
    root = store_root(project_root)
    uri = params.uri.strip() or os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        return default_store_uri(root)
    return _anchor_local_uri(uri, root.resolve())


def _anchor_local_uri(uri: str, root: Path) -> str:
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:" and not path.startswith("/"):
            return f"sqlite:///{root / path}"
        return uri
    if uri.startswith("file:"):
        return uri
    if "://" not in uri and not uri.startswith("databricks"):
        # MLflow reads a bare path as a file store.
        return str(Path(uri) if Path(uri).is_absolute() else root / uri)
    return uri


def project_relative_uri(uri: str, project_root: Path | None = None) -> str:
    """``uri`` as a committed file names it: a local store inside the project relative to its root
    (``sqlite:///mlflow.db``, which ``resolve_tracking_uri`` anchors there again), anything else as it is. An
    absolute path would name a folder of the machine that ran it, and move with no clone."""
    root = store_root(project_root).resolve()
    scheme, path = ("sqlite:///", uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else ("", uri)
    if scheme:
        path, query = (path.split("?", 1) + [""])[:2]
        suffix = f"?{query}" if query else ""
    elif uri.startswith("file://"):
        path, suffix = uri[len("file://"):], ""  # read back as a bare path: MLflow's file store, as before
    elif "://" in uri or uri.startswith("databricks"):
        return uri
    else:
        suffix = ""
    if not path.startswith("/"):
        return uri
    try:
        relative = Path(path).resolve().relative_to(root)
    except ValueError:
        return uri
    return f"{scheme}{relative.as_posix()}{suffix}"


def store_call(uri: str) -> contextlib.AbstractContextManager[None]:
    """Around each call to a store: a local one (SQLite, files) is not interrupted by a stop signal mid-write,
    which left ``mlflow.db`` locked; a call to a server is, so a lost server cannot delay a stop by its retries."""
    return contextlib.nullcontext() if is_remote(uri) else signals_held()


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def bound_http_calls() -> None:
    """Set ``BOUNDED_HTTP`` in this process where the user has not set a value.

    Environment variables, not a bounded wait on another thread: MLflow reads them on every request, so they bound
    every call of the process (the system-metrics thread's and the model upload's too) and leave no call hanging.
    """
    for key, value in BOUNDED_HTTP.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def quick_http() -> Iterator[None]:
    """No retries and a short timeout for MLflow's HTTP client, for one call that must not wait (the start-up
    check, the last call after a stop signal)."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(CHECK_TIMEOUT_S)}
    saved = {key: os.environ.get(key) for key in quick}
    os.environ.update(quick)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_reachable(uri: str) -> str | None:
    """``None`` when the store answers, else the reason. Local stores always answer."""
    if not is_remote(uri):
        return None
    from mlflow import MlflowClient

    try:
        with quick_http():
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # connection refused, timeout, auth, proxy page: all mean "no store here"
        return short_reason(exc)
    return None


def create_local_store(uri: str) -> None:
    """Create a local store's tables now, in one process: runs that start together on a new SQLite store each run
    MLflow's schema migrations at once, and all but one fail (alembic: "expected to match one row when updating";
    seen with ``palbert table3 --jobs 8`` on a fresh clone). A remote store is the server's business."""
    if is_remote(uri):
        return
    from mlflow import MlflowClient

    with store_call(uri):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def short_reason(exc: Exception) -> str:
    """The root cause out of MLflow's nested requests/urllib3 message, e.g. ``[Errno 111] Connection refused``."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\][^\"')]*", text) or re.search(r"(Read|Connect)?\s*timed out", text)
    if found:
        return found.group(0).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first[:300]}"


def local_store_problem(uri: str) -> str | None:
    """Why a local SQLite store cannot be used (not an SQLite file, or read-only: the file, or its folder for
    SQLite's journal), else None.

    Checked up front: otherwise MLflow fails on its first write with a page of SQLAlchemy traceback.
    """
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):].split("?", 1)[0])
    if db.is_file() and db.stat().st_size:
        with db.open("rb") as handle:
            if handle.read(16) != b"SQLite format 3\x00":
                return (f"MLflow store {db} is not an SQLite database: move it away (a new store is made in its "
                        "place), or point tracking.uri / MLFLOW_TRACKING_URI at the right one")
    folder = db.parent if str(db.parent) else Path(".")
    for target, what in ((db, "file"), (folder, "folder"), (folder / "mlruns", "artifact folder")):
        if target.exists() and not os.access(target, os.W_OK):
            return (f"MLflow store {db} is read-only (its {what} {target} is not writable): make it writable "
                    f"(`chmod u+w {target}`, or `chattr -i` where it is immutable), or point tracking.uri / "
                    "MLFLOW_TRACKING_URI at a writable store")
    return None


def check_store(uri: str, on_unreachable: str) -> str | None:
    """Why the server at ``uri`` does not answer (``None`` when it does); raises ``TrackingUnavailable`` when the
    store cannot be used: a local one unwritable, or a server down with ``on_unreachable`` ``stop``.

    Also what a stage checks before its own work (``palbert.evaluate_stage``): a store found dead at the end costs
    that work.
    """
    problem = local_store_problem(uri)
    if problem:
        raise TrackingUnavailable(problem)
    if is_remote(uri):
        bound_http_calls()
    reason = check_reachable(uri)
    if reason is not None and on_unreachable == "stop":
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is not reachable ({reason}). Start it, e.g. "
            f"`mlflow server --host 127.0.0.1 --port <port> --backend-store-uri sqlite:///mlflow.db`, "
            f"point tracking.uri / MLFLOW_TRACKING_URI at a running one, or run with "
            f"`-S tracking.on_unreachable=local` to log to the project's local store instead."
        )
    return reason


def check_run_store(params: TrackingParams, project_root: Path | None = None, run_uri: str | None = None) -> None:
    """``check_store`` for the store a run was logged to (``run_uri``, else the params' one), before a stage's
    work; nothing to check when tracking is off."""
    if params.enabled:
        wanted = params.uri if run_uri is None else run_uri
        check_store(resolve_tracking_uri(dataclasses.replace(params, uri=wanted), project_root),
                    params.on_unreachable)


def choose_store(params: TrackingParams, project_root: Path) -> tuple[str, str | None]:
    """The URI to log to, and the URI it fell back from (``None`` when no fallback happened).

    Runs before any training so that a dead server or a read-only store costs seconds, not a training run.
    """
    uri = resolve_tracking_uri(params, project_root)
    reason = check_store(uri, params.on_unreachable)
    if reason is None:
        return uri, None
    log.error("MLflow tracking server %s is not reachable (%s)", uri, reason)
    local = default_store_uri(project_root)
    problem = local_store_problem(local)
    if problem:
        raise TrackingUnavailable(f"MLflow tracking server {uri} is not reachable ({reason}), and the local fallback: {problem}")
    log.warning(
        "!!! MLflow server %s unreachable: logging this run to the LOCAL store %s instead, "
        "tagged %s=%s. Copy it over later if you need it on the server. !!!",
        uri,
        local,
        TAG_FALLBACK_FROM,
        uri,
    )
    return local, uri


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"


def _local_artifact_location(uri: str, experiment: str, project_root: Path) -> str | None:
    """An absolute artifact folder for a local store (MLflow's default is ``./mlruns`` of the cwd)."""
    if is_remote(uri) or uri.startswith("databricks"):
        return None
    if uri.startswith("sqlite:///") and uri[len("sqlite:///") :].startswith("/"):
        base = Path(uri[len("sqlite:///") :]).parent
    else:
        base = Path(project_root).resolve()
    return (base / "mlruns" / _slug(experiment)).as_uri()


#: MLflow's experiment-type tag and its "Machine learning" value (the UI's ``ExperimentKind``): the experiment
#: opens on its runs and their metrics, not on the GenAI traces page MLflow 3 shows an untagged one.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def experiment_id(client: Any, name: str, uri: str, project_root: Path) -> str:
    """The experiment's id, creating it (with an absolute artifact folder for local stores); an experiment
    without a kind gets ``EXPERIMENT_KIND`` (one the user chose in the UI is kept)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise MlflowException(
                f"MLflow experiment {name!r} is deleted in {uri}: restore it "
                f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) "
                f"or set tracking.experiment to another name"
            )
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    location = _local_artifact_location(uri, name, project_root)
    try:
        return client.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except MlflowException:
        # Another process (a parallel DVC queue worker) created it first.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id
