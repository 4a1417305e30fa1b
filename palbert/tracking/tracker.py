"""One MLflow run per training run, logged through a ``Tracker`` (``open_run``), used with ``with``: leaving the
block ends the run FINISHED, by Ctrl-C KILLED, by an exception FAILED.

Only rank 0 talks to MLflow (``MlflowTracker``); other ranks, and runs with ``tracking.enabled: false``, get a
``NullTracker`` with the same methods, so the training loop calls the tracker everywhere and never checks its rank.
A store that stops answering mid-run sets ``lost`` and later calls are skipped: training goes on. The tracker knows
runs, not models: the recipe that logs the MLflow Model hands it over through ``Tracker.log_with``.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import os
import threading
import time
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from palbert.config import Params
from palbert.tracking.store import (choose_store, experiment_id, is_remote, quick_http, short_reason, store_call,
                                    store_root)
from palbert.tracking.tags import (
    TAG_FALLBACK_FROM,
    TAG_RESUMED_FROM,
    context_tags,
    dataset_input,
    default_run_name,
    param_strings,
    run_tags,
)

if TYPE_CHECKING:
    from palbert.data.prepared import PreparedSplit

log = logging.getLogger("palbert.tracking")

_BATCH = 100  # log_batch accepts at most 100 params / 1000 metrics per call


def _system_metrics_wanted(asked: bool | None) -> bool:
    """System metrics (``system/cpu_utilization_percentage``, ...) only when asked: ``asked``, else MLflow's own
    switch ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true``. Off by default: they are zeros on a CPU box and took
    the first places of the run's and the model's metric lists from the dev scores."""
    if asked is None:
        from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING

        asked = MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.get()
    return bool(asked) and _system_metrics_available()


def _system_metrics_available() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        log.debug("psutil is not installed: no system metrics")
        return False
    return True


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
    def log_with(self, what: str, write: Callable[[str, str], object]) -> None:
        """``write(run_id, tracking_uri)``: something MLflow's own API logs into the run (the MLflow Model:
        ``palbert.evaluate_stage.log_trained_model``), under the same lost-store policy as every other call."""

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

    def log_with(self, what: str, write: Callable[[str, str], object]) -> None:
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
    system_metrics: bool | None = None,
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

    def __init__(self, client: Any, run_id: str, tracking_uri: str, system_metrics: bool | None = None,
                 resumed: bool = False) -> None:
        self.client = client
        self.run_id: str = run_id
        self.tracking_uri = tracking_uri
        self.lost = None
        self._monitor = None
        self._ended = False
        if _system_metrics_wanted(system_metrics):
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
        system_metrics: bool | None = None,
    ) -> "MlflowTracker":
        """Check the store, create the experiment if needed, start one run, log params and tags.

        ``run_name`` defaults to ``default_run_name`` (the DVC experiment, else ``workspace@<commit>``).
        """
        from mlflow import MlflowClient

        root = store_root(project_root)
        uri, fallback_from = choose_store(params.tracking, root)
        client = MlflowClient(tracking_uri=uri)
        experiment = experiment_id(client, params.tracking.experiment, uri, root)
        all_tags = {**run_tags(params, root), **dict(tags or {})}
        if fallback_from:
            all_tags[TAG_FALLBACK_FROM] = fallback_from
        run_name = run_name or default_run_name(all_tags)
        with store_call(uri):
            run = client.create_run(experiment, run_name=run_name, tags=context_tags(all_tags))
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
        system_metrics: bool | None = None,
    ) -> "MlflowTracker":
        """Reopen a run to add to it.

        Pass ``tracking_uri`` from the training run when known: after a fallback the run lives in the local
        store. If the run is not in the chosen store (e.g. it was logged elsewhere), a new run is started,
        tagged ``palbert.resumed_from=<run_id>``: nothing is lost.
        """
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        root = store_root(project_root)
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
        the first failure (after MLflow's own retries, ``palbert.tracking.store.BOUNDED_HTTP``) is logged as an
        error, ``lost`` says why, and later calls are skipped; everything also lands in the stage's own outputs
        (metrics/, models/). A stage that cannot go on without the store checks ``lost`` itself."""
        if self.lost is not None:
            return
        from mlflow.exceptions import MlflowException

        try:
            with store_call(self.tracking_uri):
                call()
        except (MlflowException, OSError) as exc:
            self.lost = f"{what}: {short_reason(exc)}"
            log.error("MLflow store %s stopped answering (%s). The stage goes on; MLflow run %s stays "
                      "incomplete from here, the stage's own outputs (metrics/, models/) have everything.",
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

    def log_with(self, what: str, write: Callable[[str, str], object]) -> None:
        self._send(what, lambda: write(self.run_id, self.tracking_uri))

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
        if status == "FINISHED" and self.lost is None:
            if self._monitor is not None:
                self._monitor.finish()
                self._monitor = None
            self._send("set_terminated", lambda: self.client.set_terminated(self.run_id, status=status))
            if self.lost is None:
                log.info("MLflow run %s ended %s", self.run_id, status)
            return
        # After a stop signal or an error, or once the store stopped answering: one short try each, as a stop must
        # not wait on a hung server, and a store that only failed a write (a full artifact disk) still gets the
        # run's status.
        from mlflow.exceptions import MlflowException

        with quick_http():
            if self._monitor is not None:  # a server's: stopped beside this call, waited for a second at most
                stopping = threading.Thread(target=self._monitor.finish, daemon=True)
                stopping.start()
                stopping.join(timeout=1.0 if is_remote(self.tracking_uri) else None)
                self._monitor = None
            try:
                with store_call(self.tracking_uri):
                    self.client.set_terminated(self.run_id, status=status)
            except (MlflowException, OSError) as exc:
                log.warning("MLflow run %s stays RUNNING in %s: marking it %s failed too (%s)",
                            self.run_id, self.tracking_uri, status, short_reason(exc))
            else:
                log.info("MLflow run %s ended %s", self.run_id, status)


def _enabled(params: Params) -> bool:
    if not params.tracking.enabled:
        log.warning("tracking.enabled is false: this run is NOT recorded in MLflow")
    return params.tracking.enabled


def _rank(rank: int | None) -> int:
    return int(os.environ.get("RANK", "0")) if rank is None else rank


def _log_params(client: Any, run_id: str, values: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    entries = [Param(key, value) for key, value in values.items()]
    for i in range(0, len(entries), _BATCH):
        client.log_batch(run_id, params=entries[i : i + _BATCH])
