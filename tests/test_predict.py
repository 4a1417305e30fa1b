"""Predictions for new sentences from a saved model folder."""

from __future__ import annotations

import io
import sys

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


def test_one_string_gives_one_prediction(predictor):
    assert predictor.predict("sst", "Great!") == predictor.predict("sst", ["Great!"])[0]
    assert isinstance(predictor.predict("sst", "Great!"), int)
    assert predictor.predict("sts", "a cat sits", "a cat is sitting") == pytest.approx(
        predictor.predict("sts", ["a cat sits"], ["a cat is sitting"])[0])
    with pytest.raises(ValueError, match="one first sentence but a list"):
        predictor.predict("sts", "a cat", ["b", "c"])


@pytest.fixture()
def model_dir(tmp_path, predictor) -> str:
    folder = tmp_path / "model"
    save_model(predictor.model, predictor.tokenizer, folder)
    return str(folder)


def test_cli_takes_sentences_after_options(model_dir, capsys):
    from palbert.cli import main

    assert main(["predict", "sst", "--model", model_dir, "--precision", "fp32", "x", "a second one"]) == 0
    out, err = capsys.readouterr()
    assert [int(v) in range(5) for v in out.split("\n")[:-1]] == [True, True]
    assert "it/s" not in err and "%|" not in err  # no progress bars for two sentences
    assert main(["predict", "sst", "first", "--model", model_dir, "second"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    # after `--`, an input may start with "-", wherever the options are
    assert main(["predict", "sst", "--model", model_dir, "--", "-5 stars, awful"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["predict", "sst", "--model", model_dir, "x", "--", "-y", "--model"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_cli_output_lines_up_with_input_lines(model_dir, tmp_path, capsys):
    from palbert.cli import main

    inputs = tmp_path / "pairs.tsv"
    inputs.write_text("a cat sits\ta cat is sitting\n\n   \nthe market fell\tstocks went down\n")
    assert main(["predict", "sts", "--model", model_dir, "--input", str(inputs)]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert lines[1:3] == ["", ""] and lines[4] == ""  # blank input lines give blank output lines
    assert all(0.0 <= float(lines[i]) <= 5.0 for i in (0, 3))


def test_cli_refuses_non_utf8_input_in_one_line(model_dir, tmp_path, capsys, monkeypatch):
    from palbert.cli import main

    latin1 = tmp_path / "reviews.txt"
    latin1.write_bytes("Un film très réussi\n".encode("latin-1"))
    assert main(["predict", "sst", "--model", model_dir, "--input", str(latin1)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert f"{latin1} is not UTF-8 text (byte 0xe8 at offset 10)" in err
    assert f"iconv -f latin1 -t utf-8 {latin1} > {tmp_path / 'reviews-utf8.txt'}" in err

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("très\n".encode("latin-1"))))
    assert main(["predict", "sst", "--model", model_dir]) == 1
    assert "standard input is not UTF-8 text (byte 0xe8 at offset 2)" in capsys.readouterr().err


def test_cli_version_and_help(capsys):
    from palbert import __version__
    from palbert.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"palbert {__version__}"
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: models/best" in help_text
    assert "bf16 on a GPU with bf16 or a CPU with AMX" in help_text  # what palbert.precision picks


def test_int8_scores_with_every_linear_layer_quantized_and_close_to_fp32(model_dir, capsys):
    from torch import nn
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    from palbert.cli import main

    fp32 = Predictor.load(model_dir, precision="fp32")
    int8 = Predictor.load(model_dir, precision="int8")
    linear = sum(isinstance(m, nn.Linear) for m in fp32.model.modules())
    assert linear > 0 and sum(isinstance(m, DynamicQuantizedLinear) for m in int8.model.modules()) == linear
    assert not any(type(m) is nn.Linear for m in int8.model.modules())
    assert int8.settings.precision == "fp32" and int8.settings.device.type == "cpu"  # no bf16 autocast over int8
    first = ["a cat sits", "a much longer sentence about a dog running in the park", "rain"]
    second = ["a cat is sitting", "a dog runs", "the sun is out"]
    assert int8.predict("sts", first, second) == pytest.approx(fp32.predict("sts", first, second), abs=0.05)
    assert main(["predict", "sts", "--model", model_dir, "--precision", "int8", "a cat sits\ta cat is sitting"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert 0.0 <= float(line) <= 5.0


def test_int8_benchmark_reports_speed_and_dev_change_on_the_same_rows(model_dir, tiny_prepared, tmp_path, capsys):
    """benchmarks/int8_scoring.py runs end to end (its figures are measured alone on a trained model, not here)."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "int8_scoring.py"
    spec = importlib.util.spec_from_file_location("int8_scoring", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--model", model_dir, "--prepared", str(tiny_prepared), "--rows", "16", "--repeats", "2",
                         "--out", str(tmp_path / "int8.json")])
    assert report["rows"] == {"sst": 16, "para": 16, "sts": 16}
    assert all(len(s) == 2 and min(s) > 0 for s in report["seconds"].values())
    for metric, change in report["dev_change"].items():
        assert change == pytest.approx(report["dev"]["int8"][metric] - report["dev"]["fp32"][metric])
    assert json.loads((tmp_path / "int8.json").read_text())["dev_change"].keys() == report["dev"]["fp32"].keys()
    out = capsys.readouterr().out
    assert "48 dev rows" in out and out.splitlines()[-1].startswith("int8-fp32")
