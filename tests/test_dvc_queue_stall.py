"""A DVC queue entry left "Running" by a worker that is gone (a killed session; a task taken by a worker in its
idle shutdown) made `dvc exp run --run-all`, and so `palbert table3`, wait for ever: once in a CI run of the
table3 end-to-end test. `run_queue` now sees that no worker is left, marks the entry failed, queues it again
and runs it. With the real DVC queue on a one-stage repository whose stage sleeps."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from palbert.table3.experiments import (QUEUE_WORKER_INFO, live_queue_workers, read_experiments, run_queue,
                                        wait_for_workers_to_exit)

pytestmark = pytest.mark.e2e

STAGE = """stages:
  nap:
    cmd: sleep ${nap} && echo ${nap} > out.txt
    params: [nap]
    outs: [out.txt]
"""


def run(repo: Path, *command: str) -> str:
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, " ".join(command) + "\n" + result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    repo = tmp_path / "repo"
    repo.mkdir()
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    (repo / "params.yaml").write_text("nap: 0\n")
    (repo / "dvc.yaml").write_text(STAGE)
    run(repo, "git", "add", "-A")
    run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one stage")
    return repo


def queue(repo: Path, name: str, nap: int) -> None:
    run(repo, "dvc", "exp", "run", "--queue", "-S", f"nap={nap}", "--name", name)


def leave_a_dead_running_entry(repo: Path, name: str) -> None:
    """Start the queue on a long nap, then kill its follower, its worker and the stage, as the end of a
    session does: the entry stays "running" with no worker."""
    queue(repo, name, 300)
    follower = subprocess.Popen(["dvc", "exp", "run", "--run-all", "--jobs", "1"], cwd=repo,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        workers = live_queue_workers(repo)
        naps = [p for w in workers for p in psutil.Process(w).children(recursive=True) if "sleep" in p.name()]
        if naps:
            break
        time.sleep(0.5)
    else:
        follower.kill()
        pytest.fail("the queued stage did not start within 120 s")
    for pid in workers:
        for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            process.kill()
    follower.kill()
    follower.wait()
    assert live_queue_workers(repo) == []
    assert any(record.state == "running" for record in read_experiments(repo)[name])


def test_live_queue_workers_reads_dvc_task_process_files(tmp_path: Path):
    info = tmp_path / QUEUE_WORKER_INFO
    info.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "30"])  # alive, but not a queue worker: a reused PID
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()
        (info / "dvc-exp-worker-1.json").write_text(json.dumps({"pid": dead.pid, "returncode": None}))
        (info / "dvc-exp-worker-2.json").write_text(json.dumps({"pid": sleeper.pid, "returncode": None}))
        (info / "dvc-exp-worker-3.json").write_text(json.dumps({"pid": os.getpid(), "returncode": 0}))
        (info / "dvc-exp-worker-4.json").write_text("{half written")
        assert live_queue_workers(tmp_path) == []
        started = time.monotonic()
        wait_for_workers_to_exit(tmp_path, timeout_s=5)
        assert time.monotonic() - started < 2
    finally:
        sleeper.kill()


def test_a_dead_running_entry_is_requeued_and_run_instead_of_waited_for(repo: Path, caplog):
    # an earlier, killed run's dead entry beside a run of this batch (seen: the twelfth stint's two lanes): this
    # batch's run is run, the dead entry marked failed and named, and the call does not stop with an error
    leave_a_dead_running_entry(repo, "stranded")
    queue(repo, "ours", 1)
    with caplog.at_level(logging.WARNING, logger="palbert.table3.experiments"):
        run_queue(repo, 1, check_s=2)
    experiments = read_experiments(repo)
    assert [record.state for record in experiments["stranded"]][0] == "failed"
    assert [record.state for record in experiments["ours"]][0] not in ("failed", "queued", "running")
    assert "stranded" in caplog.text and "not a run of this batch" in caplog.text
    caplog.clear()

    leave_a_dead_running_entry(repo, "stranded2")
    requeued = []

    def requeue() -> None:
        requeued.append("stranded2")
        queue(repo, "stranded2", 1)

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="palbert.table3.experiments"):
        run_queue(repo, 1, {"stranded2": requeue}, check_s=2)
    assert time.monotonic() - started < 120
    assert requeued == ["stranded2"]
    assert "the DVC queue stalled" in caplog.text and "stranded2" in caplog.text
    finished = [record for record in read_experiments(repo)["stranded2"] if record.state not in ("failed", "running")]
    assert finished and finished[0].params.get("nap") == 1
