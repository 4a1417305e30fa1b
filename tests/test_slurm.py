"""``scripts/slurm_table3.sh`` submitted with ``sbatch`` to a real single-node Slurm cluster (slurmctld, slurmd and
munged from Debian's ``slurmctld``, ``slurmd`` and ``munge`` packages) started by the test on 127.0.0.1 with
private state, spool, ports and munge key: Ray starts over the allocation, ``palbert table3 --address`` runs a
tiny table on it, the record comes home to the submit folder and no Ray process of the job outlives it.

Skipped where those daemons are not installed or the test does not run as root (Slurm's daemons do)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from conftest import free_port, needs_mirror, wait_for
from test_table3_ray import SHRINK, project, ray_env  # noqa: F401 - project is a fixture

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel")
pytestmark = [pytest.mark.distributed, needs_mirror, pytest.mark.usefixtures("one_ray_test_file_at_a_time"),
              pytest.mark.skipif(
                  os.geteuid() != 0 or not all(shutil.which(name) for name in DAEMONS),
                  reason="needs root and Debian's slurmctld, slurmd and munge packages")]


def _stop(pid_file: Path) -> None:
    """SIGTERM, then SIGKILL after 15 s, to the daemon whose pid the file holds."""
    try:
        process = psutil.Process(int(pid_file.read_text().split()[0]))
        process.terminate()
        process.wait(timeout=15)
    except psutil.TimeoutExpired:
        process.kill()
    except (OSError, ValueError, IndexError, psutil.Error):
        pass


@pytest.fixture
def slurm(tmp_path: Path) -> Iterator[dict[str, str]]:
    """munged, slurmctld and slurmd on this host with their files under ``tmp_path``; the env that reaches them."""
    root = tmp_path / "slurm"
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(parents=True)
    key, sock = root / "munge" / "munge.key", root / "munge" / "socket"
    subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True, capture_output=True)
    key.chmod(0o600)
    subprocess.run(["munged", "--force", f"--key-file={key}", f"--socket={sock}", f"--pid-file={root}/munge/pid",
                    f"--log-file={root}/log/munged.log", f"--seed-file={root}/munge/seed"], check=True,
                   capture_output=True)
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=palberttest", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}", "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={sock}",
        "SlurmUser=root", "SlurmdUser=root", f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log", f"SlurmdLogFile={root}/log/slurmd.log",
        # no cgroups in a test: process groups track a job's processes
        "ProctrackType=proctrack/pgid", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU", "MpiDefault=none", "ReturnToService=2",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
        "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {**ray_env(), "SLURM_CONF": str(conf)}
    try:
        subprocess.run(["slurmctld", "-c"], env=env, check=True, capture_output=True)
        subprocess.run(["slurmd"], env=env, check=True, capture_output=True)
        wait_for(lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                                                 text=True).stdout, 60, "the node to be idle",
                 root / "log" / "slurmd.log")
        yield env
    finally:
        # the job's steps end (their `ray start --block` stops its Ray) before the daemons that track them go
        subprocess.run(["scancel", "--full", "--partition=test"], env=env, capture_output=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and subprocess.run(
                ["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip():
            time.sleep(1)
        for pid_file in (root / "slurmd.pid", root / "slurmctld.pid", root / "munge" / "pid"):
            _stop(pid_file)


def test_the_slurm_script_runs_a_table_on_ray_over_its_allocation(project: Path, slurm: dict[str, str]):  # noqa: F811
    port = free_port()
    out = project.parent / "slurm-job.out"
    env = {**slurm, "RAY_PORT": str(port), "CPUS_PER_RUN": "1", "JOBS": "2",
           "RAY_START_ARGS": "--object-store-memory=100000000"}
    done = subprocess.run(
        ["sbatch", "--wait", "--nodes=1", f"--cpus-per-task={os.cpu_count() or 1}", f"--output={out}",
         str(project / "scripts" / "slurm_table3.sh"), "--rows", "BP1", "--seeds", "1", "--table-id", "slurm",
         *SHRINK, "--node-cache", str(project.parent / "node-cache")],
        cwd=project, env=env, capture_output=True, text=True, timeout=1200)
    text = out.read_text(errors="replace") if out.is_file() else ""
    assert done.returncode == 0, (done.stdout + done.stderr + text)[-5000:]
    assert "t3-BP1-s1: finished on" in text, text[-5000:]
    folder = project / "results" / "table3" / "slurm"
    assert sorted(p.name for p in folder.iterdir()) == ["BP1-s1", "figures", "table.json", "table.md"]
    record = json.loads((folder / "BP1-s1" / "record.json").read_text())
    assert record["settings"]["train"]["steps_per_epoch"] == 2 and record["execution"]["attempt"] == 1

    def ray_of_the_job() -> list[str]:
        found = []
        for process in psutil.process_iter(["cmdline"]):
            line = " ".join(process.info["cmdline"] or [])
            if f":{port}" in line or f"port={port}" in line or f"port {port}" in line:
                found.append(line[:200])
        return found

    wait_for(lambda: not ray_of_the_job(), 60, f"the job's Ray processes (port {port}) to stop")
