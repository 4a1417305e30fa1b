"""PAL BERT model tests on a tiny random BERT (fast): equivalence, routing, shapes, save/load, overfit."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from palbert.config import TASKS, ModelParams
from palbert.data.batching import EncoderInputs, TaskBatch
from palbert.model import (
    ModelLoadError,
    MultitaskBert,
    PalBertModel,
    load_model,
    load_tokenizer,
    save_model,
)
from palbert.model.attention import set_fused_qkv
from palbert.model.encoder import mean_pool
from palbert.model.io import CONFIG_FILE, HF_CONFIG_FILE, TASK_WEIGHTS_FILE, WEIGHTS_FILE
from palbert.tasks import TASK_SPECS

STS_MAX_SCORE = TASK_SPECS["sts"].score_range[1]

HIDDEN, LAYERS, PAL_SIZE = 32, 2, 8


def tiny_config(dropout: float = 0.1) -> BertConfig:
    return BertConfig(
        vocab_size=120,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )


def tiny_params(**overrides) -> ModelParams:
    return dataclasses.replace(ModelParams(pal_size=PAL_SIZE, pal_heads=2), **overrides)


def tiny_model(seed: int = 0, dropout: float = 0.1, **overrides) -> MultitaskBert:
    torch.manual_seed(seed)
    return MultitaskBert(tiny_config(dropout), tiny_params(**overrides))


def encoder_inputs(batch: int, length: int, seed: int, second_segment_from: int | None = None) -> EncoderInputs:
    """Random ids, a [CLS]-like first token, rows padded to different lengths."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        keep = max(3, length - row)
        ids[row, keep:] = 0
        mask[row, keep:] = 0
    types = torch.zeros_like(ids)
    if second_segment_from is not None:
        types[:, second_segment_from:] = 1
        types = types * mask
    return EncoderInputs(ids, mask, types)


def task_batch(task: str, pair_encoding: str = "joint", batch: int = 4, seed: int = 0) -> TaskBatch:
    pair = task in ("para", "sts")
    generator = torch.Generator().manual_seed(100 + seed)
    labels = {
        "sst": torch.randint(0, 5, (batch,), generator=generator),
        "para": torch.randint(0, 2, (batch,), generator=generator).float(),
        "sts": torch.rand(batch, generator=generator) * 5,
    }[task]
    if pair and pair_encoding == "separate":
        inputs, inputs_b = encoder_inputs(batch, 9, seed), encoder_inputs(batch, 7, seed + 1)
    else:
        inputs, inputs_b = encoder_inputs(batch, 12, seed, second_segment_from=6 if pair else None), None
    return TaskBatch(task, task, inputs, inputs_b, labels, [str(i) for i in range(batch)])


def task_loss(task: str, prediction: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if task == "sst":
        return F.cross_entropy(prediction, labels)
    if task == "para":
        return F.binary_cross_entropy_with_logits(prediction, labels)
    return F.mse_loss(prediction, labels)


# ---------------------------------------------------------------------------------------------
# Encoder


def test_encoder_without_pals_equals_bert_model():
    torch.manual_seed(0)
    config = tiny_config()
    reference = BertModel(config).eval()
    ours = PalBertModel(config).eval()
    ours.load_bert_state_dict(reference.state_dict())
    inputs = encoder_inputs(4, 12, seed=1, second_segment_from=5)
    with torch.no_grad():
        expected = reference(
            input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, token_type_ids=inputs.token_type_ids
        )
        got = ours(inputs.input_ids, inputs.attention_mask, inputs.token_type_ids)
    assert (got.last_hidden_state - expected.last_hidden_state).abs().max() <= 1e-5
    assert (got.pooler_output - expected.pooler_output).abs().max() <= 1e-5


def test_one_qkv_product_trains_as_three_do():
    """One Q, K, V product (speed.py --fused-qkv) and three (the default): same outputs and gradients, dropout on."""
    model = tiny_model(seed=2, dropout=0.1)
    batch = task_batch("sts")
    results = []
    for fused in (True, False):
        set_fused_qkv(model, fused)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # the same dropout draws
        output = model(batch, simcse=True)
        task_loss("sts", output.prediction, batch.labels).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((output.prediction.detach(), grads))
    (fused_prediction, fused_grads), (separate_prediction, separate_grads) = results
    torch.testing.assert_close(fused_prediction, separate_prediction, rtol=1e-5, atol=1e-6)
    assert fused_grads.keys() == separate_grads.keys()
    for name in fused_grads:
        torch.testing.assert_close(fused_grads[name], separate_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_pals_change_the_encoding_per_task():
    model = tiny_model().eval()
    inputs = encoder_inputs(2, 8, seed=0)
    with torch.no_grad():
        plain = model.bert(inputs.input_ids, inputs.attention_mask, inputs.token_type_ids).pooler_output
        per_task = {task: model.encode(inputs, task) for task in TASKS}
    for task in TASKS:
        assert not torch.allclose(per_task[task], plain)
    assert not torch.allclose(per_task["sst"], per_task["sts"])


def test_mean_pool_averages_only_the_real_tokens():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                           [[5.0, 7.0], [-9.0, 9.0], [-9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0], [5.0, 7.0]]))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooling_chooses_the_sentence_embedding(pooling):
    model = tiny_model(pooling=pooling).eval()
    inputs = encoder_inputs(3, 10, seed=4)
    with torch.no_grad():
        output = model.bert(inputs.input_ids, inputs.attention_mask, inputs.token_type_ids, task="sst")
        expected = output.pooler_output if pooling == "cls" else mean_pool(output.last_hidden_state,
                                                                           inputs.attention_mask)
        torch.testing.assert_close(model.encode(inputs, "sst"), expected)
        # what stands in the padding does not change a mean-pooled (or [CLS]) embedding
        other_padding = inputs.input_ids.masked_fill(inputs.attention_mask == 0, 7)
        changed = EncoderInputs(other_padding, inputs.attention_mask, inputs.token_type_ids)
        torch.testing.assert_close(model.encode(changed, "sst"), expected)


def test_sts_output_starts_at_the_middle_of_the_score_scale():
    model = tiny_model().eval()
    assert model.heads.outputs["sts"].bias.item() == STS_MAX_SCORE / 2
    assert model.heads.outputs["para"].bias.item() == 0.0
    with torch.no_grad():
        prediction = model(task_batch("sts", batch=8)).prediction
    assert (prediction - STS_MAX_SCORE / 2).abs().max() < 0.5, prediction


def test_pal_projections_are_shared_across_layers_and_attention_is_per_layer():
    pal = tiny_model().bert.pals["sst"]
    assert pal.project_down.weight.shape == (PAL_SIZE, HIDDEN)
    assert pal.project_up.weight.shape == (HIDDEN, PAL_SIZE)
    assert len(pal.attention) == LAYERS
    assert not hasattr(pal.attention[0], "output")  # q/k/v only; V^D is the output projection


def test_bert_weights_that_do_not_fit_are_refused():
    model = PalBertModel(tiny_config())
    state = BertModel(tiny_config()).state_dict()
    state.pop("pooler.dense.weight")
    with pytest.raises(ValueError, match="pooler.dense.weight"):
        model.load_bert_state_dict(state)


# ---------------------------------------------------------------------------------------------
# Routing, heads and shapes


@pytest.mark.parametrize("task", TASKS)
def test_a_task_step_changes_only_its_pals_the_encoder_and_its_head(task):
    model = tiny_model(relational_layer=True)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    batch = task_batch(task)
    task_loss(task, model(batch).prediction, batch.labels).backward()

    for other in TASKS:
        grads = [p.grad for p in model.bert.pals[other].parameters()]
        if other == task:
            assert all(g is not None for g in grads)
        else:
            assert all(g is None for g in grads), f"{other}'s PALs got a gradient from a {task} step"
    optimizer.step()

    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    allowed_prefixes = ["bert.embeddings.", "bert.encoder.", "bert.pooler.", f"bert.pals.{task}.", f"heads.outputs.{task}."]
    if task in ("para", "sts"):
        allowed_prefixes.append("heads.relational.")
    assert all(any(name.startswith(p) for p in allowed_prefixes) for name in changed), sorted(changed)
    assert any(name.startswith(f"bert.pals.{task}.") for name in changed)
    assert any(name.startswith("bert.encoder.") for name in changed)
    assert any(name.startswith(f"heads.outputs.{task}.") for name in changed)


@pytest.mark.parametrize("pair_encoding", ["joint", "separate"])
@pytest.mark.parametrize("task", TASKS)
def test_output_shapes(task, pair_encoding):
    model = tiny_model(pair_encoding=pair_encoding)
    batch = task_batch(task, pair_encoding, batch=3)
    output = model(batch, simcse=True)
    expected = (3, 5) if task == "sst" else (3,)
    assert output.prediction.shape == expected
    assert output.embedding.shape == (3, HIDDEN)
    assert output.embedding_again.shape == (3, HIDDEN)
    assert not torch.allclose(output.embedding, output.embedding_again)  # a second dropout pass
    assert model(batch).embedding_again is None

    model.eval()
    predicted = model.predict(batch)
    assert predicted.shape == (3,)
    if task == "sst":
        assert predicted.dtype == torch.long and predicted.min() >= 0 and predicted.max() <= 4
    elif task == "para":
        assert set(predicted.tolist()) <= {0, 1}
    else:
        assert predicted.is_floating_point() and predicted.min() >= 0 and predicted.max() <= 5


def test_separate_pair_encoding_needs_the_second_sentence():
    model = tiny_model(pair_encoding="separate")
    batch = dataclasses.replace(task_batch("para", "separate"), inputs_b=None)
    with pytest.raises(ValueError, match="inputs_b"):
        model(batch)


@pytest.mark.parametrize("pair_encoding", ["joint", "separate"])
def test_relational_layer_is_one_module_shared_by_para_and_sts(pair_encoding):
    model = tiny_model(relational_layer=True, pair_encoding=pair_encoding)
    heads = model.heads
    assert heads.relational_for("para") is heads.relational_for("sts") is heads.relational
    assert heads.relational_for("para").dense.weight is heads.relational_for("sts").dense.weight
    assert heads.relational_for("sst") is None
    weight = heads.relational.dense.weight
    for task in ("para", "sts"):
        model.zero_grad(set_to_none=True)
        batch = task_batch(task, pair_encoding)
        task_loss(task, model(batch).prediction, batch.labels).backward()
        assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert tiny_model(relational_layer=False).heads.relational_for("para") is None


def test_freeze_encoder_trains_only_pals_and_heads():
    model = tiny_model(freeze_encoder=True)
    for name, parameter in model.named_parameters():
        trainable = name.startswith(("bert.pals.", "heads."))
        assert parameter.requires_grad == trainable, name
    report = model.parameter_report()
    assert report["trainable"] == report["pal_total"] + report["heads"]


def test_parameter_report_counts():
    model = tiny_model()
    report = model.parameter_report()
    s, h = PAL_SIZE, HIDDEN
    per_task = (h * s + s) + (s * h + h) + LAYERS * 3 * (s * s + s)
    assert report["pal_per_task"] == {task: per_task for task in TASKS}
    assert report["total"] == report["encoder"] + report["heads"] + 3 * per_task == report["trainable"]
    assert report["pal_overhead_pct"] == pytest.approx(100 * 3 * per_task / report["encoder"])
    assert tiny_model(pals=False).parameter_report()["pal_total"] == 0


# ---------------------------------------------------------------------------------------------
# Save / load


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("embedded")


def _outputs(model: MultitaskBert) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return {task: model(task_batch(task, model.params.pair_encoding)).prediction for task in TASKS}


@pytest.mark.parametrize("overrides", [{}, {"pals": False, "pair_encoding": "separate", "relational_layer": True},
                                       {"pooling": "mean"}])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, tokenizer, overrides):
    model = tiny_model(pal_activation="gelu", **overrides)
    save_model(model, tokenizer, tmp_path / "model")
    loaded, loaded_tokenizer = load_model(tmp_path / "model")
    assert loaded.params == model.params
    expected, got = _outputs(model), _outputs(loaded)
    for task in TASKS:
        assert torch.equal(expected[task], got[task]), task
    assert loaded_tokenizer("a test").input_ids == tokenizer("a test").input_ids


def test_save_replaces_an_existing_model_dir(tmp_path, tokenizer):
    save_model(tiny_model(seed=0), tokenizer, tmp_path / "model")
    newer = tiny_model(seed=1)
    save_model(newer, tokenizer, tmp_path / "model")
    loaded, _ = load_model(tmp_path / "model")
    assert torch.equal(loaded.heads.outputs["sst"].weight, newer.heads.outputs["sst"].weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.fixture
def saved_dir(tmp_path, tokenizer):
    return save_model(tiny_model(), tokenizer, tmp_path / "model")


def test_load_of_a_corrupted_weights_file_names_the_file(saved_dir):
    weights = saved_dir / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match=WEIGHTS_FILE):
        load_model(saved_dir)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=WEIGHTS_FILE):
        load_model(saved_dir)


@pytest.mark.parametrize("name", [WEIGHTS_FILE, TASK_WEIGHTS_FILE, CONFIG_FILE, HF_CONFIG_FILE,
                                  "tokenizer_config.json"])
def test_load_with_a_missing_file_names_it(saved_dir, name):
    (saved_dir / name).unlink()
    with pytest.raises(ModelLoadError, match=name):
        load_model(saved_dir)


def test_a_model_saved_before_the_pooling_knob_loads_with_cls_pooling(saved_dir):
    config_path = saved_dir / CONFIG_FILE
    config = json.loads(config_path.read_text())
    del config["model_params"]["pooling"]
    config_path.write_text(json.dumps(config))
    assert load_model(saved_dir)[0].params.pooling == "cls"


def test_load_of_mismatched_weights_names_the_key(saved_dir):
    config_path = saved_dir / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["model_params"]["pal_size"] = 16
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"palbert_task_layers\.safetensors: key 'bert\.pals\.[\w.]+' has shape \("):
        load_model(saved_dir)

    config["model_params"].update(pal_size=PAL_SIZE, pals=False)
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"unexpected key 'bert\.pals\."):
        load_model(saved_dir)


def test_load_of_an_encoder_of_another_shape_names_the_file(saved_dir):
    hf_config = saved_dir / HF_CONFIG_FILE
    hf_config.write_text(json.dumps({**json.loads(hf_config.read_text()), "intermediate_size": 48}))
    with pytest.raises(ModelLoadError, match=r"/model\.safetensors: key 'bert\.encoder\.[\w.]+' has shape \("):
        load_model(saved_dir)


def test_the_saved_encoder_is_a_hugging_face_bert_folder(tmp_path, tokenizer):
    """AutoModel/AutoTokenizer read models/best as a plain BERT: palbert's encoder without the PALs."""
    from transformers import AutoModel, AutoTokenizer

    model = tiny_model(pooling="mean").eval()
    folder = save_model(model, tokenizer, tmp_path / "model")
    bert = AutoModel.from_pretrained(folder).eval()
    assert type(bert) is BertModel
    inputs = encoder_inputs(3, 10, seed=5, second_segment_from=6)
    with torch.no_grad():
        ours = model.bert(inputs.input_ids, inputs.attention_mask, inputs.token_type_ids)  # task None: no PALs
        theirs = bert(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                      token_type_ids=inputs.token_type_ids)
    torch.testing.assert_close(theirs.last_hidden_state, ours.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(theirs.pooler_output, ours.pooler_output, rtol=1e-5, atol=1e-5)
    assert AutoTokenizer.from_pretrained(folder)("a test").input_ids == tokenizer("a test").input_ids
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt")) and not list(folder.glob("*.pkl"))


def test_a_model_saved_in_format_1_still_loads(tmp_path, tokenizer):
    """Before the Hugging Face layout every weight sat in model.safetensors and the BertConfig in the JSON."""
    from safetensors.torch import save_file

    model = tiny_model()
    folder = tmp_path / "v1"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps({"format_version": 1, "model_params": dataclasses.asdict(model.params),
                                                  "bert_config": model.bert_config.to_dict()}))
    tokenizer.save_pretrained(str(folder))
    loaded, _ = load_model(folder)
    expected, got = _outputs(model), _outputs(loaded)
    for task in TASKS:
        assert torch.equal(expected[task], got[task]), task


def test_load_of_a_bad_config_names_the_file(saved_dir):
    (saved_dir / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ModelLoadError, match=CONFIG_FILE):
        load_model(saved_dir)
    (saved_dir / CONFIG_FILE).write_text(json.dumps({"format_version": 1, "model_params": {"pal_sise": 3}, "bert_config": {}}))
    with pytest.raises(ModelLoadError, match="pal_sise"):
        load_model(saved_dir)


# ---------------------------------------------------------------------------------------------
# Learning


@pytest.mark.parametrize("pair_encoding", ["joint", "separate"])
@pytest.mark.parametrize("task", TASKS)
def test_one_batch_overfits(task, pair_encoding):
    model = tiny_model(seed=3, dropout=0.0, hidden_dropout=0.0, encoder_dropout=0.0, pair_encoding=pair_encoding)
    batch = task_batch(task, pair_encoding, batch=8, seed=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(50):
        loss = task_loss(task, model(batch).prediction, batch.labels)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])


def test_simcse_views_are_two_dropout_draws_of_the_same_inputs():
    model = tiny_model(dropout=0.1)
    batch = task_batch("sst")
    model.train()
    output = model(batch, simcse=True)
    assert output.embedding.shape == output.embedding_again.shape == (len(batch), 32)
    assert not torch.allclose(output.embedding, output.embedding_again)  # different dropout noise
    model.eval()
    output = model(batch, simcse=True)
    torch.testing.assert_close(output.embedding, output.embedding_again)  # no dropout: the same encoding
    torch.testing.assert_close(output.embedding, model.encode(batch.inputs, "sst"))
