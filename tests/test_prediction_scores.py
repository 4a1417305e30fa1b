"""Optional score files beside the predictions (``evaluate.save_scores``) and the STS blend with the pretrained
encoder's cosine (``evaluate.sts_cosine_blend``), on a tiny random BERT and the tiny mirror subset."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import BertModel

from conftest import tiny_training_params
from palbert.cosine_blend import PretrainedCosine, blend
from palbert.data.batching import SpecialTokens
from palbert.data.prepared import read_meta
from palbert.evaluate_stage import EvaluationPaths, evaluate_trained_model
from palbert.model import MultitaskBert
from palbert.model.io import TASK_WEIGHTS_FILE, WEIGHTS_FILE
from palbert.scoring import EvalSettings, load_eval_splits, predict_split, write_scores
from palbert.train.loop import train
from test_train_loop import _paths


def _settings(params, prepared):
    meta = read_meta(prepared, "sst")
    return EvalSettings.for_params(params, SpecialTokens.from_meta(meta), meta["max_length"], torch.device("cpu"))


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_score_files_hold_probabilities_and_raw_scores_that_agree_with_the_predictions(tmp_path, tiny_bert_dir,
                                                                                        tiny_prepared):
    params = tiny_training_params(tiny_bert_dir)
    torch.manual_seed(0)
    model = MultitaskBert.from_pretrained(params.model)
    settings = _settings(params, tiny_prepared)
    for task, split in load_eval_splits(tiny_prepared, "dev").items():
        result = predict_split(model, split, task, settings, progress=False)
        rows = _rows(write_scores(result, tmp_path))
        assert [row["id"] for row in rows] == result.ids
        assert [float(row["label"]) for row in rows] == pytest.approx(split.labels.astype(float).tolist())
        if task == "sst":
            probabilities = np.array([[float(row[f"p_{c}"]) for c in range(5)] for row in rows])
            assert probabilities.sum(axis=1) == pytest.approx(1.0, abs=1e-5)
            assert np.array_equal(probabilities.argmax(axis=1), result.predictions.astype(int))
        elif task == "para":
            assert list(rows[0]) == ["id", "label", "p_1"]
            assert np.array_equal(np.array([float(row["p_1"]) for row in rows]) > 0.5, result.predictions == 1)
        else:
            assert list(rows[0]) == ["id", "label", "score"]  # no cosine column without the blend
            raw = np.array([float(row["score"]) for row in rows])
            assert np.clip(raw, 0, 5) == pytest.approx(result.predictions, abs=1e-5)


def test_the_pretrained_cosine_is_transformers_mean_pooled_embeddings(tiny_bert_dir, tiny_prepared):
    params = tiny_training_params(tiny_bert_dir)
    split = load_eval_splits(tiny_prepared, "dev")["sts"]
    settings = _settings(params, tiny_prepared)
    cosines = PretrainedCosine(str(tiny_bert_dir), torch.device("cpu")).similarities(
        split, settings.special, settings.max_length, 8, "fp32")
    reference = BertModel.from_pretrained(tiny_bert_dir).eval()
    special = settings.special

    def embed(tokens):
        ids = torch.tensor([[special.cls_id, *tokens.tolist(), special.sep_id]])
        with torch.no_grad():
            return reference(input_ids=ids).last_hidden_state.mean(dim=1)[0]

    for i in (0, 1, len(split) - 1):
        expected = F.cosine_similarity(embed(split.first.get(i)), embed(split.second.get(i)), dim=0).item()
        assert cosines[i] == pytest.approx(expected, abs=1e-5)
    assert blend(np.array([4.0, 0.0]), np.array([0.5, -1.0]), 0.3).tolist() == pytest.approx([0.7 * 4 + 0.3 * 2.5, 0.0])


def test_the_blend_changes_only_sts_and_only_when_on(tiny_bert_dir, tiny_prepared):
    off = tiny_training_params(tiny_bert_dir)
    on = tiny_training_params(tiny_bert_dir, evaluate={"sts_cosine_blend": 0.3})
    torch.manual_seed(0)
    model = MultitaskBert.from_pretrained(off.model)
    plain, blended = _settings(off, tiny_prepared), _settings(on, tiny_prepared)
    assert plain.pretrained_cosine is None and blended.pretrained_cosine is not None
    for task, split in load_eval_splits(tiny_prepared, "dev").items():
        a = predict_split(model, split, task, plain, progress=False)
        b = predict_split(model, split, task, blended, progress=False)
        if task != "sts":
            assert np.array_equal(a.predictions, b.predictions) and b.cosines is None
            continue
        assert np.array_equal(a.outputs, b.outputs)  # the model's own output is untouched
        assert b.predictions == pytest.approx(np.clip(0.7 * a.predictions + 0.3 * 5 * b.cosines, 0, 5))
        assert not np.allclose(a.predictions, b.predictions)


@pytest.mark.parametrize("save_scores", [False, True])
def test_the_evaluate_stage_writes_score_files_only_when_asked(tmp_path, monkeypatch, tiny_bert_dir, tiny_prepared,
                                                               save_scores):
    monkeypatch.setenv("PALBERT_PROJECT_ROOT", str(tmp_path))
    params = tiny_training_params(tiny_bert_dir, train={"epochs": 1}, tracking={"enabled": False},
                                  evaluate={"save_scores": save_scores})
    paths = _paths(tmp_path, tiny_prepared)
    train(params, paths)
    predictions = tmp_path / "predictions"
    evaluate_trained_model(params, EvaluationPaths(
        project_root=tmp_path, model=paths.best_model, prepared=tiny_prepared, train_summary=paths.summary,
        dev_metrics=tmp_path / "metrics" / "dev.json", predictions=predictions))
    names = sorted(path.name for path in predictions.iterdir())
    plain = [f"{task}-{split}.csv" for split in ("dev", "test") for task in load_eval_splits(tiny_prepared, split)]
    assert len(plain) >= 5  # the tiny mirror sample has no Quora test split
    assert [name for name in names if not name.endswith("-scores.csv")] == sorted(plain)
    scores = [name for name in names if name.endswith("-scores.csv")]
    assert scores == (sorted(name.replace(".csv", "-scores.csv") for name in plain) if save_scores else [])
    if save_scores:
        assert list(_rows(predictions / "sst-test-scores.csv")[0]) == ["id", *(f"p_{c}" for c in range(5))]


def test_the_blend_leaves_training_as_it_is(tmp_path, monkeypatch, tiny_bert_dir, tiny_prepared):
    # The blend changes scoring only: the same seed trains the same weights with it on or off.
    monkeypatch.setenv("PALBERT_PROJECT_ROOT", str(tmp_path))
    weights = {}
    for weight in (0.0, 0.3):
        params = tiny_training_params(tiny_bert_dir, train={"epochs": 1}, tracking={"enabled": False},
                                      evaluate={"sts_cosine_blend": weight})
        paths = _paths(tmp_path / f"blend-{weight}", tiny_prepared)
        train(params, paths)
        weights[weight] = {name: load_file(paths.best_model / name)
                           for name in (WEIGHTS_FILE, TASK_WEIGHTS_FILE)}
    for name, off in weights[0.0].items():
        on = weights[0.3][name]
        assert off.keys() == on.keys()
        assert all(torch.equal(off[key], on[key]) for key in off), name
