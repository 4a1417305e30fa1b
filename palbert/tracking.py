"""The MLflow side of a run: which store, whether it answers, and one MLflow run per training run.

Stages log through a ``Tracker`` from ``open_run``, used with ``with``: leaving the block ends the run
FINISHED, by Ctrl-C KILLED, by an exception FAILED. Only rank 0 talks to MLflow (``MlflowTracker``); other
ranks, and runs with ``tracking.enabled: false``, get a ``NullTracker`` with the same methods, so the
training loop calls the tracker everywhere and never checks its rank.

Where runs go (``resolve_tracking_uri``): ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else a
SQLite store at an absolute path in the project root. MLflow's own default (``sqlite:///mlflow.db``
and artifacts in ``./mlruns``) is relative to the current folder, and DVC runs queued and temporary
experiments in ``.dvc/tmp/exps/<tmp>/``, which it deletes afterwards: relative paths would lose runs.

The project root is ``palbert.paths.find_project_root``. A ``project_root`` passed in (stages pass their working folder) that lies inside
``<repo>/.dvc/tmp/exps/`` is mapped to ``<repo>`` the same way.

Local stores also get an absolute artifact location (beside the SQLite file, ``mlruns/<experiment>``)
when this module creates the experiment, for the same reason.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import subprocess
import time
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from palbert.config import Params, TrackingParams
from palbert.errors import TrackingUnavailable
from palbert.paths import find_project_root, outside_dvc_temp
from palbert.stop_signals import signals_held

if TYPE_CHECKING:
    from palbert.data.prepared import PreparedSplit
    from palbert.registry import Registration

log = logging.getLogger(__name__)

#: Tag names other parts of palbert (Table 3, the README's UI queries) rely on.
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_DVC_EXP_NAME = "dvc_exp_name"
TAG_DVC_EXP_BASELINE_REV = "dvc_exp_baseline_rev"
TAG_TABLE3_ID = "table3_id"
TAG_TABLE3_ROW = "table3_row"
TAG_SEED = "seed"
TAG_FALLBACK_FROM = "palbert.fallback_from"
TAG_RESUMED_FROM = "palbert.resumed_from"

#: Param-name prefix of the model's parameter counts (``MultitaskBert.parameter_report``).
PARAMETER_COUNT_PREFIX = "parameters."
#: Run name of a run outside any DVC experiment (a plain ``dvc repro``): DVC calls it the workspace.
WORKSPACE_RUN_NAME = "workspace"
#: ``mlflow.data.context`` input tag values (MLflow's own key), as in ``mlflow.log_input(..., context=)``.
CONTEXT_TRAINING = "training"
CONTEXT_VALIDATION = "validation"

#: MLflow refuses longer param values.
PARAM_VALUE_LIMIT = 6000
#: How long the start-up check waits for a tracking server.
CHECK_TIMEOUT_S = 5
_BATCH = 100  # log_batch accepts at most 100 params / 1000 metrics per call



# --------------------------------------------------------------------------------------------
# Where the store is
# --------------------------------------------------------------------------------------------


def _project_root(project_root: Path | None) -> Path:
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
    root = _project_root(project_root)
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


def store_call(uri: str) -> contextlib.AbstractContextManager[None]:
    """Around each call to a store: a local one (SQLite, files) is not interrupted by a stop signal mid-write,
    which left ``mlflow.db`` locked; a call to a server is, so a lost server cannot delay a stop by its retries."""
    return contextlib.nullcontext() if is_remote(uri) else signals_held()


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


@contextlib.contextmanager
def _quick_http() -> Iterator[None]:
    """No retries and a short timeout for MLflow's HTTP client (by default 7 retries, ~4 minutes)."""
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
        with _quick_http():
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # connection refused, timeout, auth, proxy page: all mean "no store here"
        return _short_reason(exc)
    return None


def _short_reason(exc: Exception) -> str:
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


def choose_store(params: TrackingParams, project_root: Path) -> tuple[str, str | None]:
    """The URI to log to, and the URI it fell back from (``None`` when no fallback happened).

    Runs before any training so that a dead server or a read-only store costs seconds, not a training run.
    """
    uri = resolve_tracking_uri(params, project_root)
    problem = local_store_problem(uri)
    if problem:
        raise TrackingUnavailable(problem)
    reason = check_reachable(uri)
    if reason is None:
        return uri, None
    log.error("MLflow tracking server %s is not reachable (%s)", uri, reason)
    if params.on_unreachable == "stop":
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is not reachable ({reason}). Start it, e.g. "
            f"`mlflow server --host 127.0.0.1 --port <port> --backend-store-uri sqlite:///mlflow.db`, "
            f"point tracking.uri / MLFLOW_TRACKING_URI at a running one, or run with "
            f"`-S tracking.on_unreachable=local` to log to the project's local store instead."
        )
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


# --------------------------------------------------------------------------------------------
# What gets logged
# --------------------------------------------------------------------------------------------


def param_strings(params: Params) -> dict[str, str]:
    """``params.flat()`` as MLflow param strings: lists and mappings as JSON, capped at 6000 chars."""
    out: dict[str, str] = {}
    for key, value in params.flat().items():
        text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
        if len(text) > PARAM_VALUE_LIMIT:
            log.warning("param %s is %d chars long; MLflow keeps %d", key, len(text), PARAM_VALUE_LIMIT)
            text = text[: PARAM_VALUE_LIMIT - 3] + "..."
        out[key] = text
    return out


def git_commit(cwd: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def run_tags(params: Params, project_root: Path) -> dict[str, str]:
    """Tags that say where a run came from: commit, DVC experiment, Table 3 row, seed."""
    tags = {TAG_SEED: str(params.train.seed)}
    # The working folder's HEAD: in a DVC temp workspace that is the experiment's baseline commit.
    commit = git_commit(Path.cwd()) or git_commit(project_root)
    if commit:
        tags[TAG_GIT_COMMIT] = commit
    for env, tag in (("DVC_EXP_NAME", TAG_DVC_EXP_NAME), ("DVC_EXP_BASELINE_REV", TAG_DVC_EXP_BASELINE_REV)):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    if params.tracking.table3_id:
        tags[TAG_TABLE3_ID] = params.tracking.table3_id
    if params.tracking.table3_row:
        tags[TAG_TABLE3_ROW] = params.tracking.table3_row
    return tags


def default_run_name(tags: Mapping[str, str]) -> str:
    """The DVC experiment's name, else ``workspace@<commit>``: what ``dvc exp show`` calls a plain
    ``dvc repro`` run (the workspace, on top of that commit), instead of a random MLflow name."""
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    commit = tags.get(TAG_GIT_COMMIT)
    return f"{WORKSPACE_RUN_NAME}@{commit[:7]}" if commit else WORKSPACE_RUN_NAME


def parameter_counts(report: Mapping[str, Any]) -> dict[str, str]:
    """``MultitaskBert.parameter_report()`` as params ``parameters.<name>`` (nested names joined by dots).

    Facts about the model, not time series: logged as metrics they made one chart panel each and took
    over the compare view's parallel-coordinates plot.
    """
    out: dict[str, str] = {}

    def add(name: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                add(f"{name}.{key}", inner)
        else:
            out[PARAMETER_COUNT_PREFIX + name] = f"{value:.2f}" if isinstance(value, float) else str(value)

    for key, value in report.items():
        add(key, value)
    return out


def _file_md5(path: Path) -> str:
    """The file's md5, as DVC computes it, so ``md5sum`` or ``dvc.lock`` can be compared with the run."""
    digest = hashlib.md5()
    with Path(path).open("rb") as fp:
        for block in iter(lambda: fp.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_input(split: "PreparedSplit", prepared_root: Path, context: str) -> Any:
    """One prepared split as an MLflow ``DatasetInput`` (what ``mlflow.log_input`` logs): name
    ``<dataset>-<split>``, the prepared file as source, its md5 as digest and the rows used as profile."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from palbert.data.prepared import split_path

    path = split_path(prepared_root, split.dataset, split.split)
    dataset = Dataset(
        name=f"{split.dataset}-{split.split}",
        digest=_file_md5(path),
        source_type="local",
        source=json.dumps({"uri": str(path)}),
        profile=json.dumps({"num_rows": len(split)}),
    )
    return DatasetInput(dataset=dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


def _context_tags(tags: dict[str, str]) -> dict[str, str]:
    """MLflow's usual source/user tags (what ``mlflow.start_run`` adds), ours winning."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        return {**resolve_tags({}), **tags}
    except Exception:  # an internal MLflow helper: its absence must not stop a run
        log.debug("MLflow context tags unavailable", exc_info=True)
        return tags


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


def _system_metrics_available() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        log.debug("psutil is not installed: no system metrics")
        return False
    return True


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def exit_status(exc_type: type[BaseException] | None) -> str:
    """The MLflow status a run ends with when its ``with`` block is left: normally FINISHED, by Ctrl-C
    (``KeyboardInterrupt``) KILLED, by any other exception FAILED."""
    if exc_type is None:
        return "FINISHED"
    return "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"


class Tracker(abc.ABC):
    """What a stage logs through: one MLflow run (``MlflowTracker``) or nothing (``NullTracker``).

    Get one from ``open_run`` and use it with ``with``: leaving the block ends the run with ``exit_status``.
    The methods never raise because the store stopped answering (see ``MlflowTracker.lost``).
    """

    #: The MLflow run's id; ``None`` when nothing is recorded.
    run_id: str | None
    #: The store the run lives in; ``""`` when nothing is recorded.
    tracking_uri: str
    #: Why the store stopped answering mid-run (``None`` while it answers, and when nothing is recorded).
    lost: str | None

    @abc.abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    @abc.abstractmethod
    def log_params(self, values: Mapping[str, str]) -> None:
        """More params (e.g. ``parameter_counts``); logging a param again with the same value is allowed."""

    @abc.abstractmethod
    def log_datasets(self, prepared_root: Path, splits: Mapping[str, Iterable["PreparedSplit"]]) -> None:
        """The prepared splits a run reads, per context (``{"training": [...], "validation": [...]}``):
        the UI's Datasets column then says what the run was trained and scored on."""

    @abc.abstractmethod
    def log_model(self, model_dir: Path, registration: "Registration | None" = None) -> None:
        """``model_dir`` (``models/best``) as the run's MLflow Model ``runs:/<id>/model``; with a
        ``registration``, also a version of the registered model (``palbert.registry``)."""

    @abc.abstractmethod
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    @abc.abstractmethod
    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None: ...

    @abc.abstractmethod
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    @abc.abstractmethod
    def end(self, status: str = "FINISHED") -> None:
        """Mark the run ended with ``status``; a second call does nothing."""

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: types.TracebackType | None) -> None:
        self.end(exit_status(exc_type))


class NullTracker(Tracker):
    """What ranks other than 0 get, and every rank with ``tracking.enabled: false``: nothing is recorded."""

    run_id = None
    tracking_uri = ""
    lost = None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_params(self, values: Mapping[str, str]) -> None:
        pass

    def log_datasets(self, prepared_root: Path, splits: Mapping[str, Iterable["PreparedSplit"]]) -> None:
        pass

    def log_model(self, model_dir: Path, registration: "Registration | None" = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


def open_run(
    params: Params,
    project_root: Path | None = None,
    *,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    rank: int | None = None,
    system_metrics: bool = True,
) -> Tracker:
    """The tracker of this process: a new MLflow run, or ``run_id`` reopened (a resumed training, the
    evaluate stage adding to the training's run; ``tracking_uri`` is where that run was logged).

    ``rank`` (default ``$RANK``, else 0) other than 0, and ``tracking.enabled: false``, get a
    ``NullTracker``. Raises ``TrackingUnavailable`` before anything is logged when the server is down and
    ``tracking.on_unreachable`` is ``stop``.
    """
    if _rank(rank) != 0 or not _enabled(params):
        return NullTracker()
    if run_id:
        return MlflowTracker.resume(run_id, params, project_root, tracking_uri=tracking_uri,
                                    system_metrics=system_metrics)
    return MlflowTracker.start(params, project_root, run_name, tags=tags, system_metrics=system_metrics)


class MlflowTracker(Tracker):
    """One MLflow run, driven through ``MlflowClient`` (no global active run to leave dangling)."""

    def __init__(self, client: Any, run_id: str, tracking_uri: str, system_metrics: bool = True,
                 resumed: bool = False) -> None:
        self.client = client
        self.run_id: str = run_id
        self.tracking_uri = tracking_uri
        self.lost = None
        self._monitor = None
        self._ended = False
        if system_metrics and _system_metrics_available():
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self._monitor = SystemMetricsMonitor(run_id, resume_logging=resumed, tracking_uri=tracking_uri)
                self._monitor.start()
            except Exception as exc:
                log.warning("system metrics logging did not start: %s", exc)
                self._monitor = None

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        params: Params,
        project_root: Path | None = None,
        run_name: str | None = None,
        *,
        tags: Mapping[str, str] | None = None,
        system_metrics: bool = True,
    ) -> "MlflowTracker":
        """Check the store, create the experiment if needed, start one run, log params and tags.

        ``run_name`` defaults to ``default_run_name`` (the DVC experiment, else ``workspace@<commit>``).
        """
        from mlflow import MlflowClient

        root = _project_root(project_root)
        uri, fallback_from = choose_store(params.tracking, root)
        client = MlflowClient(tracking_uri=uri)
        experiment_id = _experiment_id(client, params.tracking.experiment, uri, root)
        all_tags = {**run_tags(params, root), **dict(tags or {})}
        if fallback_from:
            all_tags[TAG_FALLBACK_FROM] = fallback_from
        run_name = run_name or default_run_name(all_tags)
        with store_call(uri):
            run = client.create_run(experiment_id, run_name=run_name, tags=_context_tags(all_tags))
        run_id = run.info.run_id
        try:
            with store_call(uri):
                _log_params(client, run_id, param_strings(params))
            tracker = cls(client, run_id, uri, system_metrics=system_metrics)
        except BaseException:
            with store_call(uri):
                client.set_terminated(run_id, status="FAILED")
            raise
        log.info(
            "MLflow run %s (%s) in experiment %r at %s",
            run.info.run_name,
            run_id,
            params.tracking.experiment,
            uri,
        )
        return tracker

    @classmethod
    def resume(
        cls,
        run_id: str,
        params: Params,
        project_root: Path | None = None,
        *,
        tracking_uri: str | None = None,
        system_metrics: bool = True,
    ) -> "MlflowTracker":
        """Reopen a run to add to it.

        Pass ``tracking_uri`` from the training run when known: after a fallback the run lives in the local
        store. If the run is not in the chosen store (e.g. it was logged elsewhere), a new run is started,
        tagged ``palbert.resumed_from=<run_id>``: nothing is lost.
        """
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        root = _project_root(project_root)
        wanted = dataclasses.replace(params.tracking, uri=tracking_uri or params.tracking.uri)
        uri, fallback_from = choose_store(wanted, root)
        client = MlflowClient(tracking_uri=uri)
        try:
            client.get_run(run_id)
        except MlflowException as exc:
            log.warning("run %s is not in %s (%s): starting a new run for it", run_id, uri, exc.error_code)
            tags = {TAG_RESUMED_FROM: run_id}
            if fallback_from:
                tags[TAG_FALLBACK_FROM] = fallback_from
            here = dataclasses.replace(params, tracking=dataclasses.replace(params.tracking, uri=uri))
            return cls.start(here, root, tags=tags, system_metrics=system_metrics)
        if fallback_from:
            client.set_tag(run_id, TAG_FALLBACK_FROM, fallback_from)
        client.update_run(run_id, status="RUNNING")
        log.info("MLflow run %s reopened at %s", run_id, uri)
        return cls(client, run_id, uri, system_metrics=system_metrics, resumed=True)

    # -- logging -----------------------------------------------------------------------------

    def _send(self, what: str, call: Callable[[], Any]) -> None:
        """One call to the store. A store that stops answering mid-run must not end hours of training:
        the first failure (after MLflow's own retries) is logged as an error, ``lost`` says why, and
        later calls are skipped; everything also lands in the stage's own outputs (metrics/, models/)."""
        if self.lost is not None:
            return
        from mlflow.exceptions import MlflowException

        try:
            with store_call(self.tracking_uri):
                call()
        except (MlflowException, OSError) as exc:
            self.lost = f"{what}: {_short_reason(exc)}"
            log.error("MLflow store %s stopped answering (%s). Training goes on; MLflow run %s stays "
                      "incomplete from here, metrics/train.json and the plots have everything.",
                      self.tracking_uri, self.lost, self.run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, int(step)) for key, value in metrics.items()]
        for i in range(0, len(entries), 1000):
            self._send("log_batch", lambda batch=entries[i : i + 1000]: self.client.log_batch(self.run_id, metrics=batch))

    def log_params(self, values: Mapping[str, str]) -> None:
        self._send("log_params", lambda: _log_params(self.client, self.run_id, values))

    def log_datasets(self, prepared_root: Path, splits: Mapping[str, Iterable["PreparedSplit"]]) -> None:
        inputs = [dataset_input(split, prepared_root, context)
                  for context, group in splits.items() for split in group]
        self._send("log_inputs", lambda: self.client.log_inputs(self.run_id, datasets=inputs))

    def log_model(self, model_dir: Path, registration: "Registration | None" = None) -> None:
        """A pyfunc that ``mlflow models serve`` can serve, registered when the store has a registry
        (``palbert.mlflow_model``)."""
        from palbert.mlflow_model import log_model

        self._send("log_model", lambda: log_model(self.run_id, self.tracking_uri, model_dir, registration))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._send(f"log_artifact {path}", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        self._send(f"log_artifacts {directory}",
                   lambda: self.client.log_artifacts(self.run_id, str(directory), artifact_path))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._send("set_tags", lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def end(self, status: str = "FINISHED") -> None:
        """Stop system metrics and mark the run; a second call does nothing."""
        if self._ended:
            return
        self._ended = True
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        self._send("set_terminated", lambda: self.client.set_terminated(self.run_id, status=status))
        if self.lost is None:
            log.info("MLflow run %s ended %s", self.run_id, status)


def _enabled(params: Params) -> bool:
    if not params.tracking.enabled:
        log.warning("tracking.enabled is false: this run is NOT recorded in MLflow")
    return params.tracking.enabled


def _rank(rank: int | None) -> int:
    return int(os.environ.get("RANK", "0")) if rank is None else rank


def _experiment_id(client: Any, name: str, uri: str, project_root: Path) -> str:
    """The experiment's id, creating it (with an absolute artifact folder for local stores)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise MlflowException(
                f"MLflow experiment {name!r} is deleted in {uri}: restore it "
                f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) "
                f"or set tracking.experiment to another name"
            )
        return experiment.experiment_id
    location = _local_artifact_location(uri, name, project_root)
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Another process (a parallel DVC queue worker) created it first.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _log_params(client: Any, run_id: str, values: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    entries = [Param(key, value) for key, value in values.items()]
    for i in range(0, len(entries), _BATCH):
        client.log_batch(run_id, params=entries[i : i + _BATCH])
