"""What can go wrong while a run works: each fault stops early, in one line that says what happened
and what to do, and leaves a state the next command recovers from."""

from __future__ import annotations

import pytest
import yaml

from conftest import PROJECT, tiny_training_params, write_params
from palbert.config import ParamsError
from palbert.params_file import load_params


# ------------------------------------------------------------------ what params.yaml alone can tell


@pytest.mark.parametrize("section, values, message", [
    ("train", {"beta1": 1}, "train.beta1: must be < 1, got 1.0"),
    ("train", {"beta2": 1.0}, "train.beta2: must be < 1, got 1.0"),
    ("model", {"hidden_dropout": 1.0}, "model.hidden_dropout: must be < 1, got 1.0"),
    ("model", {"encoder_dropout": 1}, "model.encoder_dropout: must be < 1, got 1.0"),
    ("tracking", {"uri": "foo://bar"}, "tracking.uri: 'foo://bar': MLflow has no tracking store for the scheme 'foo'"),
    ("tracking", {"experiment": " "}, "tracking.experiment: empty"),
])
def test_values_that_used_to_fail_late_fail_the_params_check(tmp_path, capsys, section, values, message):
    from palbert.cli import main

    path = write_params(tmp_path, **{section: values})
    with pytest.raises(ParamsError) as error:
        load_params(path)
    assert "\n" not in str(error.value) and str(error.value).startswith(f"{path}: {message}")
    assert main(["check-params", str(path)]) == 1


@pytest.mark.parametrize("uri", ["", "http://127.0.0.1:5000", "https://x.org", "sqlite:///mlflow.db", "file:/tmp/m",
                                 "postgresql+psycopg2://u@h/db", "databricks", "mlruns", "/abs/store"])
def test_every_store_mlflow_has_still_passes(tmp_path, uri):
    assert load_params(write_params(tmp_path, tracking={"uri": uri})).tracking.uri == uri


# ------------------------------------------------------------------ smaller faults


def test_a_params_file_that_is_a_list_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- data\n- model\n")
    with pytest.raises(ParamsError) as error:
        load_params(path)
    assert str(error.value).startswith(f"{path}: expected a mapping of sections")


def test_predict_input_that_is_a_folder_is_one_line(tmp_path, capsys):
    from palbert.cli import main

    assert main(["predict", "sst", "--input", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path}: is a folder; --input takes a text file" in err and "Traceback" not in err


@pytest.mark.parametrize("kind, message", [("dev_zero", "a symlink to /dev/zero, not a regular file"),
                                           ("folder", "a folder, not a file"),
                                           ("dangling", "which does not exist")])
def test_a_raw_file_that_is_no_file_is_named_not_called_missing(tmp_path, kind, message):
    from palbert.config import params_from_dict
    from palbert.data.prepare import prepare_dataset
    from palbert.data.readers import DataError
    from palbert.data.sources import fetch

    raw = tmp_path / "raw/sst/ids-sst-train.csv"
    raw.parent.mkdir(parents=True)
    {"dev_zero": lambda: raw.symlink_to("/dev/zero"), "folder": raw.mkdir,
     "dangling": lambda: raw.symlink_to(tmp_path / "gone.csv")}[kind]()
    with pytest.raises(DataError) as error:
        prepare_dataset("sst", tmp_path / "raw", tmp_path / "prepared", params_from_dict({}))
    assert str(error.value).startswith(f"{raw}: ") and message in str(error.value)
    # the same file in a data mirror
    mirror = tmp_path / "mirror/cs224n"
    mirror.mkdir(parents=True)
    (mirror / raw.name).symlink_to("/dev/zero")
    with pytest.raises(DataError) as error:
        fetch(params_from_dict({}), tmp_path / "raw2", tmp_path / "mirror")
    assert str(error.value).startswith(f"{mirror / raw.name}: a symlink to /dev/zero, not a regular file")


# ------------------------------------------------------------------ a diverging run stops at once


def _train_paths(root, prepared):
    from palbert.train.loop import TrainPaths

    return TrainPaths(project_root=root, prepared=prepared, checkpoints=root / "checkpoints",
                      best_model=root / "models/best", summary=root / "metrics/train.json",
                      plots=root / "metrics/plots/train")


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("PALBERT_PROJECT_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _runs(root):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{root}/mlflow.db").search_runs(
        [e.experiment_id for e in MlflowClient(f"sqlite:///{root}/mlflow.db").search_experiments()])


def test_a_diverging_run_stops_at_the_first_nan_and_fails_its_mlflow_run(workdir, tiny_bert_dir, tiny_prepared):
    import json

    from safetensors.torch import load_file

    from palbert.errors import TrainingDiverged
    from palbert.train.loop import train

    params = tiny_training_params(tiny_bert_dir, train={"lr": 1000.0, "epochs": 3, "steps_per_epoch": 20,
                                                        "checkpoint_every": 1})
    paths = _train_paths(workdir, tiny_prepared)
    with pytest.raises(TrainingDiverged) as error:
        train(params, paths)
    message = str(error.value)
    assert "\n" not in message and message.startswith("training diverged: ")
    assert " at step " in message and "the loss of task " in message and "train.lr = 1000 is far too high" in message
    state = json.loads((paths.checkpoints / "latest/state.json").read_text())
    assert f"the last good checkpoint (step {state['step']}) is kept" in message
    assert state["step"] < 60 and not state["complete"]  # stopped early, not after every step
    import torch

    assert all(torch.isfinite(t).all() for t in load_file(str(paths.checkpoints / "latest/model.safetensors")).values())
    assert not paths.best_model.exists() and not paths.summary.exists()
    (run,) = _runs(workdir)
    assert run.info.status == "FAILED"


# ------------------------------------------------------------------ SIGTERM is handled as Ctrl-C is


def _stage_project(root, tiny_bert_dir, tiny_prepared, **train):
    """A folder to run ``python -m stages.train`` in: tiny params, the tiny prepared data."""
    from palbert.config import params_to_dict

    params = tiny_training_params(tiny_bert_dir, train=train)
    (root / "params.yaml").write_text(yaml.safe_dump(params_to_dict(params, include_table3=False)))
    (root / "data").mkdir()
    (root / "data/prepared").symlink_to(tiny_prepared)
    return root


def _wait_for(predicate, proc, timeout_s=300.0):
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc.poll() is None, "the stage ended early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _signal_after_first_checkpoint(project, log, sig) -> str:
    """Run the train stage in ``project``, send ``sig`` once it has a checkpoint, expect exit 128 + sig; its log."""
    import subprocess
    import sys

    from conftest import default_stop_signals, project_env

    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=project, stdout=out,
                                stderr=subprocess.STDOUT, env=project_env(project, PYTHONPATH=str(PROJECT)),
                                preexec_fn=default_stop_signals)
        try:
            _wait_for(lambda: (project / "checkpoints/latest/state.json").is_file(), proc)
            proc.send_signal(sig)
            assert proc.wait(timeout=120) == 128 + sig
        finally:
            if proc.poll() is None:
                proc.kill()
    return log.read_text()


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_sigterm_keeps_the_checkpoint_says_so_and_marks_the_run_killed(tmp_path, tiny_bert_dir, tiny_prepared, name):
    import json
    import signal


    project = _stage_project(tmp_path, tiny_bert_dir, tiny_prepared, steps_per_epoch=100000, checkpoint_every=2)
    text = _signal_after_first_checkpoint(project, tmp_path / "stage.log", signal.Signals[name])
    assert f"stopped by {name} at step " in text and "the next run resumes from its checkpoint of step " in text
    assert f"ERROR palbert: stopped by {name}" in text and "Traceback" not in text
    state = json.loads((project / "checkpoints/latest/state.json").read_text())
    assert state["step"] >= 2 and not state["complete"]
    (run,) = _runs(project)
    assert run.info.run_id == state["mlflow_run_id"] and run.info.status == "KILLED"


def test_a_signal_set_to_be_ignored_stays_ignored(restore_stop_signals):
    """``nohup`` ignores SIGHUP so that a run outlives its terminal: the stage must not undo that."""
    import signal

    from palbert.stop_signals import stop_on_signals

    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    stop_on_signals()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL


def test_sigterm_to_the_launcher_stops_every_torchrun_rank_the_same_way(tmp_path, tiny_bert_dir, tiny_prepared):
    """``kill <pid>`` of the stage that launched torchrun: passed on, every rank stops as on Ctrl-C."""
    import json
    import signal

    from conftest import free_port

    project = _stage_project(tmp_path, tiny_bert_dir, tiny_prepared, steps_per_epoch=100000, checkpoint_every=2)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["distributed"].update(nproc_per_node=2, backend="gloo", rdzv_endpoint=f"localhost:{free_port()}")
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    text = _signal_after_first_checkpoint(project, tmp_path / "stage.log", signal.SIGTERM)
    assert text.count("stopped by SIGTERM at step ") == 2, text[-3000:]  # both ranks
    state = json.loads((project / "checkpoints/latest/state.json").read_text())
    (run,) = _runs(project)
    assert run.info.run_id == state["mlflow_run_id"] and run.info.status == "KILLED"


# ------------------------------------------------------------------ every place a run writes, checked first


def test_an_unwritable_checkpoints_folder_stops_the_run_before_any_work(workdir, tiny_bert_dir, tiny_prepared):
    import subprocess

    from palbert.errors import OutputUnwritable
    from palbert.train.loop import train
    from test_hardening import _make_read_only

    paths = _train_paths(workdir, tiny_prepared)
    paths.checkpoints.mkdir()
    if not _make_read_only(paths.checkpoints):
        pytest.skip("cannot make a folder read-only here (root without chattr)")
    try:
        with pytest.raises(OutputUnwritable) as error:
            train(tiny_training_params(tiny_bert_dir), paths)
    finally:
        subprocess.run(["chattr", "-i", str(paths.checkpoints)], capture_output=True)
        paths.checkpoints.chmod(0o755)
    assert str(error.value).startswith(f"{paths.checkpoints} (checkpoints): {paths.checkpoints} is not writable")
    assert not (workdir / "mlflow.db").exists()  # stopped before the MLflow run, the model and the first step


@pytest.mark.parametrize("where", ["models/best", "metrics/train.json", "metrics/plots/train"])
def test_a_file_where_an_output_folder_goes_stops_the_run_before_any_work(workdir, tiny_bert_dir, tiny_prepared, where):
    from palbert.errors import OutputUnwritable
    from palbert.train.loop import train

    blocker = workdir / where.split("/")[0]
    blocker.write_text("not a folder")
    with pytest.raises(OutputUnwritable) as error:
        train(tiny_training_params(tiny_bert_dir), _train_paths(workdir, tiny_prepared))
    assert f"{blocker} is a file, not a folder" in str(error.value)


@pytest.fixture()
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only): a disk that fills."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    yield mount
    import gc

    gc.collect()  # a failed torch.save can hold its file open until collected
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_too_little_disk_for_a_checkpoint_stops_the_run_before_the_first_step(workdir, tiny_bert_dir, tiny_prepared,
                                                                             small_disk):
    from palbert.errors import OutputUnwritable
    from palbert.train.loop import train

    paths = _train_paths(workdir, tiny_prepared)
    paths.checkpoints = small_disk / "checkpoints"
    with pytest.raises(OutputUnwritable) as error:
        train(tiny_training_params(tiny_bert_dir), paths)
    assert str(error.value).startswith(f"{paths.checkpoints}: 2 MiB free on its disk, a checkpoint of this model needs")
    assert not (workdir / "mlflow.db").exists()


def test_a_disk_that_fills_mid_save_keeps_the_last_checkpoint_and_says_so_in_one_line(small_disk, capsys):
    import errno
    import os

    import torch

    from palbert.atomic import atomic_dir
    from palbert.stage import run_stage

    target = small_disk / "latest"
    with atomic_dir(target) as folder:
        (folder / "state.json").write_text("{}")

    def save_too_much() -> int:
        with atomic_dir(target) as folder:
            torch.save({"adam": torch.zeros(2_000_000)}, folder / "optimizer.pt")  # 8 MB on a 2 MiB disk
        return 0

    with pytest.raises(SystemExit) as exited:
        run_stage(save_too_much)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert f"{target}: {os.strerror(errno.ENOSPC)}; the files written before are whole" in err and "Traceback" not in err
    assert [p.name for p in small_disk.iterdir()] == ["latest"] and (target / "state.json").read_text() == "{}"


def test_the_evaluate_stage_checks_its_outputs_before_loading_the_model(tmp_path):
    from palbert.config import params_from_dict
    from palbert.errors import OutputUnwritable
    from palbert.evaluate_stage import EvaluationPaths, evaluate_trained_model

    (tmp_path / "predictions").write_text("a file")
    paths = EvaluationPaths(project_root=tmp_path, model=tmp_path / "no-model", prepared=tmp_path / "prepared",
                            train_summary=tmp_path / "train.json", dev_metrics=tmp_path / "metrics/dev.json",
                            predictions=tmp_path / "predictions")
    with pytest.raises(OutputUnwritable, match="is a file, not a folder"):
        evaluate_trained_model(params_from_dict({}), paths)


# ------------------------------------------------------------------ two `dvc exp run` in one workspace

PAUSE = '''"""Wait until the test says go (a stage that holds DVC's lock while a second `dvc exp run` starts)."""
import os, pathlib, time
markers = pathlib.Path(os.environ["PAUSE_MARKERS"])
(markers / "waiting").write_text("x")
deadline = time.monotonic() + 300
while not (markers / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.2)
pathlib.Path("pause.txt").write_text("ok")
'''


def test_a_second_dvc_exp_run_in_the_workspace_cannot_swap_the_first_ones_settings(tmp_path, tiny_bert_dir,
                                                                                  tiny_prepared):
    """DVC writes the second run's -S into params.yaml before it fails on the lock; the first must not train, log
    or register with those settings, and its user is told what happened and how to run both side by side."""
    import shutil
    import subprocess

    from conftest import project_env
    from palbert.config import params_to_dict

    project, markers = tmp_path / "project", tmp_path / "markers"
    project.mkdir()
    markers.mkdir()
    shutil.copytree(PROJECT / "stages", project / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(tiny_prepared, project / "data/prepared")
    (project / "pause.py").write_text(PAUSE)
    params = tiny_training_params(tiny_bert_dir)
    (project / "params.yaml").write_text(yaml.safe_dump(params_to_dict(params, include_table3=False)))
    (project / ".gitignore").write_text("/checkpoints/\n/metrics/\n/mlflow.db\n/mlruns/\n__pycache__/\n")
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "pause": {"cmd": "python pause.py", "always_changed": True, "outs": [{"pause.txt": {"cache": False}}]},
        "train": {"cmd": "python -m stages.train", "deps": ["pause.txt", "data/prepared"], "params": ["train"],
                  "outs": ["models/best"]}}}))
    env = project_env(project, PYTHONPATH=str(PROJECT), PAUSE_MARKERS=str(markers))

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300)

    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "add", "-q", "data/prepared"],
                    ["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"]):
        assert run(*command).returncode == 0, command
    git_env = {**env, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@t"}
    log = tmp_path / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen(["dvc", "exp", "run", "-S", "train.seed=15"], cwd=project, env=git_env,
                                 stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_for(lambda: (markers / "waiting").exists(), first)
            second = subprocess.run(["dvc", "exp", "run", "-S", "train.seed=16"], cwd=project, env=git_env,
                                    capture_output=True, text=True, timeout=300)
            assert second.returncode != 0 and "rwlock" in second.stdout + second.stderr  # DVC's lock
            assert "seed: 16" in (project / "params.yaml").read_text()  # what DVC left behind
            (markers / "go").write_text("x")
            assert first.wait(timeout=300) != 0
        finally:
            if first.poll() is None:
                first.kill()
    text = log.read_text()
    line = next((line for line in text.splitlines() if "ERROR palbert" in line), text[-3000:])
    assert "another `dvc exp run` started in this workspace before this stage started" in line
    assert "dvc exp run --queue" in line and "dvc queue start" in line
    # nothing trained, logged or registered with the second run's settings
    assert not (project / "checkpoints").exists() and not (project / "mlflow.db").exists()

    # what the line advises: an experiment in a copy of its own (--temp, as queued ones) is left alone and trains
    temp = subprocess.run(["dvc", "exp", "run", "--temp", "-S", "train.seed=17"], cwd=project, env=git_env,
                          capture_output=True, text=True, timeout=600)
    assert temp.returncode == 0, (temp.stdout + temp.stderr)[-3000:]
    (run,) = _runs(project)
    assert run.data.params["train.seed"] == "17" and run.info.status == "FINISHED"


def test_only_a_dvc_exp_run_in_the_workspace_itself_is_watched(tmp_path, monkeypatch):
    from palbert.settings_guard import workspace_experiment

    (tmp_path / ".dvc/tmp/exps/run").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert workspace_experiment() == ("exp-1", tmp_path)
    copy = tmp_path / ".dvc/tmp/exps/tmpabc"  # a queued or --temp experiment: DVC_ROOT is the repository
    copy.mkdir()
    monkeypatch.chdir(copy)
    assert workspace_experiment() is None
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME")  # dvc repro
    assert workspace_experiment() is None


def test_params_yaml_changed_mid_training_stops_at_the_next_checkpoint_keeping_it(workdir, tiny_bert_dir,
                                                                                  tiny_prepared, monkeypatch):
    import json

    import palbert.train.loop as loop
    from palbert.config import params_to_dict
    from palbert.params_file import load_params
    from palbert.errors import SettingsChanged
    from palbert.settings_guard import SettingsGuard

    path = workdir / "params.yaml"
    raw = params_to_dict(tiny_training_params(tiny_bert_dir, train={"seed": 15, "checkpoint_every": 2}),
                         include_table3=False)
    path.write_text(yaml.safe_dump(raw))
    params = load_params(path)
    guard = SettingsGuard.start(path, params)
    real_step, calls = loop.train_step, {"n": 0}

    def another_exp_run_writes_params_at_step_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raw["train"]["seed"] = 16
            path.write_text(yaml.safe_dump(raw))
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", another_exp_run_writes_params_at_step_three)
    paths = _train_paths(workdir, tiny_prepared)
    with pytest.raises(SettingsChanged) as error:
        loop.train(params, paths, guard=guard)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path} changed while this stage ran (train.seed: 15 at the "
                                                      "start, 16 now)")
    assert "Stopped at step 4; its checkpoint of step 4 is kept" in message and "dvc queue start" in message
    state = json.loads((paths.checkpoints / "latest/state.json").read_text())
    assert state["step"] == 4 and state["fingerprint"] == loop.checkpoint.fingerprint(
        params, json.loads((tiny_prepared / "sst/meta.json").read_text()))  # resumable with the run's own settings
    (run,) = _runs(workdir)
    assert run.info.status == "FAILED" and run.data.params["train.seed"] == "15"
    assert not paths.best_model.exists()


# ------------------------------------------------------------------ crashes (power loss, SIGKILL) at the worst moment


def test_a_crash_between_the_renames_of_a_checkpoint_save_loses_nothing(tmp_path):
    from palbert.train import checkpoint

    root = tmp_path / "checkpoints"
    (root / ".latest.old").mkdir(parents=True)  # what atomic_dir leaves between its two renames
    (root / ".latest.old/state.json").write_text('{"format": 1, "fingerprint": "f", "step": 300}')
    (root / ".latest.x1y2.tmp").mkdir()  # the half-written new one
    (root / ".latest.x1y2.tmp/model.safetensors").write_bytes(b"half")
    assert checkpoint.resumable_state(root, "f")["step"] == 300
    assert sorted(p.name for p in root.iterdir()) == ["latest"]


def test_a_run_stopped_after_its_last_checkpoint_writes_its_outputs_without_training_again(
        workdir, tiny_bert_dir, tiny_prepared, monkeypatch):
    """A reboot while the final model is saved: the next run finishes the outputs from the finished checkpoint."""
    import json

    import palbert.train.loop as loop

    params = tiny_training_params(tiny_bert_dir, train={"epochs": 1})
    paths = _train_paths(workdir, tiny_prepared)
    real_write_plots = loop.write_plots

    def power_loss(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for the machine going down while the outputs are written

    monkeypatch.setattr(loop, "write_plots", power_loss)
    with pytest.raises(KeyboardInterrupt):
        loop.train(params, paths)
    state = json.loads((paths.checkpoints / "latest/state.json").read_text())
    assert state["complete"] and not state["outputs_written"]

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(loop, "write_plots", real_write_plots)
    monkeypatch.setattr(loop, "train_step", no_training)
    summary = loop.train(params, paths)
    assert summary["steps"] == 4 and summary["mlflow_run_id"] == state["mlflow_run_id"]
    assert (paths.best_model / "palbert_model.json").is_file() and paths.summary.is_file()
    assert json.loads((paths.checkpoints / "latest/state.json").read_text())["outputs_written"]
    (run,) = _runs(workdir)
    assert run.info.status == "FINISHED"


def test_out_of_memory_is_one_line_naming_the_step_and_what_to_lower(workdir, tiny_bert_dir, tiny_prepared,
                                                                     monkeypatch):
    import torch

    import palbert.train.loop as loop
    from palbert.errors import OutOfMemory

    real_step, calls = loop.train_step, {"n": 0}

    def out_of_memory_at_step_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", out_of_memory_at_step_three)
    with pytest.raises(OutOfMemory) as error:
        loop.train(tiny_training_params(tiny_bert_dir, train={"checkpoint_every": 2}), _train_paths(workdir, tiny_prepared))
    assert str(error.value).startswith("out of CPU memory at step 3 (task ")
    assert "lower train.batch_size (4) or data.max_length (64)" in str(error.value)
    assert "the checkpoint of step 2 is kept" in str(error.value)
    (run,) = _runs(workdir)
    assert run.info.status == "FAILED"
