"""A damaged checkpoint (bytes that are not UTF-8, not JSON, not an object, a field of the wrong type, weights or
optimizer state that do not load) is one warning and a fresh start, never a traceback: each case damages a copy of
a real checkpoint and runs the real set-up."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_training_params

CHECKPOINT_LOGGER = "palbert.train.checkpoint"


def _paths(root: Path, prepared: Path):
    from palbert.train.loop import TrainPaths

    return TrainPaths(project_root=root, prepared=prepared, checkpoints=root / "checkpoints",
                      best_model=root / "models/best", summary=root / "metrics/train.json",
                      plots=root / "metrics/plots/train")


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, tiny_bert_dir, tiny_prepared) -> Path:
    """A tiny run stopped by Ctrl-C after its checkpoint of step 2: every case damages a copy of its checkpoint."""
    import palbert.train.loop as loop

    root = tmp_path_factory.mktemp("stopped")
    real_step, calls = loop.train_step, {"n": 0}

    def ctrl_c_at_step_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PALBERT_PROJECT_ROOT", str(root))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setattr(loop, "train_step", ctrl_c_at_step_three)
        with pytest.raises(KeyboardInterrupt):
            loop.train(_params(tiny_bert_dir), _paths(root, tiny_prepared))
    assert json.loads((root / "checkpoints/latest/state.json").read_text())["step"] == 2
    return root


def _params(tiny_bert_dir: Path):
    return tiny_training_params(tiny_bert_dir, train={"checkpoint_every": 2})


@pytest.fixture()
def damaged_copy(stopped_run, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PALBERT_PROJECT_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copytree(stopped_run / "checkpoints", tmp_path / "checkpoints")
    return tmp_path


def _edit_state(**changes):
    def edit(folder: Path) -> None:
        state = json.loads((folder / "state.json").read_text())
        state.update(changes)
        (folder / "state.json").write_text(json.dumps(state))
    return edit


def _cut_short(name: str):
    def cut(folder: Path) -> None:
        (folder / name).write_bytes((folder / name).read_bytes()[:1000])
    return cut


def _bytes(name: str, data: bytes):
    return lambda folder: (folder / name).write_bytes(data)


def _torch_file(name: str, obj):
    return lambda folder: torch.save(obj, folder / name)


DAMAGES = {
    # file, what is written, what the warning says
    "state.json not UTF-8": ("state.json", _bytes("state.json", b'{"step": 10, "fingerprint": "\xff"}\n'),
                             "can't decode byte 0xff"),
    "state.json a list": ("state.json", _bytes("state.json", b"[]\n"), "a JSON list, not an object"),
    "state.json not JSON": ("state.json", _bytes("state.json", b'{"step": 1'), "Expecting"),
    "step a string": ("state.json", _edit_state(step="ten"), "field 'step' is \"ten\", not int"),
    "streams a list": ("state.json", _edit_state(streams=[1]), "field 'streams' is [1], not dict[str, dict]"),
    "complete a string": ("state.json", _edit_state(complete="no"), "field 'complete' is \"no\", not bool"),
    "an unknown field": ("state.json", _edit_state(stepp=2), "unknown field 'stepp'"),
    "weights cut short": ("model.safetensors", _cut_short("model.safetensors"), "SafetensorError"),
    "weights random bytes": ("model.safetensors", _bytes("model.safetensors", bytes(range(256)) * 8), "Error"),
    "weights missing": ("model.safetensors", lambda folder: (folder / "model.safetensors").unlink(), "No such file"),
    "optimizer cut short": ("optimizer.pt", _cut_short("optimizer.pt"), "Error"),
    "optimizer random bytes": ("optimizer.pt", _bytes("optimizer.pt", bytes(range(256)) * 8), "Error"),
    "optimizer another object": ("optimizer.pt", _torch_file("optimizer.pt", {"optimizer": 1}),
                                 "not the optimizer, scheduler and RNG states"),
    "RNG states not tensors": ("optimizer.pt", _torch_file("optimizer.pt", {"optimizer": {}, "scheduler": {},
                                                                              "rng": [1]}),
                               "not the optimizer, scheduler and RNG states"),
}


@pytest.mark.parametrize("case", list(DAMAGES))
def test_a_damaged_checkpoint_file_is_one_warning_and_a_fresh_start(damaged_copy, tiny_bert_dir, tiny_prepared,
                                                                    caplog, case):
    from palbert.train.loop import set_up

    name, damage, reason = DAMAGES[case]
    folder = damaged_copy / "checkpoints/latest"
    damage(folder)
    with caplog.at_level(logging.INFO, logger=CHECKPOINT_LOGGER):
        run = set_up(_params(tiny_bert_dir), _paths(damaged_copy, tiny_prepared), None)
    assert run.state.step == 0 and run.state.mlflow_run_id is None
    (warning,) = [r.getMessage() for r in caplog.records if r.name == CHECKPOINT_LOGGER and r.levelname == "WARNING"]
    assert warning.startswith(f"ignoring the damaged checkpoint {folder / name} (") and reason in warning, warning
    assert warning.endswith("starting afresh; this run's first checkpoint replaces it") and "\n" not in warning


def test_the_undamaged_copy_resumes(damaged_copy, tiny_bert_dir, tiny_prepared, caplog):
    """What the cases above damage resumes when left whole: the fresh start comes from the damage alone."""
    from palbert.train.loop import set_up

    with caplog.at_level(logging.WARNING, logger=CHECKPOINT_LOGGER):
        run = set_up(_params(tiny_bert_dir), _paths(damaged_copy, tiny_prepared), None)
    assert run.state.step == 2 and run.state.mlflow_run_id
    assert not [r for r in caplog.records if r.name == CHECKPOINT_LOGGER]


def test_a_run_on_a_checkpoint_that_is_not_utf8_trains_afresh_and_replaces_it(damaged_copy, tiny_bert_dir,
                                                                               tiny_prepared):
    from palbert.train.loop import train

    state_file = damaged_copy / "checkpoints/latest/state.json"
    state_file.write_bytes(b'{"step": 10, "fingerprint": "\xff"}\n')
    summary = train(_params(tiny_bert_dir), _paths(damaged_copy, tiny_prepared))
    assert summary["steps"] == 8
    state = json.loads(state_file.read_text(encoding="utf-8"))
    assert state["step"] == 8 and state["complete"] and state["outputs_written"]


def test_a_failed_multi_process_job_says_whether_a_checkpoint_is_left(tmp_path):
    """The torchrun launcher's failure line: a checkpoint to resume from only where one is left unfinished."""
    from palbert.train.checkpoint import kept_after_failure

    assert kept_after_failure(tmp_path).startswith("no checkpoint of it was written")
    state = tmp_path / "latest" / "state.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"step": 7, "complete": False}))
    assert kept_after_failure(tmp_path).startswith("its checkpoint of step 7 is kept")
    state.write_text(json.dumps({"step": 9, "complete": True}))  # a finished run's: nothing of the failed job
    assert kept_after_failure(tmp_path).startswith("no checkpoint of it was written")
