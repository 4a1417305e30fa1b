"""Readers: real mirror files (quoting, both header layouts, the real bad rows) and fixture files for
each kind of bad row under both policies, plus the SNLI / CFIMDB relabelling rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from palbert.data import readers
from palbert.data.readers import DataError, read_snli, read_split, read_tsv

MIRROR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_mirror = pytest.mark.skipif(not (MIRROR / "cs224n").is_dir(), reason="data mirror ../shared/data not present")

SST_HEADER = "\tid\tsentence\tsentiment"
PAIR_HEADER = "\tid\tsentence1\tsentence2\t{label}"


def write_lines(path: Path, lines: list[str], extra_bytes: bytes = b"") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8") + extra_bytes)
    return path


# ------------------------------------------------------------------ real mirror files


@needs_mirror
def test_sst_train_counts_from_mirror():
    split = read_split("sst", "train", MIRROR / "cs224n/ids-sst-train.csv", "error")
    assert len(split) == 8544
    assert [split.labels.count(k) for k in range(5)] == [1092, 2218, 1624, 2322, 1288]
    assert split.second is None and not split.skipped
    assert split.first[1].startswith("The gorgeously elaborate continuation")  # leading space stripped
    assert "co-writer\\/director" in split.first[1]  # escaped slashes kept as written


@needs_mirror
def test_quora_dev_quoting_and_real_bad_rows():
    path = MIRROR / "cs224n/quora-dev.csv"
    split = read_split("quora", "dev", path, "skip")
    assert len(split) == 20214 - 2
    assert dict(split.skipped) == {"empty_label": 1, "empty_sentence": 1}
    assert (split.labels.count(0), split.labels.count(1)) == (12627, 7585)
    row = split.ids.index("318658e273ac78f3b1e957b8b")
    # The cell is `"""Which ... """"the"""" here?"""`: one level of CSV quoting removed, as the course code reads it.
    assert split.first[row] == ('"Which is correct grammar: I graduated from University of XXXX or I graduated '
                                'from the University of XXXX? Do I need ""the"" here?"')

    with pytest.raises(DataError) as error:
        read_split("quora", "dev", path, "error")
    message = str(error.value)
    assert f"{path}:2577: empty_label" in message and f"{path}:14222: empty_sentence" in message


@needs_mirror
@pytest.mark.parametrize("dataset, name, rows, first_id", [
    ("sst", "ids-sst-test-student.csv", 2210, "b7573736a6ddf7be102b7fee0"),
    ("cfimdb", "ids-cfimdb-test-student.csv", 488, "c916d7750936543cf3a109be1"),
    ("sts", "sts-test-student.csv", 1725, "cce9b526b3590d2ca2178584f"),
])
def test_test_student_files_both_header_layouts(dataset, name, rows, first_id):
    split = read_split(dataset, "test", MIRROR / "cs224n" / name, "error")
    assert len(split) == rows and split.ids[0] == first_id and split.labels is None


@needs_mirror
def test_cfimdb_rescaled_to_sst_scale():
    split = read_split("cfimdb", "train", MIRROR / "cs224n/ids-cfimdb-train.csv", "error")
    assert sorted(set(split.labels)) == [0, 4]
    assert (split.labels.count(0), split.labels.count(4)) == (856, 851)


@needs_mirror
def test_snli_relabel_on_mirror_and_official_format():
    train = read_snli(MIRROR / "snli/snli_1.0_train.jsonl", "error")
    assert (train.labels.count(1), train.labels.count(0)) == (6697, 6515)
    assert dict(train.dropped) == {"neutral": 6454} and not train.skipped

    official = read_snli(MIRROR / "snli/official-format-sample.jsonl", "error")  # every official field
    assert official.dropped["-"] == 16
    records = (MIRROR / "snli/official-format-sample.jsonl").read_bytes().count(b"\n") + 1  # no final newline
    assert len(official) + sum(official.dropped.values()) == records == 1289
    assert official.ids[0] == "4705552913.jpg#2r1e"  # pairID is the id when present


# ------------------------------------------------------------------ bad rows, both policies

TSV_BAD_ROWS = [
    # (dataset, label column, bad line, reason)
    ("sst", None, "9\tbad\tonly two columns", "malformed_row"),
    ("sst", None, "9\t\tA sentence .\t2", "empty_id"),
    ("sst", None, "9\tbad\t   \t2", "empty_sentence"),
    ("sst", None, "9\tbad\tA sentence .\t", "empty_label"),
    ("sst", None, "9\tbad\tA sentence .\tvery good", "non_numeric_label"),
    ("sst", None, "9\tbad\tA sentence .\t5", "label_out_of_range"),
    ("sst", None, "9\tbad\tA sentence .\t2.5", "label_out_of_range"),
    ("sst", None, "9\tid-a\tThe same id again .\t2", "duplicate_id"),
    ("cfimdb", None, "9\tbad\tA review .\t2", "label_out_of_range"),
    ("quora", "is_duplicate", "9\tbad\tA question?\t\t1.0", "empty_sentence"),
    ("quora", "is_duplicate", "9\tbad\tA question?\tAnother?\t2.0", "label_out_of_range"),
    ("sts", "similarity", "9\tbad\tA sentence.\tAnother.\t5.5", "label_out_of_range"),
    ("sts", "similarity", "9\tbad\tA sentence.\tAnother.\t-0.1", "label_out_of_range"),
    ("sts", "similarity", "9\tbad\tA sentence.\tAnother.\tnan", "non_numeric_label"),
]


def _tsv_fixture(tmp_path: Path, dataset: str, label_column: str | None, bad_line: str) -> Path:
    if label_column is None:  # single-sentence file
        lines = [SST_HEADER, "0\tid-a\tA fine film .\t1", bad_line, "1\tid-b\tA dull film .\t0"]
    else:
        lines = [PAIR_HEADER.format(label=label_column), "0\tid-a\tHow?\tWhy?\t1.0", bad_line,
                 "1\tid-b\tWhat?\tWho?\t0.0"]
    return write_lines(tmp_path / f"{dataset}.csv", lines)


@pytest.mark.parametrize("dataset, label_column, bad_line, reason", TSV_BAD_ROWS)
def test_tsv_bad_row_error_policy_names_file_line_reason(tmp_path, dataset, label_column, bad_line, reason):
    path = _tsv_fixture(tmp_path, dataset, label_column, bad_line)
    with pytest.raises(DataError, match=f"{path}:3: {reason}"):
        read_tsv(path, dataset, "train", "error")


@pytest.mark.parametrize("dataset, label_column, bad_line, reason", TSV_BAD_ROWS)
def test_tsv_bad_row_skip_policy_drops_and_counts(tmp_path, dataset, label_column, bad_line, reason):
    path = _tsv_fixture(tmp_path, dataset, label_column, bad_line)
    split = read_tsv(path, dataset, "train", "skip")
    assert split.ids == ["id-a", "id-b"]
    assert dict(split.skipped) == {reason: 1}


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_tsv_undecodable_bytes(tmp_path, policy):
    path = tmp_path / "sst.csv"
    path.write_bytes(b"\tid\tsentence\tsentiment\n0\tid-a\tGood .\t3\n1\tid-b\tBad \xff\xfe .\t0\n")
    if policy == "error":
        with pytest.raises(DataError, match=f"{path}:3: undecodable_bytes"):
            read_tsv(path, "sst", "train", policy)
    else:
        assert dict(read_tsv(path, "sst", "train", policy).skipped) == {"undecodable_bytes": 1}


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_tsv_missing_column_stops_under_both_policies(tmp_path, policy):
    path = write_lines(tmp_path / "sst.csv", ["\tid\tsentence", "0\tid-a\tGood ."])
    with pytest.raises(DataError, match=rf"{path}:1: missing column\(s\) sentiment"):
        read_tsv(path, "sst", "train", policy)


def test_error_policy_lists_every_bad_row_in_one_error(tmp_path):
    path = write_lines(tmp_path / "sst.csv", [SST_HEADER, "0\ta\t\t1", "1\tb\tok .\t9", "2\tc\tok .\t1"])
    with pytest.raises(DataError) as error:
        read_tsv(path, "sst", "train", "error")
    assert f"{path}:2: empty_sentence" in str(error.value) and f"{path}:3: label_out_of_range" in str(error.value)


def test_quoted_field_spanning_lines_reports_the_starting_line(tmp_path):
    path = write_lines(tmp_path / "sst.csv", [SST_HEADER, '0\ta\t"two\nlines"\t1', "1\tb\tok .\t7"])
    split = read_tsv(path, "sst", "train", "skip")
    assert split.first == ["two\nlines"]
    with pytest.raises(DataError, match=f"{path}:4: label_out_of_range"):
        read_tsv(path, "sst", "train", "error")


def test_quora_float_labels_and_sts_scores(tmp_path):
    quora = write_lines(tmp_path / "q.csv", [PAIR_HEADER.format(label="is_duplicate"), "0\ta\tx?\ty?\t1.0",
                                             "1\tb\tx?\tz?\t0.0"])
    assert read_tsv(quora, "quora", "train", "error").labels == [1, 0]
    sts = write_lines(tmp_path / "s.csv", [PAIR_HEADER.format(label="similarity"), "0\ta\tx\ty\t4.6",
                                           "1\tb\tx\tz\t0"])
    assert read_tsv(sts, "sts", "train", "error").labels == [4.6, 0.0]


# ------------------------------------------------------------------ SNLI


def _snli_line(gold, s1="A man sleeps.", s2="A person rests.", **extra) -> str:
    return json.dumps({"gold_label": gold, "sentence1": s1, "sentence2": s2, **extra})


def test_snli_relabel_rule(tmp_path):
    path = write_lines(tmp_path / "snli.jsonl", [
        _snli_line("entailment"), _snli_line("contradiction"), _snli_line("neutral"), _snli_line("-"),
        _snli_line("entailment", annotator_labels=["entailment"], captionID="c", pairID="p9",
                   sentence1_parse="(ROOT)"),
    ])
    split = read_snli(path, "error")
    assert split.labels == [1, 0, 1]
    assert split.ids == ["line1", "line2", "p9"]
    assert dict(split.dropped) == {"neutral": 1, "-": 1} and not split.skipped


SNLI_BAD_LINES = [
    ("{not json", "malformed_row"),
    ('["a", "list"]', "malformed_row"),
    (json.dumps({"gold_label": "entailment", "sentence1": "x"}), "missing_column"),
    (_snli_line("paraphrase"), "label_out_of_range"),
    (_snli_line("entailment", s2="  "), "empty_sentence"),
    (_snli_line("entailment", pairID="p1"), "duplicate_id"),
]


@pytest.mark.parametrize("bad_line, reason", SNLI_BAD_LINES)
@pytest.mark.parametrize("policy", ["error", "skip"])
def test_snli_bad_rows(tmp_path, bad_line, reason, policy):
    path = write_lines(tmp_path / "snli.jsonl", [_snli_line("entailment", pairID="p1"), bad_line,
                                                 _snli_line("contradiction", pairID="p2")])
    if policy == "error":
        with pytest.raises(DataError, match=f"{path}:2: {reason}"):
            read_snli(path, policy)
    else:
        split = read_snli(path, policy)
        assert split.ids == ["p1", "p2"] and dict(split.skipped) == {reason: 1}


def test_snli_undecodable_bytes(tmp_path):
    path = write_lines(tmp_path / "snli.jsonl", [_snli_line("entailment")], extra_bytes=b'{"gold_label": "\xff"}\n')
    assert dict(read_snli(path, "skip").skipped) == {readers.UNDECODABLE_BYTES: 1}
    with pytest.raises(DataError, match=f"{path}:2: undecodable_bytes"):
        read_snli(path, "error")
