"""Predictions for new sentences from a saved model folder."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from palbert.config import ModelParams
from palbert.model import MultitaskBert, load_tokenizer, save_model
from palbert.predict import Predictor, parse_input_lines, split_input_lines


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
    assert f"iconv -f cp1252 -t utf-8 {latin1} > {tmp_path / 'reviews-utf8.txt'}" in err

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


# ---------------------------------------------------------------------------------------------
# Output line N answers input line N: the real `palbert predict` command on the bytes users pipe in

PALBERT = Path(sys.executable).with_name("palbert")  # the console script this environment installed


def _predict_command(model_dir: str, task: str, data: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([str(PALBERT), "predict", task, "--model", model_dir, "--precision", "fp32"],
                          input=data, capture_output=True, timeout=300)


def test_predict_refuses_the_line_that_would_misalign_outputs(model_dir):
    # a form feed is kept, but a lone \r (old Mac line ends) is a line end to editors: 4 outputs for 2 lines before
    result = _predict_command(model_dir, "sst", b"one\x0ctwo\rthree\nfour\n")
    err = result.stderr.decode().strip()
    assert result.returncode == 1 and result.stdout == b"", (result.returncode, result.stdout, err)
    assert "\n" not in err and "Traceback" not in err
    assert "standard input line 1: holds a carriage return (\\r) not followed by \\n at character 8" in err, err


@pytest.mark.parametrize(("task", "data", "message"), [
    # a tab in a single-sentence line: "bad movie" was dropped and "good" scored
    ("sst", b"good\tbad movie\n", "standard input line 1: holds a tab; sst takes one sentence per line"),
    # what `iconv -f latin1 -t utf-8` makes of a Windows-1252 "\x85" ("…"): U+0085, a line end to str.splitlines
    ("sst", b"un film r\xe9ussi\x85 vraiment\n".decode("latin-1").encode("utf-8"),
     "standard input line 1: holds U+0085 NEXT LINE (what `iconv -f latin1` makes of a Windows-1252 '\u2026') at "
     "character 15"),
    ("sts", "a cat sits\ta cat is sitting\nthe market\u2028fell\tstocks went down\n".encode(),
     "standard input line 2: holds U+2028 LINE SEPARATOR at character 11"),
    ("para", b"a cat\ta dog\n\nthe market fell\t \n", "standard input line 3: the second sentence is empty"),
])
def test_predict_names_the_line_that_is_no_one_input(model_dir, task, data, message, capsys, monkeypatch):
    from palbert.cli import main

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))  # the bytes, read as `palbert` reads them
    assert main(["predict", task, "--model", model_dir]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "\n" not in err.strip() and message in err, err


def test_predict_splits_on_newlines_only_and_reads_form_feeds_as_spaces(model_dir):
    data = b"one\x0ctwo\r\nthree \xe2\x80\xa6 four\n\x0c\nfive\x0bsix\n"  # CRLF, a "\f"-only line, a vertical tab
    result = _predict_command(model_dir, "sst", data)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().split("\n")
    assert len(lines) == 5 and lines[2] == "" and lines[4] == ""  # four inputs, the third blank: four outputs
    direct = Predictor.load(model_dir, precision="fp32").predict("sst", ["one two", "three \u2026 four", "five six"])
    assert [int(lines[i]) for i in (0, 1, 3)] == direct


def test_input_lines_split_on_newline_alone():
    assert split_input_lines("a\r\nb\n\nc") == ["a", "b", "", "c"]
    assert split_input_lines("a\x0cb\u2028c\x85d\re\n") == ["a\x0cb\u2028c\x85d\re"]  # one line, refused later
    assert split_input_lines("") == [] and split_input_lines("\n") == [""]


@pytest.mark.parametrize(("task", "line", "message"), [
    ("para", "a cat\t ", "argument 1: the second sentence is empty"),
    ("sts", "\ta cat", "argument 1: the first sentence is empty"),
    ("para", "a\tb\tc", "argument 1: expected two sentences separated by a tab, got 2 tabs in 'a\\tb\\tc'"),
    ("para", "no tab here", "argument 1: expected two sentences separated by a tab, got no tab in 'no tab here'"),
    ("sst", "a\u2029b", "argument 1: holds U+2029 PARAGRAPH SEPARATOR at character 2"),
])
def test_lines_that_cannot_be_one_input_are_refused(task, line, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parse_input_lines([line], task, "argument")


def test_kept_control_characters_become_word_spaces():
    inputs = parse_input_lines(["", "a\x0bb\tc\x1ed", "  "], "para")
    assert (inputs.numbers, inputs.first, inputs.second) == ([1], ["a b"], ["c d"])


def test_scoring_stops_between_batches_past_a_deadline(predictor):
    import time

    sentences = [f"sentence number {i}" for i in range(3 * predictor.settings.batch_size)]
    with pytest.raises(TimeoutError, match=f"scored 0 of {len(sentences)} sst rows"):
        predictor.predict("sst", sentences, deadline=time.monotonic() - 1)
    assert len(predictor.predict("sst", sentences, deadline=time.monotonic() + 600)) == len(sentences)


def test_predict_without_a_trained_model_says_how_to_get_one(tmp_path):
    """A fresh clone (or a workspace after a `--temp` quick look) has no models/best: one line with what to run."""
    done = subprocess.run([str(PALBERT), "predict", "sst", "--model", str(tmp_path / "best"), "Dull."],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "model directory not found" in done.stderr and "dvc repro" in done.stderr and "dvc pull" in done.stderr
