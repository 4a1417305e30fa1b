"""Shared test helpers: the data mirror, temporary project copies, and a tiny BERT for fast training tests."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from palbert.stop_signals import STOP_SIGNALS

PROJECT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("PALBERT_DATA_MIRROR") or PROJECT.parent / "shared" / "data").resolve()
HAVE_MIRROR = (MIRROR / "cs224n").is_dir()
needs_mirror = pytest.mark.skipif(not HAVE_MIRROR, reason=f"data mirror {MIRROR} not present")


#: Held by the test files that start Ray (its clusters, and the Slurm test's Ray over a machine-wide Slurm) for
#: as long as they run: pytest-xdist runs test files side by side, and one machine runs one such file at a time.
RAY_TESTS_LOCK = Path(tempfile.gettempdir()) / "palbert-tests-ray.lock"


@pytest.fixture(scope="module")
def one_ray_test_file_at_a_time() -> Iterator[None]:
    from filelock import FileLock

    with FileLock(str(RAY_TESTS_LOCK)):
        yield


#: The order in which pytest-xdist hands out test files (``--dist loadfile --no-loadscope-reorder`` in pyproject):
#: the longest first, so that the two workers finish together instead of one running a long file alone at the
#: end. The Slurm test follows the long files: by then the Ray file, which holds the lock above, is done.
LONGEST_FILES_FIRST = ("test_table3_ray.py", "test_pipeline_e2e.py", "test_dvc_experiments.py", "test_distributed.py",
                       "test_run_faults.py", "test_store_faults.py", "test_mlflow_model.py", "test_tracking.py",
                       "test_readme_commands.py", "test_slurm.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """Tests that run a CLI entry point call ``setup_logging``, which points the root logger at that test's
    captured stderr; pytest closes that stream afterwards, so later log records would hit a closed file."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def copy_project(target: Path) -> Path:
    """The project's files as they are in the working tree (tracked and new, not ignored) in a fresh git repo."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=PROJECT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = PROJECT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    return target


@pytest.fixture(scope="session")
def shared_dvc_cache(tmp_path_factory) -> Path:
    """One DVC cache, run-cache included, for the session's tiny-BERT project copies (see ``use_dvc_cache``)."""
    return tmp_path_factory.mktemp("dvc-cache")


def use_dvc_cache(project: Path, cache: Path) -> Path:
    """Point a project copy at a shared DVC cache: a stage that an earlier copy ran with the same code, params and
    inputs (the data stages of the tiny-BERT copies) is checked out from DVC's run-cache instead of run again, as
    it would be in one repository. Queued experiments of the copy use that cache too (DVC sets it for them)."""
    (project / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {cache}\n", encoding="utf-8")
    return project


#: Every signal ``palbert.stop_signals.stop_on_signals`` may take over: Ctrl-C and its STOP_SIGNALS.
HANDLED_STOP_SIGNALS = (signal.SIGINT, *STOP_SIGNALS)


@pytest.fixture(autouse=True)
def _restore_mlflow_http_settings() -> Iterator[None]:
    """Opening a run on a server sets MLflow's HTTP bounds for the process (``BOUNDED_HTTP``): every test starts
    with the environment the session had."""
    from palbert.tracking.store import BOUNDED_HTTP

    saved = {key: os.environ.get(key) for key in BOUNDED_HTTP}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def restore_stop_signals() -> Iterator[None]:
    """A test that calls ``stop_on_signals`` in the pytest process gets SIGINT, SIGTERM and SIGHUP back as they were."""
    saved = {signum: signal.getsignal(signum) for signum in HANDLED_STOP_SIGNALS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def default_stop_signals() -> None:
    """``preexec_fn`` for a child that a test stops with a signal: a shell's background job (``cmd &``) starts with
    SIGINT ignored and ``nohup`` with SIGHUP ignored, and a child inherits that, so a test run that way would
    see its Ctrl-C or SIGHUP do nothing (seen: the run went on to the end)."""
    for signum in HANDLED_STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


def project_env(project: Path, **extra: str) -> dict[str, str]:
    """Environment for running dvc / stages in a project copy: its own code, the mirror, this venv."""
    env = {
        **os.environ,
        "PALBERT_DATA_MIRROR": str(MIRROR),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(project),
        "DVC_NO_ANALYTICS": "1",
        "PALBERT_PROJECT_ROOT": str(project),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def make_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer, 32-wide BERT with the embedded MiniLM tokenizer (same vocabulary): fast to train."""
    import torch
    from transformers import BertConfig, BertModel

    from palbert.model import load_tokenizer

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder)
    load_tokenizer("embedded").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def tiny_training_params(tiny_bert: Path, **sections):
    """Params for a few-step run of the tiny BERT (PAL size and heads scaled down to fit it)."""
    from palbert.config import Params, params_from_dict, params_to_dict

    raw = params_to_dict(Params(), include_table3=False)
    raw["data"].update(bad_rows="skip", subset=64, max_length=64)
    raw["model"].update(pretrained=str(tiny_bert), pal_size=8, pal_heads=2)
    raw["train"].update(epochs=2, steps_per_epoch=4, batch_size=4, cfimdb_batch_size=2, checkpoint_every=2,
                        log_every=1, precision="fp32", lr=1e-3)
    raw["evaluate"].update(batch_size=32)
    for section, values in sections.items():
        raw[section].update(values)
    return params_from_dict(raw)


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory, tiny_bert_dir) -> Path:
    """Mirror data fetched and prepared (first 64 rows of each split) with the tiny BERT's tokenizer."""
    if not HAVE_MIRROR:
        pytest.skip(f"data mirror {MIRROR} not present")
    from palbert.data.prepare import prepare_dataset
    from palbert.data.sources import fetch

    root = tmp_path_factory.mktemp("data")
    params = tiny_training_params(tiny_bert_dir)
    params = dataclasses.replace(params, data=dataclasses.replace(params.data, extra=["snli", "cfimdb"]))
    fetch(params, root / "raw", MIRROR)
    for dataset in ("sst", "quora", "sts", "snli", "cfimdb"):
        prepare_dataset(dataset, root / "raw", root / "prepared", params)
    return root / "prepared"


# ---------------------------------------------------------------------------------------------
# Real servers on 127.0.0.1 (mlflow server, mlflow models serve)

SERVER_START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str, log: Path | None = None) -> None:
    """Poll ``predicate`` every second; on timeout fail naming ``what`` (and the tail of ``log``, if given)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1.0)
    tail = f"; {log}:\n{log.read_text(errors='replace')[-3000:] if log.is_file() else '(no log)'}" if log else ""
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{tail}")


def wait_until_up(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it exits or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not up in {timeout_s}s: {log_path.read_text()[-3000:]}")
        time.sleep(0.3)


def stop_process_group(proc: subprocess.Popen) -> None:
    """End a server started with ``start_new_session=True``: its whole group (workers too), and only it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=15)


@contextlib.contextmanager
def running_mlflow_server(root: Path) -> Iterator[str]:
    """A real tracking server on a free loopback port, SQLite backend and artifacts in ``root``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        cwd=root, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_until_up(f"{url}/health", proc, root / "server.log", SERVER_START_TIMEOUT_S)
        # a cold server's first answer can take longer than a stage's 5 s start-up check on a busy machine
        urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                               timeout=SERVER_START_TIMEOUT_S).close()
        yield url
    finally:
        stop_process_group(proc)
        log_file.close()


def write_params(folder: Path, **sections: dict) -> Path:
    """The shipped params.yaml with some values replaced, in ``folder``."""
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text(encoding="utf-8"))
    for section, values in sections.items():
        raw[section].update(values)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path
