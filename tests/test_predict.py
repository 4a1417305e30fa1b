"""Predictions for new sentences from a saved model folder."""

from __future__ import annotations

import pytest

from palbert.config import ModelParams
from palbert.model import MultitaskBert, load_tokenizer, save_model
from palbert.predict import Predictor


@pytest.fixture(scope="module")
def predictor(tmp_path_factory, tiny_bert_dir) -> Predictor:
    model = MultitaskBert.from_pretrained(ModelParams(pretrained=str(tiny_bert_dir), pal_size=8, pal_heads=2))
    folder = tmp_path_factory.mktemp("model") / "best"
    save_model(model, load_tokenizer(str(tiny_bert_dir)), folder)
    return Predictor.load(folder, precision="fp32")


def test_predictions_have_each_task_range(predictor):
    sentences = ["A gorgeous, witty film.", "Dull.", "It is a film about a dog that I did not like at all."]
    assert set(predictor.predict("sst", sentences)) <= set(range(5))
    assert set(predictor.predict("para", sentences, sentences[::-1])) <= {0, 1}
    assert all(0.0 <= v <= 5.0 for v in predictor.predict("sts", sentences, sentences))


def test_a_sentence_scores_the_same_alone_or_in_a_batch(predictor):
    batch = predictor.predict("sts", ["a cat sits", "a much longer sentence about a dog running in the park"],
                              ["a cat is sitting", "a dog runs"])
    alone = predictor.predict("sts", ["a cat sits"], ["a cat is sitting"])
    assert alone[0] == pytest.approx(batch[0], abs=1e-4)


@pytest.mark.parametrize(("task", "first", "second", "message"), [
    ("sentiment", ["x"], None, "unknown task"),
    ("para", ["x"], None, "sentence pairs"),
    ("sst", ["x"], ["y"], "single sentences"),
    ("sts", ["x", "y"], ["z"], "2 first sentences but 1 second"),
    ("sst", ["  "], None, "empty sentence"),
])
def test_bad_input_is_refused_clearly(predictor, task, first, second, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(task, first, second)


def test_cli_predicts_pairs_from_a_file(tmp_path, predictor, capsys):
    from palbert.cli import main
    from palbert.model import save_model

    folder = tmp_path / "model"
    save_model(predictor.model, predictor.tokenizer, folder)
    inputs = tmp_path / "pairs.tsv"
    inputs.write_text("a cat sits\ta cat is sitting\nthe market fell\tstocks went down\n")
    assert main(["predict", "sts", "--model", str(folder), "--input", str(inputs), "--precision", "fp32"]) == 0
    values = [float(line) for line in capsys.readouterr().out.split()]
    assert len(values) == 2 and all(0.0 <= v <= 5.0 for v in values)
    inputs.write_text("no tab here\n")
    assert main(["predict", "para", "--model", str(folder), "--input", str(inputs)]) == 1
