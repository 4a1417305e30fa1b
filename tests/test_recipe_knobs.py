"""The opt-in recipe knobs (``train.ema_decay``, ``rdrop_weight``, ``head_lr_multiplier``, ``layer_lr_decay``,
``label_smoothing``): each off is bitwise the training without it, and each on changes what it should and
nothing else. Tiny random BERTs; the whole-run checks use the tiny mirror subset."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import palbert.train.loop as loop
from conftest import tiny_training_params
from palbert.config import OPT_IN_OFF, ParamsError, Params, TrainParams, params_from_dict, params_to_dict
from palbert.train.averaging import WeightAverage, make_weight_average
from palbert.train.losses import rdrop_loss, task_loss
from palbert.train.schedule import make_scheduler, parameter_groups
from test_model import LAYERS, task_batch, tiny_model
from test_train_loop import _paths

TASKS = ("sst", "para", "sts")


# ---- params ---------------------------------------------------------------------------------------------------


def test_a_params_file_without_the_knobs_has_them_off_and_the_same_result_settings():
    raw = params_to_dict(Params(), include_table3=False)
    for section, knobs in OPT_IN_OFF.items():
        for key in knobs:
            del raw[section][key]
    del raw["evaluate"]["save_scores"]
    older = params_from_dict(raw)
    assert older == Params()
    # a checkpoint's fingerprint and a Table 3 record's settings do not name a knob that is off
    settings = older.result_settings()
    for section, knobs in OPT_IN_OFF.items():
        assert not set(knobs) & set(settings[section])
    assert "save_scores" not in settings["evaluate"]


@pytest.mark.parametrize("section, key, value", [("train", "ema_decay", 0.999), ("train", "rdrop_weight", 1.0),
                                                 ("train", "head_lr_multiplier", 10), ("train", "layer_lr_decay", 0.9),
                                                 ("train", "label_smoothing", 0.1),
                                                 ("evaluate", "sts_cosine_blend", 0.3)])
def test_a_knob_that_is_on_is_a_result_setting(section, key, value):
    raw = params_to_dict(Params(), include_table3=False)
    raw[section][key] = value
    settings = params_from_dict(raw).result_settings()
    assert settings[section][key] == value
    assert settings != Params().result_settings()


@pytest.mark.parametrize("key, value, message", [
    ("train.ema_decay", 1, "train.ema_decay: must be < 1"),
    ("train.rdrop_weight", -1, "train.rdrop_weight: must be >= 0"),
    ("train.head_lr_multiplier", 0, "train.head_lr_multiplier: must be > 0"),
    ("train.layer_lr_decay", 1.5, "train.layer_lr_decay: must be <= 1"),
    ("train.label_smoothing", 1, "train.label_smoothing: must be < 1"),
    ("evaluate.sts_cosine_blend", 2, "evaluate.sts_cosine_blend: must be <= 1"),
    ("evaluate.save_scores", "yes", "evaluate.save_scores: expected true or false"),
])
def test_out_of_range_knobs_are_refused_naming_the_key(key, value, message):
    raw = params_to_dict(Params(), include_table3=False)
    section, name = key.split(".")
    raw[section][name] = value
    with pytest.raises(ParamsError, match=message):
        params_from_dict(raw)


def test_rdrop_with_separately_encoded_pairs_is_refused():
    raw = params_to_dict(Params(), include_table3=False)
    raw["train"]["rdrop_weight"] = 1.0
    raw["model"]["pair_encoding"] = "separate"
    with pytest.raises(ParamsError, match="train.rdrop_weight: R-Drop needs model.pair_encoding: joint"):
        params_from_dict(raw)


# ---- one step on a tiny random BERT --------------------------------------------------------------------------


def _step(task: str, **knobs) -> tuple[dict[str, torch.Tensor], float]:
    """The weights after one training step from a fixed model, batch and RNG, and the step's loss."""
    model = tiny_model(seed=0)
    settings = dataclasses.replace(TrainParams(lr=1e-3, precision="fp32"), **knobs)
    optimizer = torch.optim.AdamW(parameter_groups(model, settings), lr=settings.lr,
                                  weight_decay=settings.weight_decay, foreach=True)
    scheduler = make_scheduler(optimizer, "constant", 10, 0.0)
    torch.manual_seed(1)
    loss = loop.train_step(model, task_batch(task), optimizer, scheduler, settings, "fp32", torch.device("cpu"))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, loss.total.item()


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    return {key for key in a if not torch.equal(a[key], b[key])}


@pytest.fixture(scope="module")
def plain_steps() -> dict[str, tuple[dict[str, torch.Tensor], float]]:
    return {task: _step(task) for task in TASKS}


@pytest.mark.parametrize("task", TASKS)
def test_knobs_at_their_off_values_are_the_plain_step_bitwise(task, plain_steps):
    weights, loss = _step(task, **OPT_IN_OFF["train"])
    assert loss == plain_steps[task][1] and not _changed(weights, plain_steps[task][0])


@pytest.mark.parametrize("task, moves", [("sst", True), ("para", False), ("sts", False)])
def test_label_smoothing_changes_only_the_cross_entropy_task(task, moves, plain_steps):
    weights, loss = _step(task, label_smoothing=0.1)
    assert (loss != plain_steps[task][1]) is moves
    assert bool(_changed(weights, plain_steps[task][0])) is moves


def test_label_smoothing_is_torch_cross_entropy_with_smoothed_targets():
    logits, labels = torch.randn(6, 5), torch.randint(0, 5, (6,))
    assert torch.equal(task_loss("sst", logits, labels, 0.0), F.cross_entropy(logits, labels))
    assert torch.allclose(task_loss("sst", logits, labels, 0.2), F.cross_entropy(logits, labels, label_smoothing=0.2))


@pytest.mark.parametrize("task, moves", [("sst", True), ("para", True), ("sts", False)])
def test_rdrop_changes_the_classification_steps_only(task, moves, plain_steps):
    weights, loss = _step(task, rdrop_weight=1.0)
    assert bool(_changed(weights, plain_steps[task][0])) is moves
    assert (loss != plain_steps[task][1]) is moves


def test_rdrop_without_simcse_adds_the_second_view():
    plain, _ = _step("sst", simcse=False)
    with_rdrop, loss = _step("sst", simcse=False, rdrop_weight=1.0)
    assert _changed(plain, with_rdrop) and loss > 0


def test_rdrop_loss_is_a_symmetric_divergence_zero_for_equal_views():
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    assert rdrop_loss("sst", a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert rdrop_loss("sst", a, b).item() == pytest.approx(rdrop_loss("sst", b, a).item()) and rdrop_loss("sst", a, b) > 0
    x, y = torch.randn(4), torch.randn(4)
    p, q = torch.sigmoid(x), torch.sigmoid(y)
    kl = lambda u, v: (u * (u / v).log() + (1 - u) * ((1 - u) / (1 - v)).log()).mean()  # noqa: E731
    assert rdrop_loss("para", x, y).item() == pytest.approx(0.5 * (kl(p, q) + kl(q, p)).item(), rel=1e-5)
    with pytest.raises(ValueError, match="classification"):
        rdrop_loss("sts", x, y)


def _part(name: str) -> str:
    if name.startswith(("heads.", "bert.pals.")):
        return "heads and PALs"
    if name.startswith("bert.encoder.layer."):
        return f"layer {name.split('.')[3]}"
    return "embeddings" if name.startswith("bert.embeddings.") else "other"


def test_head_lr_multiplier_moves_only_the_heads_and_pals(plain_steps):
    for task in TASKS:
        weights, _ = _step(task, head_lr_multiplier=5.0)
        changed = {_part(name) for name in _changed(weights, plain_steps[task][0])}
        assert changed == {"heads and PALs"}, task


def test_layer_lr_decay_slows_the_layers_below_the_top_only(plain_steps):
    weights, _ = _step("sst", layer_lr_decay=0.5)
    changed = {_part(name) for name in _changed(weights, plain_steps["sst"][0])}
    assert changed == {"embeddings", *(f"layer {k}" for k in range(LAYERS - 1))}


def test_parameter_groups_give_each_part_its_rate():
    model = tiny_model(seed=0)
    settings = TrainParams(lr=1e-3, head_lr_multiplier=10.0, layer_lr_decay=0.5)
    groups = parameter_groups(model, settings)
    rate = {id(p): group["lr"] for group in groups for p in group["params"]}
    names = dict(model.named_parameters())
    assert len(rate) == sum(len(group["params"]) for group in groups) == len(names)  # every one once
    assert groups[0]["lr"] == settings.lr
    for name, p in names.items():
        part = _part(name)
        expected = {"heads and PALs": 1e-2, "embeddings": 1e-3 * 0.5 ** LAYERS, "other": 1e-3}.get(part)
        if part.startswith("layer "):
            expected = 1e-3 * 0.5 ** (LAYERS - 1 - int(part.split()[1]))
        assert rate[id(p)] == pytest.approx(expected), name
    assert parameter_groups(model, TrainParams()) == [p for p in model.parameters() if p.requires_grad]


# ---- weight averaging --------------------------------------------------------------------------------------------


def test_weight_average_copies_the_first_step_then_moves_by_one_minus_decay():
    model = tiny_model(seed=0)
    average = make_weight_average(model, 0.9)
    assert isinstance(average, WeightAverage) and make_weight_average(model, 0.0) is None
    first = {k: v.clone() for k, v in model.state_dict().items()}
    average.update(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update(model)
    for name, p in average.model.named_parameters():
        assert torch.allclose(p, first[name] + 0.1), name  # 0.9 * w + 0.1 * (w + 1)
    for name, p in model.named_parameters():
        assert torch.equal(p, first[name] + 1.0)  # the trained weights are not touched


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("PALBERT_PROJECT_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _train(params, folder, tiny_prepared):
    paths = _paths(folder, tiny_prepared)
    loop.train(dataclasses.replace(params, tracking=dataclasses.replace(params.tracking, enabled=False)), paths)
    return paths


def test_ema_keeps_the_training_and_scores_and_saves_the_average(workdir, tiny_bert_dir, tiny_prepared):
    plain = _train(tiny_training_params(tiny_bert_dir), workdir / "plain", tiny_prepared)
    ema = _train(tiny_training_params(tiny_bert_dir, train={"ema_decay": 0.5}), workdir / "ema", tiny_prepared)
    latest = lambda paths, name="model.safetensors": load_file(str(paths.checkpoints / "latest" / name))  # noqa: E731
    trained, trained_ema = latest(plain), latest(ema)
    assert not _changed(trained, trained_ema)  # the raw weights train exactly as without averaging
    averaged = latest(ema, "averaged.safetensors")
    assert int(averaged["n_averaged"]) == 8  # 2 epochs x 4 steps
    best = load_file(str(ema.best_model / "model.safetensors"))  # the encoder, under BertModel's names
    raw_best = load_file(str(plain.best_model / "model.safetensors"))
    assert _changed(best, raw_best)
    dev = json.loads(ema.summary.read_text())["dev_per_epoch"]
    assert dev != json.loads(plain.summary.read_text())["dev_per_epoch"]  # scored with the averaged weights


def test_an_interrupted_ema_run_resumes_to_the_same_average(workdir, tiny_bert_dir, tiny_prepared, monkeypatch):
    params = tiny_training_params(tiny_bert_dir, train={"ema_decay": 0.5, "checkpoint_every": 2})
    whole = _train(params, workdir / "whole", tiny_prepared)
    real_step, calls = loop.train_step, {"n": 0}

    def ctrl_c_after_five_steps(*args, **kwargs):
        if calls["n"] == 5:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", ctrl_c_after_five_steps)
    with pytest.raises(KeyboardInterrupt):
        _train(params, workdir / "resumed", tiny_prepared)
    monkeypatch.setattr(loop, "train_step", real_step)
    resumed = _train(params, workdir / "resumed", tiny_prepared)
    a = load_file(str(whole.checkpoints / "latest" / "averaged.safetensors"))
    b = load_file(str(resumed.checkpoints / "latest" / "averaged.safetensors"))
    assert a.keys() == b.keys() and not _changed(a, b)
