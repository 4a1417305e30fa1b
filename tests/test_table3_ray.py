"""``palbert table3`` through Ray on real local clusters: a tiny table on two nodes, a node removed mid-run, the
driver killed and run again, a run that fails, a dead address, too few resources, fractional GPUs packed, and a
run through Ray equal to the same run made by hand with ``dvc exp run``.

Each cluster is a head and worker nodes on 127.0.0.1 (``ray.cluster_utils.Cluster``) with private temp dirs, a small
object store, no dashboard and usage stats off, stopped by the test that starts it. Runs train the tiny random BERT
for 2 steps on 32 rows of the mirror's data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest
import yaml

from conftest import MIRROR, copy_project, free_port, needs_mirror, tiny_training_params, wait_for
from palbert.config import params_to_dict

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("one_ray_test_file_at_a_time")]

OBJECT_STORE_BYTES = 80 * 1024**2
SHRINK = ["--epochs", "1", "--steps-per-epoch", "2", "--subset", "32", "--resamples", "50"]


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=project, check=True,
                   capture_output=True)


def head_commit(project: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True,
                          check=True).stdout.strip()


def ray_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "PALBERT_PROJECT_ROOT", "DVC_ROOT", "RAY_ADDRESS", "PYTHONPATH")}
    env.update(RAY_USAGE_STATS_ENABLED="0", PALBERT_DATA_MIRROR=str(MIRROR), DVC_NO_ANALYTICS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return env


@pytest.fixture(scope="module")
def shared_dvc_cache(tmp_path_factory) -> Path:
    """One DVC cache for every test's node cache: the data stages' outputs (same code, same params) are prepared
    by the first run of the file and restored from DVC's run-cache by the others, as on a node that ran before."""
    return tmp_path_factory.mktemp("dvc-cache")


@pytest.fixture
def project(tmp_path: Path, tiny_bert_dir: Path, shared_dvc_cache: Path) -> Path:
    """A committed project copy whose params.yaml trains the tiny BERT, logging to its own MLflow store; its node
    cache (``../node-cache``) shares the file's DVC cache."""
    (tmp_path / "node-cache").mkdir()
    (tmp_path / "node-cache" / "dvc-cache").symlink_to(shared_dvc_cache, target_is_directory=True)
    project = copy_project(tmp_path / "project")
    params = params_to_dict(tiny_training_params(tiny_bert_dir, data={"subset": 32}), include_table3=False)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    catalogue = yaml.safe_load((project / "table3.yaml").read_text())
    rows = catalogue["table3"]["rows"]
    rows.append({**rows[0], "id": "broken", "name": "a run whose encoder is missing",
                 "overrides": {**rows[0]["overrides"], "model.pretrained": str(tmp_path / "no-such-bert")}})
    (project / "table3.yaml").write_text(yaml.safe_dump(catalogue, sort_keys=False))
    git(project, "add", "-A")
    git(project, "commit", "-qm", "tiny")
    return project


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """Ray's session folders hold unix sockets, whose paths must stay under ~100 characters."""
    folder = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def add_node(cluster, tries: int = 3) -> None:
    """A worker node of one CPU. Ray gives a raylet 30 s to register, which a machine busy with other work can
    miss: such a start is tried again."""
    for attempt in range(tries):
        try:
            cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE_BYTES)
            cluster.wait_for_nodes()
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for a slow raylet start
            if "timed out during startup" not in str(exc) or attempt == tries - 1:
                raise


@pytest.fixture
def cluster(short_tmp: Path, monkeypatch) -> Iterator:
    """A head (no CPU for runs: every run goes to a worker node) and one worker node of one CPU."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    made = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": OBJECT_STORE_BYTES, "include_dashboard": False,
        "temp_dir": str(short_tmp / "ray")})
    try:
        add_node(made)
        yield made
    finally:
        made.shutdown()


def table3(project: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "palbert.cli", "table3", *SHRINK, *args, "--node-cache",
            str(project.parent / "node-cache")]


def run_table3(project: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(table3(project, *args), cwd=project, env=ray_env(), capture_output=True, text=True,
                          timeout=timeout)


def stage_processes(project: Path) -> list[psutil.Process]:
    """Processes still running in the node cache's run workspaces (dvc and its stages)."""
    work = str(project.parent / "node-cache" / "work")
    found = []
    for process in psutil.process_iter(["cwd", "cmdline"]):
        try:
            if (process.info["cwd"] or "").startswith(work):
                found.append(process)
        except (psutil.Error, TypeError):
            continue
    return found


def mlflow_runs(project: Path, table_id: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("palbert")
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.table3_id = '{table_id}'")


# --------------------------------------------------------------------------------------------
# Before any run: one line
# --------------------------------------------------------------------------------------------


def test_a_dead_address_is_one_line_before_any_run(project: Path):
    port = free_port()
    result = run_table3(project, "--rows", "0", "--seeds", "1", "--table-id", "dead", "--address", f"127.0.0.1:{port}",
                        timeout=300)
    assert result.returncode == 1
    assert f"no Ray cluster answers at 127.0.0.1:{port} (Connection refused)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (project / "results" / "table3" / "dead").exists()


def test_too_few_resources_is_one_line_before_any_run(project: Path):
    result = run_table3(project, "--rows", "0", "--seeds", "1", "--table-id", "short", "--gpus-per-run", "1",
                        timeout=300)
    assert result.returncode == 1, result.stderr
    assert re.search(r"no node of the Ray cluster at this machine has 1 CPU\(s\) and 1 GPU\(s\) for one run", result.stderr)
    assert "runs |" not in result.stderr  # no bar: nothing started
    assert not (project.parent / "node-cache" / "logs").exists()


def test_fractional_gpus_pack_eight_runs_on_one_logical_gpu(short_tmp: Path, monkeypatch):
    """``--gpus-per-run 0.125`` on a head with one (logical) GPU: the executor's task options let 8 run at once."""
    import ray

    from palbert.table3.executor import ExecutorSettings, task_options

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=8, num_gpus=1, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
             _temp_dir=str(short_tmp / "ray"), log_to_driver=False)
    try:
        options = task_options(ExecutorSettings(cpus_per_run=0.25, gpus_per_run=0.125))
        assert options["num_gpus"] == 0.125 and options["retry_exceptions"] is False and options["max_retries"] >= 1

        @ray.remote(num_cpus=0)
        class Arrivals:
            def __init__(self) -> None:
                self.count = 0

            def arrive(self) -> int:
                self.count += 1
                return self.count

            def seen(self) -> int:
                return self.count

        arrivals = Arrivals.remote()

        @ray.remote
        def hold(arrivals) -> tuple[float, float, list, bool]:
            """Wait until 8 runs hold the GPU at once (workers start slowly on a busy machine), then let go."""
            started = time.time()
            ray.get(arrivals.arrive.remote())
            deadline = time.monotonic() + 240
            while ray.get(arrivals.seen.remote()) < 8 and time.monotonic() < deadline:
                time.sleep(0.2)
            return started, time.time(), ray.get_runtime_context().get_accelerator_ids()["GPU"], \
                ray.get(arrivals.seen.remote()) >= 8

        spans = ray.get([hold.options(**options).remote(arrivals) for _ in range(9)])
        starts = sorted(start for start, _, _, _ in spans)
        first_end = min(end for _, end, _, _ in spans)
        assert all(saw for _, _, _, saw in spans), "8 runs never held the GPU at once"
        assert starts[8] >= first_end - 0.5, "a ninth fitted beside them: the GPU was not the limit"
        assert all(gpus == ["0"] for _, _, gpus, _ in spans)
    finally:
        ray.shutdown()


def test_the_local_instance_is_private_whatever_ray_address_or_ray_start_say(monkeypatch):
    """Without --address the runs go to a new private instance, never to the cluster RAY_ADDRESS (or the last
    `ray start` on this machine) points at: here nothing answers there, and the instance starts all the same."""
    import ray

    from palbert.table3.executor import ExecutorSettings, connected

    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    with connected(ExecutorSettings(local_cpus=1)):
        assert ray.cluster_resources()["CPU"] == 1 and len(ray.nodes()) == 1
    assert not ray.is_initialized()


# --------------------------------------------------------------------------------------------
# Runs on a real cluster
# --------------------------------------------------------------------------------------------


def assert_a_run_by_hand_makes_the_same_record(project: Path, table_id: str, row_id: str, seed: int,
                                               out: Path, shared_dvc_cache: Path) -> None:
    """The same row, seed, scale and thread count at the same commit: the record Ray returned and the record of a
    plain `dvc exp run` in the workspace hold the same dev scores and the same predictions, byte for byte. The
    workspace uses the node's DVC cache too (its data stages come from the run-cache)."""
    from palbert.params_file import TABLE3_FILE, load_table3
    from palbert.table3.plan import committed_params, plan_runs
    from palbert.table3.records import record_from_workspace

    through_ray = json.loads((project / "results" / "table3" / table_id / f"{row_id}-s{seed}" / "record.json")
                             .read_text())
    params = load_table3(project / TABLE3_FILE, committed_params(project))
    (run,) = plan_runs(params, [row for row in params.table3.rows if row.id == row_id], [seed], table_id,
                       through_ray["scale"]["overrides"])
    (project / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {shared_dvc_cache}\n")  # git-ignored
    by_hand = [*run.exp_run_command(), "-S", "train.threads=1"]  # what each Ray run sets: --cpus-per-run's threads
    done = subprocess.run(by_hand, cwd=project, env={**ray_env(), "PYTHONPATH": str(project)}, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    head = head_commit(project)
    record_from_workspace(project, out, run, through_ray["scale"]["name"], code_commit=head,
                          execution={"node": "by hand", "attempt": 1})
    made_by_hand = json.loads((out / "record.json").read_text())

    assert through_ray["code_commit"] == made_by_hand["code_commit"] == head
    assert made_by_hand["settings"] == through_ray["settings"]
    assert made_by_hand["dev"] == through_ray["dev"]
    predictions = {name: digest for name, digest in through_ray["files"].items() if name.startswith("predictions/")}
    assert len(predictions) >= 3
    assert {name: made_by_hand["files"][name] for name in predictions} == predictions


@needs_mirror
def test_a_tiny_table_on_two_nodes_and_a_failing_run(project: Path, cluster, tmp_path: Path,
                                                        shared_dvc_cache: Path):
    """Two good runs and one whose stage fails: the failure is reported at once with its log tail and not run
    again; the good runs' records land, checked, in the table; MLflow has one finished run each, tagged; and a
    plain `dvc exp run` of one of them at the same commit makes the same record."""
    add_node(cluster)
    result = run_table3(project, "--rows", "0,BP1,broken", "--seeds", "1", "--table-id", "two", "--jobs", "3",
                        "--address", cluster.address)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out[-4000:]
    assert "t3-broken-s1: failed: t3-broken-s1 failed on" in out and "no-such-bert" in out
    assert "attempt 2" not in out  # an error in the run is not a lost node
    assert re.search(r"t3-0-s1: finished on \S+, dev overall 0\.\d{4}", out)
    assert "3/3 runs" in out
    folder = project / "results" / "table3" / "two"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["0-s1", "BP1-s1"]
    record = json.loads((folder / "BP1-s1" / "record.json").read_text())
    head = head_commit(project)
    assert record["code_commit"] == head and record["execution"]["attempt"] == 1
    assert record["settings"]["train"]["steps_per_epoch"] == 2 and record["settings"]["model"]["pals"] is True
    runs = [run for run in mlflow_runs(project, "two") if run.data.tags["table3_row"] != "broken"]
    assert sorted((r.data.tags["table3_row"], r.data.tags["seed"], r.data.tags["attempt"], r.info.status)
                  for r in runs) == [("0", "1", "1", "FINISHED"), ("BP1", "1", "1", "FINISHED")]
    assert all(run.data.tags["node"] for run in runs)
    assert not stage_processes(project)
    assert_a_run_by_hand_makes_the_same_record(project, "two", "BP1", 1, tmp_path / "by-hand", shared_dvc_cache)


@needs_mirror
def test_a_node_removed_mid_run_runs_it_again_elsewhere_with_one_record(project: Path, cluster):
    """The run's node goes mid-training: Ray runs it again on the node added after, which sees the same node cache
    (one machine, as a shared disk would on a cluster), so it resumes from the lost node's checkpoint in the same
    MLflow run (row BP1: its 300 steps outlast the wait). One record, of attempt 2; one finished MLflow run, tagged with attempt 2 and where it resumed."""
    command = table3(project, "--rows", "BP1", "--seeds", "1", "--table-id", "lost", "--address", cluster.address,
                     "--steps-per-epoch", "300")
    log_dir = project.parent / "node-cache" / "logs" / "lost"
    state = project.parent / "node-cache" / "work" / "lost" / "t3-BP1-s1" / "checkpoints" / "latest" / "state.json"
    with open(project.parent / "driver.out", "w+") as out:
        driver = subprocess.Popen(command, cwd=project, env=ray_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: state.is_file(), 600, "the first attempt's first checkpoint")
            (worker,) = [node for node in cluster.worker_nodes]
            cluster.remove_node(worker, allow_graceful=False)
            wait_for(lambda: not stage_processes(project), 60, "the lost node's stages to stop")
            stopped_at = json.loads(state.read_text())["step"]
            add_node(cluster)
            assert driver.wait(timeout=900) == 0
        finally:
            if driver.poll() is None:
                driver.kill()
        out.seek(0)
        text = out.read()
    assert "t3-BP1-s1: running on" in text and "(attempt 2: its earlier worker or node died)" in text, text[-4000:]
    assert 0 < stopped_at < 300
    assert f"resuming at step {stopped_at} of 300" in (log_dir / "t3-BP1-s1.attempt2.log").read_text(errors="replace")
    folder = project / "results" / "table3" / "lost"
    assert sorted(p.name for p in folder.iterdir()) == ["BP1-s1", "figures", "table.json", "table.md"]
    record = json.loads((folder / "BP1-s1" / "record.json").read_text())
    assert record["execution"]["attempt"] == 2
    (run,) = mlflow_runs(project, "lost")
    assert run.info.status == "FINISHED" and run.info.run_id == record["mlflow_run_id"]
    assert run.data.tags["attempt"] == "2" and run.data.tags["table3_resumed_at_step"] == str(stopped_at)
    assert "retried" not in run.data.tags


def test_a_killed_driver_leaves_no_run_and_the_same_command_resumes_only_the_missing(project: Path):
    """SIGTERM to the driver's process group (`kill -- -PGID`, a closed terminal's hang-up, a scheduler's cancel):
    the driver, its local Ray instance and the Ray workers go, and so does the run that was training. Its 300 steps
    take longer than the wait below, so a training left running would be found by it. The same command again keeps
    the finished record and resumes the other run from its checkpoint, in the same MLflow run."""
    command = table3(project, "--rows", "0,BP1", "--seeds", "1", "--table-id", "killed", "--steps-per-epoch", "300")
    folder = project / "results" / "table3" / "killed"
    second = project.parent / "node-cache" / "logs" / "killed" / "t3-BP1-s1.attempt1.log"
    checkpoint = project.parent / "node-cache" / "work" / "killed" / "t3-BP1-s1" / "checkpoints" / "latest"
    driver = subprocess.Popen(command, cwd=project, env=ray_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: (folder / "0-s1" / "record.json").is_file() and second.is_file()
                 and "training 300 steps" in second.read_text(errors="replace")
                 and (checkpoint / "state.json").is_file(), 600, "the second run's training and its checkpoint")
        os.killpg(driver.pid, signal.SIGTERM)
        driver.wait(timeout=60)
        wait_for(lambda: not stage_processes(project), 30, "the runs to stop with their driver")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert "trained 300 steps" not in second.read_text(errors="replace")
    assert not (folder / "BP1-s1").exists()
    stopped_at = json.loads((checkpoint / "state.json").read_text())["step"]
    assert 0 < stopped_at < 300
    again = run_table3(project, "--rows", "0,BP1", "--seeds", "1", "--table-id", "killed", "--steps-per-epoch", "300")
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    assert "Token authentication" not in out  # Ray's notice about the private instance is not the user's business
    assert "t3-0-s1: kept (record of overall" in out and "t3-0-s1: queued" not in out
    assert "t3-BP1-s1: queued" in out and "2/2 runs" in out
    assert re.search(rf"t3-BP1-s1: finished on \S+, dev overall 0\.\d{{4}} \(\d+ s, resumed at step {stopped_at}\)", out)
    assert f"resuming at step {stopped_at} of 300" in second.read_text(errors="replace")
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "0-s1", "BP1-s1", "figures", "table.json", "table.md"]
    assert not checkpoint.parent.parent.exists()  # a run's workspace goes once its record is made
    (resumed,) = [run for run in mlflow_runs(project, "killed") if run.data.tags["table3_row"] == "BP1"]
    assert resumed.info.status == "FINISHED" and resumed.data.tags["table3_resumed_at_step"] == str(stopped_at)
    record = json.loads((folder / "BP1-s1" / "record.json").read_text())
    assert record["mlflow_run_id"] == resumed.info.run_id
