"""Mistakes a tired user or a real export makes: each works, or fails in one line naming the file, line
(or key) and the fix, and nothing already written is lost. One test per class of input."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import (MIRROR, PROJECT, make_tiny_bert, needs_mirror, project_env, tiny_training_params,
                      write_params)
from palbert.config import ParamsError, params_from_dict
from palbert.params_file import load_params
from palbert.data.prepare import prepare_dataset
from palbert.data.readers import FIELD_TOO_LONG, MAX_FIELD_CHARS, DataError, read_snli, read_tsv

SST_HEADER = "\tid\tsentence\tsentiment"
SST_ROWS = ["0\ta\tA gorgeous , witty film .\t4", "1\tb\tDull .\t0", "2\tc\tIt is a film .\t2"]


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------ model.pretrained


@pytest.fixture(scope="module")
def bert_folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny BERT folder, and copies of it each broken one way."""
    root = tmp_path_factory.mktemp("berts")
    good = make_tiny_bert(root / "good")
    folders = {"good": good}
    for name, change in [("no_config", lambda f: (f / "config.json").unlink()),
                         ("no_tokenizer", lambda f: [(f / n).unlink() for n in ("vocab.txt", "tokenizer.json")
                                                     if (f / n).exists()]),
                         ("negative", lambda f: _edit_config(f, hidden_size=-32)),
                         ("absurd", lambda f: _edit_config(f, hidden_size=2**20, intermediate_size=2**22)),
                         ("roberta", lambda f: _edit_config(f, model_type="roberta"))]:
        folders[name] = root / name
        shutil.copytree(good, folders[name])
        change(folders[name])
    return folders


def _edit_config(folder: Path, **values) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **values}))


@pytest.mark.parametrize("value, message", [
    ("/nonexistent/bert", "no such folder, and not a Hugging Face hub id"),
    ("./bert", "no such folder"),
    ("", "empty"),
    ("no_config", "has no config.json"),
    ("no_tokenizer", "has no tokenizer"),
    ("negative", "hidden_size is -32, expected a positive integer"),
    ("absurd", "parameters, more than the 1e+10"),
    ("roberta", "not a BERT checkpoint"),
])
def test_a_bad_pretrained_fails_the_params_check(tmp_path, bert_folders, value, message):
    value = str(bert_folders[value]) if value in bert_folders else value
    path = write_params(tmp_path, model={"pretrained": value})
    with pytest.raises(ParamsError) as error:
        load_params(path)
    text = one_line(error)
    assert text.startswith(f"{path}: model.pretrained") and message in text


def test_a_good_pretrained_passes_and_a_hub_id_is_told_it_needs_the_network(tmp_path, bert_folders, caplog):
    for value in ("embedded", str(bert_folders["good"])):
        assert load_params(write_params(tmp_path, model={"pretrained": value})).model.pretrained == value
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        load_params(write_params(tmp_path, model={"pretrained": "an-org/not-cached-bert"}))
    assert "needs the network" in caplog.text


def test_check_params_exits_non_zero_on_a_bad_pretrained(tmp_path, capsys):
    from palbert.cli import main

    assert main(["check-params", str(write_params(tmp_path, model={"pretrained": "/nonexistent/bert"}))]) == 1


def test_a_hub_id_that_cannot_be_loaded_is_one_line(tmp_path):
    code = ("from palbert.model import load_tokenizer\n"
            "from palbert.config import ParamsError\n"
            "try:\n    load_tokenizer('no-such-org/no-such-bert')\n"
            "except ParamsError as exc:\n    print('ERROR', exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(PROJECT)})
    line = next(line for line in result.stdout.splitlines() if line.startswith("ERROR"))
    assert "cannot load the tokenizer of 'no-such-org/no-such-bert'" in line and "needs the network" in line


# ------------------------------------------------------------------ a damaged saved model


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": -8}, "hidden_size is -8"),
    ({"vocab_size": 10**12}, "more than the 1e+10"),
    ({"num_hidden_layers": "2"}, "num_hidden_layers is '2'"),
])
def test_a_saved_model_with_an_absurd_size_is_refused_before_allocating(tmp_path, bert_folders, change, message):
    from palbert.model import ModelLoadError, MultitaskBert, load_model, load_tokenizer, save_model

    params = tiny_training_params(bert_folders["good"])
    folder = save_model(MultitaskBert.from_pretrained(params.model), load_tokenizer(str(bert_folders["good"])),
                        tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())  # the encoder's Hugging Face config
    config.update(change)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as error:
        load_model(folder)
    assert message in one_line(error) and "config.json: bert_config" in str(error.value)


# ------------------------------------------------------------------ params.yaml as people edit it


def test_a_bad_value_tells_how_to_restore_params_yaml(tmp_path):
    """`dvc exp run -S` writes into params.yaml, so the error says how to undo it."""
    path = write_params(tmp_path, train={"lr": "fast"})
    with pytest.raises(ParamsError) as error:
        load_params(path)
    text = one_line(error)
    assert "train.lr: expected a number" in text and "git checkout params.yaml" in text
    assert "dvc exp run -S <key>=<good value>" in text


@pytest.mark.parametrize("content, message", [
    (b"data:\n\tbad_rows: skip\n", ":2:1: not valid YAML"),                     # a tab
    (b"data:\n  bad_rows: skip\n  bad_rows: error\n", ":3: key 'bad_rows' appears twice (first on line 2)"),
    (b"data:\n  mirror: caf\xe9\n", ":2: byte 0xe9 is not UTF-8; save the file as UTF-8"),   # Latin-1
    (b"data: [skip\nmodel: {}\n", ":2:6: not valid YAML"),                     # an unclosed bracket
])
def test_a_broken_params_file_is_one_line_with_its_line(tmp_path, content, message):
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(ParamsError) as error:
        load_params(path)
    assert one_line(error).startswith(f"{path}{message}")


@pytest.mark.parametrize("section, key, value, expected", [
    ("train", "steps_per_epoch", "1,800", "expected an integer, got '1,800' (no commas in numbers: write 1800)"),
    ("train", "lr", "2,5e-5", "expected a number, got '2,5e-5' (no commas in numbers: write 2.5e-5)"),
    ("train", "sampling", " uniform ", "uniform"),  # stray blanks inside quotes are dropped
])
def test_numbers_with_commas_say_the_fix_and_stray_blanks_are_dropped(section, key, value, expected):
    try:
        assert getattr(getattr(params_from_dict({section: {key: value}}), section), key) == expected
    except ParamsError as exc:
        assert str(exc) == f"{section}.{key}: {expected}"


def test_params_with_a_bom_crlf_and_a_path_with_spaces_work(tmp_path):
    folder = tmp_path / "my params"
    folder.mkdir()
    path = folder / "params.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + b"data:\r\n  mirror: /data/my mirror  \r\n  bad_rows: skip\r\n")
    params = load_params(path)
    assert params.data.mirror == "/data/my mirror" and params.data.bad_rows == "skip"


# ------------------------------------------------------------------ raw files: encodings, line ends, headers


def read_sst(tmp_path: Path, content: bytes, policy: str = "error", split: str = "train"):
    path = tmp_path / "ids-sst-train.csv"
    path.write_bytes(content)
    return read_tsv(path, "sst", split, policy)


def lines(*rows: str, end: str = "\n") -> bytes:
    return (end.join(rows) + end).encode("utf-8")


@pytest.mark.parametrize("name, content", [
    ("utf-8 byte-order mark", b"\xef\xbb\xbf" + lines("id\tsentence\tsentiment", "a\tGood .\t4", "b\tBad .\t0")),
    ("utf-16 (a spreadsheet's 'Unicode text')", "id\tsentence\tsentiment\na\tGood .\t4\nb\tBad .\t0\n".encode("utf-16")),
    ("windows line ends", lines("id\tsentence\tsentiment", "a\tGood .\t4", "b\tBad .\t0", end="\r\n")),
    ("blank lines at the end", lines("id\tsentence\tsentiment", "a\tGood .\t4", "b\tBad .\t0", "", "")),
    ("blanks around header names and cells", lines(" id \t sentence\tsentiment ", " a \t Good . \t 4 ", "b\tBad .\t0")),
    ("quoted cells", lines('id\tsentence\tsentiment', 'a\t"Good, ""really"" ."\t"4"', "b\tBad .\t0")),
])
def test_export_variants_read_the_same_rows(tmp_path, name, content):
    split = read_sst(tmp_path, content)
    assert split.ids == ["a", "b"] and split.labels == [4, 0], name
    assert split.first[1] == "Bad ." and not split.skipped


@pytest.mark.parametrize("content, message", [
    (lines("id\tsentence\tsentiment\tid", "a\tGood .\t4\tx"), ":1: column 'id' appears 2 times in the header"),
    (lines("a\tGood .\t4", "b\tBad .\t0"), ":1: missing column(s) id, sentence, sentiment"),
    (lines("id,sentence,sentiment", "a,Good .,4"), ":1: missing column(s) id, sentence, sentiment (header has "
                                                   "['id,sentence,sentiment']); the first line must be the "
                                                   "tab-separated header naming id, sentence, sentiment (this one "
                                                   "is comma-separated: export with tabs)"),
    (b"", ": empty file (no header line)"),
])
def test_a_bad_header_stops_in_one_line(tmp_path, content, message):
    with pytest.raises(DataError) as error:
        read_sst(tmp_path, content, "skip")
    assert one_line(error).startswith(f"{tmp_path / 'ids-sst-train.csv'}{message}")


def test_a_decimal_comma_label_is_a_bad_row_with_the_fix(tmp_path):
    path = tmp_path / "sts-train.csv"
    path.write_bytes(lines("id\tsentence1\tsentence2\tsimilarity", "a\tx\ty\t3,5", "b\tx\tz\t2.0"))
    split = read_tsv(path, "sts", "train", "skip")
    assert split.ids == ["b"] and split.skipped == {"non_numeric_label": 1}
    with pytest.raises(DataError, match=r"sts-train.csv:2: non_numeric_label: label '3,5' is not a number "
                                        r"\(a decimal comma\? write 3.5\)"):
        read_tsv(path, "sts", "train", "error")


def test_an_unclosed_quote_is_a_bad_row_not_a_silent_merge(tmp_path):
    split = read_sst(tmp_path, lines("id\tsentence\tsentiment", 'a\t"Good .\t4', "b\tBad .\t0", "c\tOk .\t2"), "skip")
    assert split.ids == [] and split.skipped == {"malformed_row": 1}
    with pytest.raises(DataError, match=r"ids-sst-train.csv:2: malformed_row: a quote .* never closed: this row runs "
                                        r"to line 4"):
        read_sst(tmp_path, lines("id\tsentence\tsentiment", 'a\t"Good .\t4', "b\tBad .\t0", "c\tOk .\t2"))


def test_an_over_long_field_is_a_counted_bad_row_under_skip(tmp_path):
    """A field over csv's own size limit skips its row and names the limit, instead of stopping the whole stage."""
    content = lines("id\tsentence\tsentiment", "a\t" + "x" * 200_000 + "\t4", "b\tBad .\t0")
    split = read_sst(tmp_path, content, "skip")
    assert split.ids == ["b"] and split.skipped == {FIELD_TOO_LONG: 1}
    with pytest.raises(DataError, match=rf":2: field_too_long: column 2 holds 200,000 characters, more than the "
                                        rf"{MAX_FIELD_CHARS:,} a field may have"):
        read_sst(tmp_path, content, "error")
    import csv
    assert csv.field_size_limit() == 131_072  # the process-wide limit is restored


def test_snli_bom_blank_lines_crlf_and_an_over_long_sentence(tmp_path):
    record = {"gold_label": "entailment", "sentence1": "A man sleeps.", "sentence2": "A person rests.", "pairID": "p1"}
    long = {**record, "sentence1": "x" * (MAX_FIELD_CHARS + 1), "pairID": "p2"}
    path = tmp_path / "snli.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(record).encode() + b"\r\n\r\n" + json.dumps(long).encode() + b"\n\n")
    split = read_snli(path, "skip")
    assert split.ids == ["p1"] and split.skipped == {FIELD_TOO_LONG: 1}


# ------------------------------------------------------------------ empty and mostly-bad splits


def write_sst(raw: Path, train: list[str], dev: list[str] = SST_ROWS) -> None:
    (raw / "sst").mkdir(parents=True, exist_ok=True)
    for name, rows in (("ids-sst-train.csv", train), ("ids-sst-dev.csv", dev)):
        (raw / "sst" / name).write_text("\n".join([SST_HEADER, *rows]) + "\n", encoding="utf-8")


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_a_header_only_required_split_is_an_error_naming_the_file(tmp_path, policy):
    write_sst(tmp_path / "raw", train=[])
    with pytest.raises(DataError) as error:
        prepare_dataset("sst", tmp_path / "raw", tmp_path / "prepared", params_from_dict({"data": {"bad_rows": policy}}))
    assert one_line(error).startswith(f"{tmp_path / 'raw/sst/ids-sst-train.csv'}: the required train split has no "
                                      "usable rows: the file has a header but no rows")
    assert not (tmp_path / "prepared/sst").exists()


def test_skip_leaving_a_small_fraction_is_shouted_and_leaving_nothing_stops(tmp_path, caplog):
    params = params_from_dict({"data": {"bad_rows": "skip"}})
    write_sst(tmp_path / "raw", train=[])
    path = tmp_path / "raw/sst/ids-sst-train.csv"
    latin1 = b"".join(f"{i}\tx{i}\tLatin-1 caf\xe9 .\t2\n".encode("latin-1") for i in range(6))
    path.write_bytes(lines(SST_HEADER, SST_ROWS[0]) + latin1)
    with caplog.at_level(logging.WARNING):
        stats = prepare_dataset("sst", tmp_path / "raw", tmp_path / "prepared", params)
    assert stats["train"]["rows"] == 1
    assert f"!!! {path}: bad_rows=skip kept only 1 of 7 rows (14 %)" in caplog.text
    assert "re-save the file as UTF-8" in caplog.text

    path.write_bytes(lines(SST_HEADER) + latin1)
    with pytest.raises(DataError) as error:
        prepare_dataset("sst", tmp_path / "raw", tmp_path / "prepared", params)
    assert "no usable rows: all 6 rows are bad and were skipped ({'undecodable_bytes': 6})" in one_line(error)
    assert stats == json.loads((tmp_path / "prepared/sst/stats.json").read_text())  # the earlier output is kept


# ------------------------------------------------------------------ fetch: a mirror file re-saved by an editor


@needs_mirror
def test_a_mirror_file_with_converted_line_ends_is_one_line_saying_why(tmp_path):
    from palbert.data.sources import fetch

    (tmp_path / "mirror/cs224n").mkdir(parents=True)
    original = (MIRROR / "cs224n/ids-sst-train.csv").read_bytes()
    (tmp_path / "mirror/cs224n/ids-sst-train.csv").write_bytes(original.replace(b"\n", b"\r\n"))
    with pytest.raises(DataError) as error:
        fetch(params_from_dict({}), tmp_path / "raw", tmp_path / "mirror")
    assert one_line(error).startswith(f"{tmp_path / 'mirror/cs224n/ids-sst-train.csv'}: sha256 ")
    assert "other line ends" in str(error.value)
    assert not (tmp_path / "raw/sst/ids-sst-train.csv").exists()


# ------------------------------------------------------------------ a read-only MLflow store


def _make_read_only(path: Path) -> bool:
    """chmod for ordinary users; root writes through modes, so an immutable flag where the filesystem has one."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        return True
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


def test_a_read_only_mlflow_store_is_one_line_before_anything_is_logged(tmp_path):
    from mlflow import MlflowClient

    from palbert.errors import TrackingUnavailable
    from palbert.tracking import open_run

    db = tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # a real, empty store
    if not _make_read_only(db):
        pytest.skip("cannot make a file read-only here (root without chattr)")
    try:
        params = params_from_dict({"tracking": {"uri": f"sqlite:///{db}"}})
        with pytest.raises(TrackingUnavailable) as error:
            open_run(params, tmp_path, rank=0)
        assert one_line(error).startswith(f"MLflow store {db} is read-only")
        assert "tracking.uri" in str(error.value)
    finally:
        subprocess.run(["chattr", "-i", str(db)], capture_output=True)
        db.chmod(0o644)


def test_an_mlflow_db_that_is_not_sqlite_is_one_line_and_left_alone(tmp_path):
    from palbert.errors import TrackingUnavailable
    from palbert.tracking import open_run

    db = tmp_path / "mlflow.db"
    db.write_text("notes, not a database\n")
    with pytest.raises(TrackingUnavailable) as error:
        open_run(params_from_dict({"tracking": {"uri": f"sqlite:///{db}"}}), tmp_path, rank=0)
    assert one_line(error).startswith(f"MLflow store {db} is not an SQLite database")
    assert db.read_text() == "notes, not a database\n"


def test_a_project_path_with_spaces_holds_the_mlflow_store_and_artifacts(tmp_path):
    from palbert.tracking import open_run

    root = tmp_path / "my project"
    root.mkdir()
    (root / "note.txt").write_text("x")
    tracker = open_run(params_from_dict({}), root, rank=0, system_metrics=False)
    tracker.log_artifact(root / "note.txt", "notes")
    tracker.end()
    assert tracker.lost is None and tracker.tracking_uri == f"sqlite:///{root / 'mlflow.db'}"
    assert len(list((root / "mlruns").rglob("note.txt"))) == 1


# ------------------------------------------------------------------ a new run keeps the old checkpoint


def test_a_new_run_that_fails_early_keeps_the_previous_checkpoint(tmp_path, monkeypatch, tiny_bert_dir, tiny_prepared):
    from palbert.errors import TrackingUnavailable
    from palbert.train.loop import TrainPaths, train

    monkeypatch.setenv("PALBERT_PROJECT_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    paths = TrainPaths(project_root=tmp_path, prepared=tiny_prepared, checkpoints=tmp_path / "checkpoints",
                       best_model=tmp_path / "models/best", summary=tmp_path / "metrics/train.json",
                       plots=tmp_path / "metrics/plots/train")
    params = tiny_training_params(tiny_bert_dir, train={"epochs": 1})
    train(params, paths)
    before = {p.relative_to(paths.checkpoints): p.read_bytes() for p in paths.checkpoints.rglob("*") if p.is_file()}

    other = dataclasses.replace(params, train=dataclasses.replace(params.train, lr=5e-4),
                                tracking=dataclasses.replace(params.tracking, uri="http://127.0.0.1:9"))
    with pytest.raises(TrackingUnavailable):
        train(other, paths)
    after = {p.relative_to(paths.checkpoints): p.read_bytes() for p in paths.checkpoints.rglob("*") if p.is_file()}
    assert after == before

    # a run of other settings replaces it once it has written its own first checkpoint
    other = dataclasses.replace(other, tracking=params.tracking, train=dataclasses.replace(other.train, epochs=2))
    train(other, paths)
    state = json.loads((paths.checkpoints / "latest/state.json").read_text())
    assert state["step"] == 8 and state["complete"] and state["best_epoch"] in (1, 2)


# ------------------------------------------------------------------ under real DVC (items 6 and 7)


def test_a_failed_dvc_exp_run_says_how_to_restore_params_and_outputs(tmp_path):
    """DVC writes `-S` into params.yaml and removes the stage's outputs before running it: the error says how to
    undo both, and `dvc checkout <stage>` does bring the last good output back."""
    shutil.copytree(PROJECT / "stages", tmp_path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    write_params(tmp_path, data={"bad_rows": "error"})
    write_sst(tmp_path / "data/raw", train=SST_ROWS)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"prepare": {"foreach": ["sst"], "do": {
        "cmd": "python -m stages.prepare ${item}", "deps": ["data/raw/${item}"],
        "params": ["model.pretrained"], "outs": ["data/prepared/${item}"]}}}}))
    env = project_env(tmp_path, PYTHONPATH=f"{tmp_path}{os.pathsep}{PROJECT}")

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"]):
        assert run(*command).returncode == 0, command
    good = (tmp_path / "data/prepared/sst/train.npz").read_bytes()

    failed = run("dvc", "exp", "run", "-S", "model.pretrained=/nonexistent/bert")
    assert failed.returncode != 0
    error = next(line for line in (failed.stdout + failed.stderr).splitlines() if "ERROR palbert" in line)
    assert "params.yaml: model.pretrained: '/nonexistent/bert': no such folder" in error
    assert "git checkout params.yaml" in error and "`dvc checkout prepare@sst` restores" in error
    assert "/nonexistent/bert" in (tmp_path / "params.yaml").read_text()  # what DVC left behind
    assert not (tmp_path / "data/prepared/sst").exists()  # what DVC removed before the stage ran

    assert run("git", "checkout", "params.yaml").returncode == 0
    assert run("dvc", "checkout", "prepare@sst").returncode == 0
    assert (tmp_path / "data/prepared/sst/train.npz").read_bytes() == good
