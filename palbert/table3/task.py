"""One Table 3 run, self-contained, on whichever node runs it: the driver's commit checked out from a git bundle
into a private workspace, the row's params written into its ``params.yaml``, the pipeline's own stages run by
``dvc repro``, and the record's files returned as bytes.

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
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from palbert.config import params_to_dict
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
    bundle_file = workspace.with_suffix(".bundle")
    bundle_file.write_bytes(bundle)
    try:
        for command in (["git", "clone", "-q", "--no-checkout", str(bundle_file), str(workspace)],
                        ["git", "-C", str(workspace), "checkout", "-q", commit]):
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RunFailed(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
    finally:
        bundle_file.unlink(missing_ok=True)


def run_task(run: PlannedRun, scale_name: str, bundle: bytes, setup: TaskSetup, attempt: int,
             extra_tags: Mapping[str, str]) -> dict[str, Any]:
    """Train and score ``run`` in a private workspace; return ``{"files": {path: bytes}, "node", "log", ...}``.

    Raises ``RunFailed`` with the log's tail when a stage fails."""
    from filelock import FileLock

    from palbert.table3.records import record_from_workspace

    cache = Path(os.path.expanduser(setup.node_cache))
    for sub in ("work", "logs", "dvc-cache"):
        (cache / sub).mkdir(parents=True, exist_ok=True)
    node = node_name()
    log_file = cache / "logs" / run.table_id / f"{run.name}.attempt{attempt}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text("", encoding="utf-8")
    workspace = Path(tempfile.mkdtemp(prefix=f"{run.name}-", dir=cache / "work"))
    shutil.rmtree(workspace)
    started = time.monotonic()
    try:
        _checkout(bundle, setup.commit, workspace)
        (workspace / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {cache / 'dvc-cache'}\n",
                                                          encoding="utf-8")
        tags = {**extra_tags, "node": node, "attempt": str(attempt)}
        with open(workspace / "params.yaml", "w", encoding="utf-8") as handle:
            yaml.safe_dump(run_params(run, setup.threads), handle, sort_keys=False)
        env = {k: v for k, v in os.environ.items()
               if k not in ("DVC_ROOT", "PALBERT_PROJECT_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "RANK",
                            "WORLD_SIZE", "MLFLOW_RUN_ID")}
        env.update({"MLFLOW_TRACKING_URI": setup.tracking_uri, RUN_TAGS_ENV: json.dumps(tags)})
        if attempt > 1:
            mark_earlier_attempts(setup.tracking_uri, tags.get(TAG_RUN_KEY, ""), attempt)
        if setup.mirror:
            env["PALBERT_DATA_MIRROR"] = setup.mirror
        with FileLock(str(cache / "data.lock")):  # one preparation per node; the others restore it from DVC's cache
            code = _run_guarded(["dvc", "repro", DATA_TARGET], workspace, env, log_file)
        if code == 0:
            code = _run_guarded(["dvc", "repro", RECORD_TARGET], workspace, env, log_file)
        if code != 0:
            raise RunFailed(f"{run.name} failed on {node} (exit {code}); log: {log_file}\n{_tail(log_file)}")
        record_dir = workspace / ".record"
        record_from_workspace(workspace, record_dir, run, scale_name, code_commit=setup.commit,
                              execution={"node": node, "attempt": attempt})
        files = {str(path.relative_to(record_dir)): path.read_bytes()
                 for path in sorted(record_dir.rglob("*")) if path.is_file()}
        return {"files": files, "node": node, "log": str(log_file), "wall_s": time.monotonic() - started}
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def mark_earlier_attempts(uri: str, key: str, attempt: int) -> None:
    """The MLflow runs of this run's earlier attempts (their node died under them) are ended as KILLED and tagged
    ``retried``, so that the compare view shows one finished run per row x seed."""
    from mlflow import MlflowClient

    if not key:
        return
    client = MlflowClient(tracking_uri=uri)
    for experiment in client.search_experiments():
        for found in client.search_runs([experiment.experiment_id], filter_string=f"tags.{TAG_RUN_KEY} = '{key}'"):
            client.set_tag(found.info.run_id, TAG_RETRIED, f"yes: attempt {attempt} runs it again")
            # KILLED whatever the stopped stage wrote last: only the last attempt's run counts as finished
            client.set_terminated(found.info.run_id, status="KILLED")


def new_run_key() -> str:
    """One key per run per command: every attempt of the run carries it, so retried attempts can be found."""
    return uuid.uuid4().hex[:12]
