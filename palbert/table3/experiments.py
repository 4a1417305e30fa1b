"""The DVC side of Table 3: which ``t3-*`` experiments exist, queueing, running the queue.

DVC facts this relies on (DVC 3.67):
- ``dvc exp run --run-all -j N`` starts N queue workers, follows every queued experiment's log in the
  foreground and returns when all are done, but exits 0 even when some failed: failures are found
  afterwards, from ``dvc exp show --json`` (``executor.state == "failed"``, or no metrics).
- Queueing a name that already exists as an experiment of the same baseline commit fails unless
  ``--force``; failed queue entries keep their name in ``dvc exp show`` but do not block it.
- ``-S`` values go through Hydra's override grammar (``plan.hydra_value``).
- Queued experiments run in ``.dvc/tmp/exps/<tmp>/`` with ``DVC_ROOT`` set to the real repository, which
  ``palbert.paths.find_project_root`` uses, so their MLflow runs land in the project's store.
- A queue entry whose worker died (killed with the session, or a task taken by a worker in its 10 s idle
  shutdown: seen here once in ~30 back-to-back queue-and-run cycles, and once in a CI run of the table3
  end-to-end test; treeverse/dvc#10398, #10427) stays "Running" for ever, and ``--run-all`` follows it for
  ever. Hence ``wait_for_workers_to_exit`` before queueing and the stall watch in ``run_queue``.
- A finished experiment is the git ref ``refs/exps/<baseline[:2]>/<baseline[2:]>/<name>``; a queued or failed
  one an entry of the stash ``refs/exps/celery/stash`` / ``failed`` whose message names its baseline.
  ``dvc exp show --rev B`` lists B's experiments, finished, queued, running and failed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from palbert.config import ParamsError, params_from_dict
from palbert.metrics import DEV_METRICS
from palbert.table3.plan import PlannedRun, Table3Error

log = logging.getLogger(__name__)

DEV_METRICS_FILE = "metrics/dev.json"
#: where dvc-task keeps one JSON per queue worker process ({"pid": ..., "returncode": ...})
QUEUE_WORKER_INFO = ".dvc/tmp/exps/celery"
WORKER_EXIT_WAIT_S = 60.0  # a DVC queue worker exits 10 s after the queue empties
STALL_CHECK_S = 30.0  # how often ``run_queue`` looks for live workers
STALL_CHECKS = 2  # consecutive looks with no live worker that make a stall
STALL_RETRIES = 2
#: DVC's layout of experiment refs and of its queue's stash entries (dvc/repo/experiments/refs.py, stash.py)
EXP_REF = re.compile(r"^refs/exps/(?P<prefix>[0-9a-f]{2})/(?P<rest>[0-9a-f]{38})/[^/]+$")
QUEUE_STASHES = ("refs/exps/celery/stash", "refs/exps/celery/failed")
STASH_MESSAGE = re.compile(r"\bdvc-exp:[0-9a-f]+:(?P<baseline>[0-9a-f]{40})\b")  # reflog subject "commit: dvc-exp:..."


@dataclass
class ExpRecord:
    """One experiment as ``dvc exp show --json`` lists it."""

    name: str
    rev: str
    baseline: str
    #: ``success``, ``failed``, ``queued``, ``running``, or None (finished, no queue record left).
    state: str | None
    params: dict[str, Any]
    metrics: dict[str, Any] | None  # metrics/dev.json
    log_file: str | None = None
    timestamp: str = ""

    @property
    def complete(self) -> bool:
        return (self.state not in ("failed", "queued", "running") and self.metrics is not None
                and all(isinstance(self.metrics.get(name), (int, float)) for name in DEV_METRICS))

    @property
    def pending(self) -> bool:
        return self.state in ("queued", "running")

    @property
    def has_ref(self) -> bool:
        """A finished experiment of this name exists: queueing the name again needs ``--force``."""
        return self.state not in ("failed", "queued", "running")

    @property
    def table_id(self) -> str:
        return str(self.params.get("tracking", {}).get("table3_id") or "")


def parse_exp_show(data: Sequence[Mapping[str, Any]]) -> dict[str, list[ExpRecord]]:
    """``dvc exp show --json`` output -> named experiments of every shown baseline, newest first."""
    found: dict[str, list[ExpRecord]] = {}
    for baseline in data:
        for experiment in baseline.get("experiments") or []:
            executor = experiment.get("executor") or {}
            for rev in experiment.get("revs") or []:
                name = rev.get("name") or experiment.get("name")
                if not name:
                    continue
                body = rev.get("data") or {}
                metrics = body.get("metrics") or {}
                params_file = (body.get("params") or {}).get("params.yaml") or {}
                state = executor.get("state")
                if rev.get("error") and state is None:
                    state = "failed"
                found.setdefault(name, []).append(ExpRecord(
                    name=name,
                    rev=rev.get("rev", ""),
                    baseline=baseline.get("rev", ""),
                    state=state,
                    params=params_file.get("data") or {},
                    metrics=(metrics.get(DEV_METRICS_FILE) or {}).get("data"),
                    log_file=(executor.get("local") or {}).get("log"),
                    timestamp=body.get("timestamp") or "",
                ))
    for records in found.values():
        records.sort(key=lambda record: record.timestamp, reverse=True)
    return found


def _dvc(root: Path, args: Sequence[str], capture: bool = False) -> subprocess.CompletedProcess:
    command = ["dvc", *args]
    log.debug("running %s", " ".join(command))
    try:
        result = subprocess.run(command, cwd=root, text=True, capture_output=capture)
    except FileNotFoundError:
        raise _dvc_not_on_path() from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip() if capture else "see the output above"
        raise _dvc_failed(command, result.returncode, detail)
    return result


def _dvc_not_on_path() -> Table3Error:
    return Table3Error("`dvc` is not on PATH: activate the project's environment")


def _dvc_failed(command: Sequence[str], returncode: int, detail: str) -> Table3Error:
    return Table3Error(f"`{' '.join(command)}` failed (exit {returncode}): {detail}")


def _git_lines(root: Path, *args: str) -> list[str]:
    """A git command's output lines; none when it fails (not a repository, a ref that does not exist)."""
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    return result.stdout.splitlines() if result.returncode == 0 else []


def check_experiments_kept(root: Path) -> None:
    """Refuse a shallow clone: there ``dvc exp run --queue`` trains every run and then keeps none of them (no
    experiment ref; ``dvc exp show`` lists nothing and says nothing; DVC 3.67, seen on a GPU machine and
    reproduced with ``git clone --depth 1``), so hours of training would be found only in MLflow."""
    if _git_lines(root, "rev-parse", "--is-shallow-repository") == ["true"]:
        raise Table3Error(f"{root} is a shallow git clone, where DVC keeps no experiments: every run would train and "
                          "then be missing from `dvc exp show`. Fetch the history first (`git fetch --unshallow`) "
                          "or clone without --depth. Nothing was queued.")


def experiment_baselines(root: Path) -> list[str]:
    """HEAD and every commit that has an experiment: finished ones (refs ``refs/exps/<sha[:2]>/<sha[2:]>/<name>``),
    queued and failed queue entries (their stash messages ``dvc-exp:<rev>:<baseline>:<name>``).

    Why not ``--all-commits``: it reads every commit's params and metrics, ~20-70 s at 329 commits here and growing
    with the history, and the runner reads the experiments before and after every batch."""
    baselines = dict.fromkeys(_git_lines(root, "rev-parse", "HEAD"))
    for ref in _git_lines(root, "for-each-ref", "--format=%(refname)", "refs/exps"):
        match = EXP_REF.match(ref)
        if match:
            baselines[match["prefix"] + match["rest"]] = None
    for stash in QUEUE_STASHES:
        for message in _git_lines(root, "log", "-g", "--format=%gs", stash, "--"):  # a stash never made: none
            match = STASH_MESSAGE.search(message)
            if match:
                baselines[match["baseline"]] = None
    return list(baselines)


def read_experiments(root: Path) -> dict[str, list[ExpRecord]]:
    """The experiments of every commit that has some (``experiment_baselines``): a table outlives commits."""
    revs = [arg for baseline in experiment_baselines(root) for arg in ("--rev", baseline)]
    result = _dvc(root, ["exp", "show", "--json", *revs], capture=True)
    try:
        data = json.loads(result.stdout or "[]")
    except json.JSONDecodeError as exc:
        raise Table3Error(f"`dvc exp show --json` printed something that is not JSON: {exc}") from None
    return parse_exp_show(data)


def matches(record: ExpRecord, run: PlannedRun) -> bool:
    """Whether an experiment belongs to ``run``'s table and row and trained with exactly its settings."""
    tracking = record.params.get("tracking") or {}
    if str(tracking.get("table3_id", "")) != run.table_id or str(tracking.get("table3_row", "")) != run.row:
        return False
    try:
        settings = params_from_dict({k: v for k, v in record.params.items() if k != "table3"}).result_settings()
    except ParamsError:
        return False  # params of an older layout that no longer validates: not this run
    return settings == run.settings()


@dataclass
class ExperimentPlan:
    """What the command does with each run that has no valid record."""

    to_queue: list[tuple[PlannedRun, bool]] = field(default_factory=list)  # (run, force)
    finished: dict[str, ExpRecord] = field(default_factory=dict)  # run name -> experiment to record
    pending: dict[str, ExpRecord] = field(default_factory=dict)


def plan_experiments(runs: Sequence[PlannedRun], existing: Mapping[str, Sequence[ExpRecord]],
                     resume: bool) -> ExperimentPlan:
    """Which runs to queue, and (``resume``) which finished or still-queued experiments to use.

    With ``resume`` a finished experiment of the run's name, table and settings becomes its record
    without training, and one still queued or running is waited for instead of queued twice. Without
    it everything runs again (``--force`` replaces a finished experiment of the same name), but a
    queued or running one is an error: it would run twice.
    """
    plan = ExperimentPlan()
    for run in runs:
        records = list(existing.get(run.name, ()))
        pending = next((r for r in records if r.pending), None)
        complete = next((r for r in records if r.complete and matches(r, run)), None)
        force = any(r.has_ref for r in records)
        if pending is not None:
            if not resume:
                raise Table3Error(
                    f"experiment {run.name} is already {pending.state} in the DVC queue: rerun with --resume "
                    f"to wait for it, or remove it (`dvc queue kill {run.name}` / `dvc queue remove {run.name}`)")
            plan.pending[run.name] = pending
        elif resume and complete is not None:
            plan.finished[run.name] = complete
        else:
            plan.to_queue.append((run, force))
    return plan


def queue_run(root: Path, run: PlannedRun, force: bool, threads: int = 0) -> None:
    result = _dvc(root, run.queue_command(force=force, threads=threads)[1:], capture=True)
    log.info("queued %s%s", run.name, " (replacing the existing one)" if force else "")
    log.debug("%s", result.stdout.strip())


def requeue_run(root: Path, run: PlannedRun, threads: int = 0) -> None:
    """Queue a run again after its entry failed or went stale (``--force`` only when a finished one exists)."""
    force = any(record.has_ref for record in read_experiments(root).get(run.name, ()))
    queue_run(root, run, force, threads)


def live_queue_workers(root: Path) -> list[int]:
    """PIDs of this repository's DVC queue workers that still run, read from dvc-task's process files (a
    passive look: ``dvc queue status`` would broadcast to the workers)."""
    pids = []
    for info_file in sorted((root / QUEUE_WORKER_INFO).glob("dvc-exp-worker-*.json")):
        try:
            info = json.loads(info_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # being rewritten by its worker: the next look reads it
        pid = info.get("pid")
        if isinstance(pid, int) and info.get("returncode") is None and _is_queue_worker(pid):
            pids.append(pid)
    return pids


def _is_queue_worker(pid: int) -> bool:
    """The PID runs and (where /proc says) is a queue worker, not a later process that reused the number."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        return b"queue-worker" in cmdline.read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc (macOS): trust the PID
    except OSError:
        return True


def wait_for_workers_to_exit(root: Path, timeout_s: float = WORKER_EXIT_WAIT_S) -> None:
    """Queue only after the last batch's workers are gone: one in its idle shutdown can take a new task and
    never run it. Workers still busy after ``timeout_s`` (someone's own ``dvc queue start``) are left be."""
    deadline = time.monotonic() + timeout_s
    while (pids := live_queue_workers(root)) and time.monotonic() < deadline:
        time.sleep(1.0)
    if pids:
        log.warning("DVC queue workers %s still run after %.0f s; queueing beside them",
                    ", ".join(map(str, pids)), timeout_s)


def run_queue(root: Path, jobs: int, requeue: Mapping[str, Callable[[], None]] | None = None,
              check_s: float = STALL_CHECK_S, retries: int = STALL_RETRIES) -> None:
    """Run every queued experiment in the foreground, its log streamed to the terminal.

    ``--run-all`` also runs experiments someone else queued in this repository.
    Its exit status says nothing about failures: the caller checks the results.
    When no worker is left while it still waits (a dead "Running" entry), the stale entries are marked
    failed (``dvc queue kill``), queued again through ``requeue`` (name -> callable) and run again, at most
    ``retries`` times. A stale entry not in ``requeue`` (left by an earlier, killed run: not this batch's) is
    only marked failed, with a warning; the caller's check of its own runs decides what happened to them.
    """
    if jobs < 1:
        raise Table3Error(f"--jobs must be >= 1, got {jobs}")
    for attempt in range(retries + 1):
        if not _run_all_watched(root, jobs, check_s):
            return
        if live_queue_workers(root):  # a worker came up after all (a slow start on a busy machine): follow it
            continue
        experiments = read_experiments(root)
        running = sorted(name for name, records in experiments.items()
                         if any(record.state == "running" for record in records))
        queued = any(record.state == "queued" for records in experiments.values() for record in records)
        if running:
            _dvc(root, ["queue", "kill", *running], capture=True)
        ours = [name for name in running if name in (requeue or {})]
        others = [name for name in running if name not in (requeue or {})]
        if others:
            log.warning("the DVC queue showed %s as running with no worker left (an earlier run that was killed?); "
                        "marked failed (`dvc queue kill`), not queued again: not a run of this batch",
                        ", ".join(others))
        if not ours:
            if queued:  # runs still waiting for a worker: follow the queue again
                continue
            return
        log.warning("the DVC queue stalled: no worker left while %s still showed as running; marked failed "
                    "(`dvc queue kill`), queued again and run again (retry %d of %d)",
                    ", ".join(ours), attempt + 1, retries)
        for name in ours:
            requeue[name]()  # type: ignore[index]
    raise Table3Error(f"the DVC queue stalled {retries + 1} times in a row (no worker left while experiments "
                      f"waited); see {root / QUEUE_WORKER_INFO}/dvc-exp-worker-1.out")


def _run_all_watched(root: Path, jobs: int, check_s: float) -> bool:
    """``dvc exp run --run-all``; True when it was stopped because no queue worker was left for
    ``STALL_CHECKS`` looks in a row (it would have waited for ever), False when it ended by itself."""
    command = ["dvc", "exp", "run", "--run-all", "--jobs", str(jobs)]
    log.debug("running %s", " ".join(command))
    try:
        process = subprocess.Popen(command, cwd=root)
    except FileNotFoundError:
        raise _dvc_not_on_path() from None
    idle_looks = 0
    try:
        while True:
            try:
                returncode = process.wait(timeout=check_s)
                break
            except subprocess.TimeoutExpired:
                idle_looks = 0 if live_queue_workers(root) else idle_looks + 1
                if idle_looks >= STALL_CHECKS:
                    process.terminate()
                    process.wait()
                    return True
    except BaseException:
        process.terminate()  # Ctrl+C: the experiments go on in their workers, as with DVC's own follower
        raise
    if returncode != 0:
        raise _dvc_failed(command, returncode, "see the output above")
    return False


def finished_experiment(run: PlannedRun, existing: Mapping[str, Sequence[ExpRecord]]) -> ExpRecord:
    """The run's finished experiment; a failed or missing one raises, naming its log."""
    records = list(existing.get(run.name, ()))
    complete = next((r for r in records if r.complete and matches(r, run)), None)
    if complete is not None:
        return complete
    failed = next((r for r in records if r.state == "failed"), None)
    if failed is not None:
        problem = f"{run.name} failed (log: {failed.log_file or f'dvc queue logs {run.name}'})"
    elif records and records[0].pending:
        problem = f"{run.name} is still {records[0].state}"
    elif records:
        problem = f"{run.name} finished without all of {', '.join(DEV_METRICS)} in {DEV_METRICS_FILE}"
    else:
        problem = f"{run.name} is not among the repository's experiments"
    raise Table3Error(problem)
