"""Table 3's runs as Ray tasks: a private local Ray instance by default, or a cluster by address.

Ray schedules each run (``palbert.table3.task``) on a node with ``cpus_per_run`` CPUs and ``gpus_per_run``
(fractional) GPUs free, at most ``jobs`` at once, and runs a task again elsewhere when its worker or node dies
(``max_retries``; ``retry_exceptions=False``: a run that raises fails at once). The driver hands each finished
run's files to ``accept`` (the only writer of the table's folder) and prints a line per state change and a bar.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from palbert.table3.plan import PlannedRun, Table3Error
from palbert.table3.task import TAG_RUN_KEY, RunFailed, TaskSetup, new_run_key, run_task
from palbert.tracking.tags import TAG_TABLE3_RUN

log = logging.getLogger(__name__)

#: How often a run whose worker or node died is run again before the table gives up on it.
SYSTEM_RETRIES = 3
CONNECT_TIMEOUT_S = 5.0
#: The local instance's object store: the code bundle and the returned records are small.
LOCAL_OBJECT_STORE_BYTES = 200 * 1024**2


@dataclass
class ExecutorSettings:
    #: None: a private local Ray instance; "auto" or "HOST:PORT": an existing cluster.
    address: str | None = None
    jobs: int = 1
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    node_cache: str = "~/.cache/palbert/table3"
    mirror: str = ""
    #: Intra-op threads of each run (0: as many as ``cpus_per_run``).
    threads: int = 0
    #: Logical GPUs of the local instance (None: those Ray detects); lets fractional packing run on a CPU.
    local_gpus: float | None = None
    local_cpus: int | None = None
    max_retries: int = SYSTEM_RETRIES


@dataclass
class Outcome:
    finished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def git_bundle(root: Path) -> tuple[str, bytes]:
    """HEAD's commit and a git bundle of it: what every task checks out, so no node needs a clone."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode != 0:
        raise Table3Error(f"{root}: not a git repository with a commit ({head.stderr.strip()}): runs check out a commit")
    with tempfile.TemporaryDirectory(prefix="table3-bundle-") as tmp:
        path = Path(tmp) / "head.bundle"
        made = subprocess.run(["git", "bundle", "create", str(path), "HEAD"], cwd=root, capture_output=True, text=True)
        if made.returncode != 0:
            raise Table3Error(f"`git bundle create` failed in {root}: {made.stderr.strip().splitlines()[-1:]}")
        return head.stdout.strip(), path.read_bytes()


def _check_address(address: str) -> None:
    """A ``HOST:PORT`` that does not answer is one line now, not Ray's long retries."""
    host, _, port = address.rpartition(":")
    if address == "auto" or address.startswith("ray://"):
        return
    if not host or not port.isdigit():
        raise Table3Error(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise Table3Error(f"no Ray cluster answers at {address} ({exc.strerror or exc}): start one "
                          f"(`ray start --head`) or leave --address out to run on this machine") from None


class _LocalTokenNotice(logging.Filter):
    """Drops Ray's notice that a new local instance uses token authentication: the table's private instance always
    does, and the notice's advice (how to opt out) is not one a table's user needs on every command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


#: One instance, so that starting Ray again in the same process adds no second filter (``addFilter`` skips a known one).
_LOCAL_TOKEN_NOTICE = _LocalTokenNotice()


def start_ray(settings: ExecutorSettings) -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if settings.address:
        _check_address(settings.address)
        try:
            ray.init(address=settings.address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError) as exc:
            # a cluster started by `ray start` asks for a token, which a client sends only in token mode
            hint = ("; a cluster started with `ray start` asks for its token: set RAY_AUTH_MODE=token here (the "
                    "token in ~/.ray/auth_token or RAY_AUTH_TOKEN)") if os.environ.get("RAY_AUTH_MODE") != "token" else ""
            raise Table3Error(f"cannot join the Ray cluster at {settings.address}: {str(exc).splitlines()[0]}"
                              f"{hint}") from None
    else:
        # "local": a new private instance, never one that `ray start` or RAY_ADDRESS points at
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_LOCAL_TOKEN_NOTICE)
        ray.init(address="local", num_cpus=settings.local_cpus or os.cpu_count(), num_gpus=settings.local_gpus,
                 include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES)


def check_resources(settings: ExecutorSettings) -> None:
    """One line before any run when no node of the cluster could ever hold one run."""
    import ray

    need = {"CPU": settings.cpus_per_run, "GPU": settings.gpus_per_run}
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if any(all(node.get(name, 0.0) >= amount for name, amount in need.items() if amount) for node in nodes):
        return
    have = "; ".join(f"{node.get('CPU', 0):g} CPU, {node.get('GPU', 0):g} GPU" for node in nodes) or "no live node"
    where = settings.address or "this machine"
    raise Table3Error(f"no node of the Ray cluster at {where} has {settings.cpus_per_run:g} CPU(s) and "
                      f"{settings.gpus_per_run:g} GPU(s) for one run (nodes: {have}): lower --cpus-per-run / "
                      f"--gpus-per-run or add nodes")


def _attempt_counter():
    import ray

    @ray.remote(num_cpus=0)
    class Attempts:
        """Counts each run's attempts and passes the tasks' start events to the driver (it lives beside it)."""

        def __init__(self) -> None:
            self.counts: dict[str, int] = {}
            self.events: list[tuple[str, str, int]] = []

        def start(self, name: str, node: str) -> int:
            self.counts[name] = self.counts.get(name, 0) + 1
            self.events.append((name, node, self.counts[name]))
            return self.counts[name]

        def drain(self) -> list[tuple[str, str, int]]:
            out, self.events = self.events, []
            return out

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return Attempts.options(scheduling_strategy=here).remote()  # on the driver's node: it outlives any worker node


def _remote_run(run: PlannedRun, scale_name: str, bundle: bytes, setup: TaskSetup, attempts: Any,
                tags: dict[str, str]) -> dict[str, Any]:
    import ray

    from palbert.table3.task import node_name

    attempt = ray.get(attempts.start.remote(run.name, node_name()))
    return run_task(run, scale_name, bundle, setup, attempt, tags)


def task_options(settings: ExecutorSettings) -> dict[str, Any]:
    """Ray options of one run: its CPUs and (fractional) GPUs; run again when its worker or node dies, never when
    its own code raises."""
    return {"num_cpus": settings.cpus_per_run, "num_gpus": settings.gpus_per_run,
            "max_retries": settings.max_retries, "retry_exceptions": False}


class Progress:
    """A line per state change and a bar of runs done / total with the time left (tqdm's estimate)."""

    def __init__(self, total: int, done: int) -> None:
        from tqdm import tqdm

        # into a log file a redrawn bar is noise that may never show its last state: a plain line per run instead
        self.plain = not sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=done, unit="run", desc="table", dynamic_ncols=True, disable=self.plain,
                        bar_format="{desc}: {n}/{total} runs |{bar}| {elapsed} elapsed, {remaining} left")
        self.total, self.initial, self.done, self.started = total, done, done, time.monotonic()

    def line(self, text: str) -> None:
        self.bar.write(text)
        log.debug("%s", text)

    def step(self) -> None:
        self.bar.update(1)
        self.done += 1
        if self.plain:
            elapsed = time.monotonic() - self.started
            ran = self.done - self.initial
            left = elapsed / ran * (self.total - self.done) if ran else 0.0
            self.line(f"table: {self.done}/{self.total} runs, {self.bar.format_interval(elapsed)} elapsed, "
                      f"{self.bar.format_interval(left)} left")

    def close(self) -> None:
        self.bar.close()


def execute(runs: Sequence[PlannedRun], scale_name: str, root: Path, tracking_uri: str, settings: ExecutorSettings,
            accept: Callable[[PlannedRun, dict[str, bytes], dict[str, Any]], Any], total: int) -> Outcome:
    """Run ``runs`` as Ray tasks, ``settings.jobs`` at once (inside ``connected``); ``accept`` each finished one's
    record files."""
    import ray

    commit, bundle = git_bundle(root)
    progress = None
    try:
        threads = settings.threads or max(1, int(settings.cpus_per_run))
        setup = TaskSetup(commit=commit, tracking_uri=tracking_uri, node_cache=settings.node_cache,
                          mirror=settings.mirror, threads=threads)
        bundle_ref = ray.put(bundle)
        attempts = _attempt_counter()
        remote = ray.remote(_remote_run).options(**task_options(settings))
        progress = Progress(total, total - len(runs))
        outcome = Outcome()
        waiting = list(runs)
        in_flight: dict[Any, PlannedRun] = {}
        for run in runs:
            progress.line(f"{run.name}: queued")
        while waiting or in_flight:
            while waiting and len(in_flight) < settings.jobs:
                run = waiting.pop(0)
                tags = {TAG_RUN_KEY: new_run_key(), TAG_TABLE3_RUN: run.name}
                in_flight[remote.remote(run, scale_name, bundle_ref, setup, attempts, tags)] = run
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            for name, node, attempt in ray.get(attempts.drain.remote()):
                again = f" (attempt {attempt}: its earlier worker or node died)" if attempt > 1 else ""
                progress.line(f"{name}: running on {node}{again}")
            for ref in done:
                run = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
                    text = str(cause) if isinstance(cause, RunFailed) else f"{type(cause).__name__}: {cause}"
                    progress.line(f"{run.name}: failed: {text}")
                    outcome.failed.append(f"{run.name}: {text.splitlines()[0]}")
                    progress.step()
                    continue
                except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                        ray.exceptions.ObjectLostError) as exc:
                    progress.line(f"{run.name}: failed: lost {settings.max_retries + 1} times ({type(exc).__name__})")
                    outcome.failed.append(f"{run.name}: its worker or node died {settings.max_retries + 1} times")
                    progress.step()
                    continue
                try:
                    record = accept(run, result["files"], result)
                except Table3Error as exc:
                    progress.line(f"{run.name}: failed: its record was refused: {exc}")
                    outcome.failed.append(f"{run.name}: record refused ({exc})")
                else:
                    overall = record.dev["overall"] if hasattr(record, "dev") else float("nan")
                    resumed = f", resumed at step {result['resumed_at']}" if result.get("resumed_at") else ""
                    progress.line(f"{run.name}: finished on {result['node']}, dev overall {overall:.4f} "
                                  f"({result['wall_s']:.0f} s{resumed})")
                    outcome.finished.append(run.name)
                progress.step()
        return outcome
    finally:
        if progress is not None:
            progress.close()


@contextlib.contextmanager
def connected(settings: ExecutorSettings) -> Iterator[None]:
    """Ray started (or joined) and checked to fit one run, for the time of the block."""
    import ray

    start_ray(settings)
    try:
        check_resources(settings)
        yield
    finally:
        ray.shutdown()
