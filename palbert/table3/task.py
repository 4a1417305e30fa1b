"""One Table 3 run, self-contained, on whichever node runs it: the driver's commit checked out from a git bundle
into the run's workspace, the row's params written into its ``params.yaml``, the pipeline's own stages run by
``dvc repro``, and the record's files returned as bytes.

The workspace (``<node cache>/work/<table>/<run>``) is removed once the record is made. A run stopped before that
(its driver killed, its node lost, its stage failed) leaves it with the training's checkpoint, and the next attempt
at the same commit on a node that sees the folder resumes from there instead of starting again.

Nothing here needs a clone, a shared folder or the driver's disk: the bundle travels with the task, prepared data
comes from a per-node DVC cache (DVC's run-cache restores ``fetch`` and ``prepare`` outputs that an earlier run on
the node made with the same code and params), and the MLflow store is the one the driver names.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from palbert.config import params_to_dict
from palbert.paths import CHECKPOINTS
from palbert.table3.plan import PlannedRun, Table3Error
from palbert.tracking.tags import RUN_TAGS_ENV

LOG_TAIL_LINES = 25
#: Stages whose outputs depend on data params only: made once per node, under a lock, then reused.
DATA_TARGET = "prepare"
#: The stage a record needs, with everything upstream of it.
RECORD_TARGET = "evaluate"
#: The tag that every attempt of one run of one command shares, and the tag of an attempt that was run again.
TAG_RUN_KEY = "table3_run_key"
TAG_RETRIED = "retried"
#: The step a resumed attempt continued from (its training checkpoint's).
TAG_RESUMED_AT = "table3_resumed_at_step"
#: How long a new attempt waits for the stages of an earlier one in the same workspace to stop (their watchdog
#: stops them within ~11 s of their worker's death).
EARLIER_STAGES_WAIT_S = 60


class RunFailed(Table3Error):
    """The run's own code failed (bad settings, NaN, full disk): not retried, its log tail in the message."""


@dataclass(frozen=True)
class TaskSetup:
    """What every run of one command shares: the commit, where to log, and the node-side folders."""

    commit: str
    tracking_uri: str
    #: A folder on each node (``~`` is that node's home): DVC cache, workspaces, run logs.
    node_cache: str
    #: The data mirror as each node sees it ("" = the ``data.mirror`` param, else download).
    mirror: str = ""
    #: Intra-op threads per run (0: PyTorch's default).
    threads: int = 0


def node_name() -> str:
    """The host and (inside Ray) the first characters of the node id: nodes may share a host in a test cluster."""
    try:
        import ray

        node = ray.get_runtime_context().get_node_id()[:8] if ray.is_initialized() else ""
    except Exception:  # noqa: BLE001 - outside a Ray worker: the host alone
        node = ""
    return f"{socket.gethostname()}:{node}" if node else socket.gethostname()


def run_params(run: PlannedRun, threads: int) -> dict[str, Any]:
    """The ``params.yaml`` the run trains with: its planned params, the table's MLflow tags and its threads."""
    raw = params_to_dict(run.params, include_table3=False)
    raw["train"]["threads"] = threads
    raw["tracking"].update(table3_id=run.table_id, table3_row=run.row)
    return raw


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _run_guarded(command: list[str], cwd: Path, env: Mapping[str, str], log_file: Path) -> int:
    """Run ``command`` in a process group of its own that dies with this worker.

    A Ray worker killed with SIGKILL (its node removed, its driver gone) runs no clean-up, and ``dvc repro``'s
    stage processes would train on unseen: a watchdog in its own session waits for this process to go and then
    stops the whole group (SIGTERM, then SIGKILL). The watchdog is no child of this worker (the ``sh`` that starts
    it in the background exits at once): a raylet that stops a worker also kills the worker's children, which
    would take the watchdog and ``dvc repro`` but leave the stage that ``dvc repro`` started training."""
    with open(log_file, "ab") as out:
        process = subprocess.Popen(command, cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    watch = (f"while kill -0 {os.getpid()} 2>/dev/null && kill -0 -{process.pid} 2>/dev/null; do sleep 1; done; "
             f"if kill -0 -{process.pid} 2>/dev/null; then kill -TERM -{process.pid}; sleep 10; "
             f"kill -KILL -{process.pid} 2>/dev/null; fi")
    subprocess.run(["sh", "-c", f"({watch}) &"], start_new_session=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    try:
        return process.wait()
    except BaseException:
        os.killpg(process.pid, 15)  # a cancelled task: its stages stop with it
        raise


def _checkout(bundle: bytes, commit: str, workspace: Path) -> None:
    bundle_file = workspace.parent / f"{workspace.name}.bundle"  # not with_suffix: "t3-llrd-0.9-s1" has a dot
    bundle_file.write_bytes(bundle)
    try:
        for command in (["git", "clone", "-q", "--no-checkout", str(bundle_file), str(workspace)],
                        ["git", "-C", str(workspace), "checkout", "-q", commit]):
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RunFailed(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
    finally:
        bundle_file.unlink(missing_ok=True)


def _processes_in(folder: Path) -> list[int]:
    """Process ids whose working directory is inside ``folder`` (an earlier attempt's dvc and stages)."""
    import psutil

    inside = []
    for process in psutil.process_iter(["pid", "cwd"]):
        cwd = process.info.get("cwd") or ""
        if cwd == str(folder) or cwd.startswith(f"{folder}{os.sep}"):
            inside.append(process.info["pid"])
    return inside


def _head(workspace: Path) -> str:
    result = subprocess.run(["git", "-C", str(workspace), "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""


def _unfinished_training(workspace: Path) -> dict[str, Any] | None:
    """The state of the workspace's training checkpoint when the training stage would resume from it (the rule of
    ``palbert.train.checkpoint.resumable_state``, read without importing torch): its step and MLflow run."""
    try:
        state = json.loads((workspace / CHECKPOINTS / "latest" / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not state.get("mlflow_run_id"):
        return None
    return None if state.get("complete") and state.get("outputs_written", True) else state


def open_workspace(workspace: Path, bundle: bytes, commit: str, run_name: str) -> dict[str, Any] | None:
    """Check out ``commit`` into ``workspace``, or keep the one an earlier attempt left at that commit with a
    training to resume; returns that training's checkpoint state (step, MLflow run id), else None.

    Any other workspace left there is replaced: what it holds would run again anyway, and its MLflow run is the
    earlier attempt's. Waits for an earlier attempt's stages to stop first: two ``dvc repro`` in one workspace would
    fight over its lock and its checkpoint."""
    if workspace.is_dir():
        deadline = time.monotonic() + EARLIER_STAGES_WAIT_S
        while (busy := _processes_in(workspace)) and time.monotonic() < deadline:
            time.sleep(1)
        if busy:
            raise RunFailed(f"{run_name}: processes {busy} still run in {workspace} (another command running this "
                            "run on this node?); stop them or remove the folder, then run the command again")
        state = _unfinished_training(workspace)
        if state is not None and _head(workspace) == commit:
            return state
        shutil.rmtree(workspace)
    _checkout(bundle, commit, workspace)
    return None


def run_task(run: PlannedRun, scale_name: str, bundle: bytes, setup: TaskSetup, attempt: int,
             extra_tags: Mapping[str, str]) -> dict[str, Any]:
    """Train and score ``run`` in its workspace; return ``{"files": {path: bytes}, "node", "log", ...}``.

    Raises ``RunFailed`` with the log's tail when a stage fails."""
    from filelock import FileLock, Timeout

    from palbert.table3.records import record_from_workspace

    cache = Path(os.path.expanduser(setup.node_cache))
    for sub in ("work", "logs", "dvc-cache"):
        (cache / sub).mkdir(parents=True, exist_ok=True)
    node = node_name()
    log_file = cache / "logs" / run.table_id / f"{run.name}.attempt{attempt}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text("", encoding="utf-8")
    workspace = cache / "work" / run.table_id / run.name
    workspace.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    lock = FileLock(str(workspace.parent / f"{workspace.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunFailed(f"{run.name}: another command runs it on this node now ({workspace})") from None
    try:
        resumed = open_workspace(workspace, bundle, setup.commit, run.name)
        (workspace / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {cache / 'dvc-cache'}\n",
                                                          encoding="utf-8")
        tags = {**extra_tags, "node": node, "attempt": str(attempt)}
        with open(workspace / "params.yaml", "w", encoding="utf-8") as handle:
            yaml.safe_dump(run_params(run, setup.threads), handle, sort_keys=False)
        env = {k: v for k, v in os.environ.items()
               if k not in ("DVC_ROOT", "PALBERT_PROJECT_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "RANK",
                            "WORLD_SIZE", "MLFLOW_RUN_ID")}
        env.update({"MLFLOW_TRACKING_URI": setup.tracking_uri, RUN_TAGS_ENV: json.dumps(tags)})
        resumed_run = str((resumed or {}).get("mlflow_run_id") or "")
        if resumed_run:
            retag_resumed_run(setup.tracking_uri, resumed_run, {**tags, TAG_RESUMED_AT: str(resumed.get("step"))})
        if attempt > 1:
            mark_earlier_attempts(setup.tracking_uri, tags.get(TAG_RUN_KEY, ""), attempt, keep=resumed_run)
        if setup.mirror:
            env["PALBERT_DATA_MIRROR"] = setup.mirror
        with FileLock(str(cache / "data.lock")):  # one preparation per node; the others restore it from DVC's cache
            code = _run_guarded(["dvc", "repro", DATA_TARGET], workspace, env, log_file)
        if code == 0:
            code = _run_guarded(["dvc", "repro", RECORD_TARGET], workspace, env, log_file)
        if code != 0:
            raise RunFailed(f"{run.name} failed on {node} (exit {code}); log: {log_file}\n{_tail(log_file)}")
        record_dir = workspace / ".record"
        shutil.rmtree(record_dir, ignore_errors=True)
        record_from_workspace(workspace, record_dir, run, scale_name, code_commit=setup.commit,
                              execution={"node": node, "attempt": attempt})
        files = {str(path.relative_to(record_dir)): path.read_bytes()
                 for path in sorted(record_dir.rglob("*")) if path.is_file()}
        shutil.rmtree(workspace, ignore_errors=True)  # the record is made: nothing left to resume
        return {"files": files, "node": node, "log": str(log_file), "wall_s": time.monotonic() - started,
                "resumed_at": (resumed or {}).get("step")}
    finally:
        lock.release()


def retag_resumed_run(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    """The MLflow run that a resumed training reopens takes this attempt's tags (node, attempt, run key), and
    loses the ``retried`` mark an earlier attempt's retry gave it: it is the one that finishes."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_run(run_id)
    except MlflowException:
        return  # not in this store: the training starts a new run, tagged with where it resumed from
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    if TAG_RETRIED in found.data.tags:
        client.delete_tag(run_id, TAG_RETRIED)


def mark_earlier_attempts(uri: str, key: str, attempt: int, keep: str = "") -> None:
    """The MLflow runs of this run's earlier attempts (their node died under them) are ended as KILLED and tagged
    ``retried``, so that the compare view shows one finished run per row x seed; ``keep`` is the run this attempt
    resumes, which it finishes."""
    from mlflow import MlflowClient

    if not key:
        return
    client = MlflowClient(tracking_uri=uri)
    for experiment in client.search_experiments():
        for found in client.search_runs([experiment.experiment_id], filter_string=f"tags.{TAG_RUN_KEY} = '{key}'"):
            if found.info.run_id == keep:
                continue
            client.set_tag(found.info.run_id, TAG_RETRIED, f"yes: attempt {attempt} runs it again")
            # KILLED whatever the stopped stage wrote last: only the last attempt's run counts as finished
            client.set_terminated(found.info.run_id, status="KILLED")


def new_run_key() -> str:
    """One key per run per command: every attempt of the run carries it, so retried attempts can be found."""
    return uuid.uuid4().hex[:12]
