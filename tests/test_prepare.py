"""fetch (mirror, download over a local HTTP server, offline), prepare (npz, meta, stats, subset, absent
extras, atomicity), batching against the Hugging Face tokenizer, and the data report."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import socket
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from palbert.config import params_from_dict
from palbert.data.batching import SpecialTokens, encoded_lengths, make_batch, truncate_longest_first
from palbert.data.prepare import prepare_dataset
from palbert.data.prepared import PreparedSplit, load_prepared, load_split, read_meta, save_split
from palbert.data.readers import DataError
from palbert.data.report import write_data_report
from palbert.data.sources import RAW_FILES, fetch, raw_file
from palbert.encoder_source import load_tokenizer

MIRROR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_mirror = pytest.mark.skipif(not (MIRROR / "cs224n").is_dir(), reason="data mirror ../shared/data not present")


def make_params(**data):
    return params_from_dict({"data": data})


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("embedded")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def link_mirror_files(raw_root: Path, dataset: str) -> None:
    """A raw folder as fetch leaves it, pointing at the mirror's files (no copy)."""
    (raw_root / dataset).mkdir(parents=True, exist_ok=True)
    for raw in RAW_FILES[dataset]:
        if (MIRROR / raw.mirror_path).is_file():
            (raw_root / dataset / raw.name).symlink_to(MIRROR / raw.mirror_path)


# ------------------------------------------------------------------ fetch


@needs_mirror
def test_fetch_from_mirror_copies_verified_files(tmp_path):
    report = fetch(make_params(extra=["snli", "cfimdb"]), tmp_path / "raw", MIRROR,
                   download_base=f"http://127.0.0.1:{closed_port()}")
    assert report.sources["quora/quora-test-student.csv"] == "missing"  # optional, not in the mirror
    assert report.count("mirror") == 12
    copied = tmp_path / "raw/sst/ids-sst-train.csv"
    assert copied.read_bytes() == (MIRROR / "cs224n/ids-sst-train.csv").read_bytes()
    assert not [p for p in (tmp_path / "raw").rglob(".*")]  # no temporary files left behind


@needs_mirror
def test_fetch_with_a_mirror_does_not_go_to_the_network_for_an_optional_file(tmp_path, caplog):
    """quora-test-student.csv is optional and not in the mirror: no request, no DNS error, one notice."""
    requests: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            requests.append(self.path)
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with caplog.at_level("INFO", logger="palbert.data.sources"):
            report = fetch(make_params(), tmp_path / "raw", MIRROR,
                           download_base=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert requests == []
    assert report.sources["quora/quora-test-student.csv"] == "missing"
    assert "optional file quora/quora-test-student.csv not in the mirror" in caplog.text
    assert "downloading" not in caplog.text


def test_fetch_offline_without_mirror_lists_every_required_file(tmp_path, monkeypatch):
    monkeypatch.delenv("PALBERT_DATA_MIRROR", raising=False)
    started = time.monotonic()
    with pytest.raises(DataError) as error:
        fetch(make_params(mirror=str(tmp_path / "no-such-mirror"), extra=["cfimdb"]), tmp_path / "raw",
              download_base=f"http://127.0.0.1:{closed_port()}")
    assert time.monotonic() - started < 10  # fails fast
    message = str(error.value)
    required = ["ids-sst-train.csv", "ids-sst-dev.csv", "quora-train.csv", "quora-dev.csv", "sts-train.csv",
                "sts-dev.csv", "ids-cfimdb-train.csv", "ids-cfimdb-dev.csv"]
    assert message.startswith(f"{len(required)} required raw files could not be fetched")
    for name in required:
        assert name in message
    assert "test-student.csv" not in message and "snli_1.0_train" not in message  # optional here
    assert "data.mirror" in message and "PALBERT_DATA_MIRROR" in message and "internet" in message
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").rglob("*.csv"))


def test_a_relative_mirror_that_is_not_there_says_where_it_was_looked_for(tmp_path, monkeypatch, caplog):
    """`dvc exp run --temp` runs the stage in a temporary copy, where `../shared/data` is another folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PALBERT_DATA_MIRROR", "../no-such-mirror")
    with pytest.raises(DataError, match="as an absolute path"):
        fetch(make_params(), tmp_path / "raw", download_base=f"http://127.0.0.1:{closed_port()}")
    assert f"a relative path, read from {tmp_path}" in caplog.text and "--temp" in caplog.text


@needs_mirror
def test_fetch_rejects_a_mirror_file_with_the_wrong_checksum(tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(MIRROR / "cs224n", mirror / "cs224n")
    with (mirror / "cs224n/ids-sst-dev.csv").open("a") as fp:
        fp.write("9999\tx\ttampered .\t1\n")
    with pytest.raises(DataError, match="ids-sst-dev.csv: sha256 .* differs"):
        fetch(make_params(), tmp_path / "raw", mirror, download_base=f"http://127.0.0.1:{closed_port()}")
    assert not (tmp_path / "raw/sst/ids-sst-dev.csv").exists()


@needs_mirror
def test_fetch_downloads_and_unzips_over_http(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    for raw in RAW_FILES["sst"] + RAW_FILES["quora"] + RAW_FILES["sts"]:
        if (MIRROR / raw.mirror_path).is_file():
            shutil.copy(MIRROR / raw.mirror_path, served / raw.name)
    with zipfile.ZipFile(served / "snli_1.0.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(MIRROR / "snli/snli_1.0_train.jsonl", "snli_1.0/snli_1.0_train.jsonl")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        report = fetch(make_params(extra=["snli"]), tmp_path / "raw", tmp_path / "no-mirror",
                       download_base=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert report.sources["sst/ids-sst-train.csv"] == "download"
    assert report.sources["snli/snli_1.0_train.jsonl"] == "download"
    assert report.sources["cfimdb/ids-cfimdb-train.csv"] == "missing"  # 404, optional without extra cfimdb
    assert (tmp_path / "raw/snli/snli_1.0_train.jsonl").read_bytes() == (MIRROR / "snli/snli_1.0_train.jsonl").read_bytes()
    assert not list((tmp_path / "raw").rglob("*.zip")) and not list((tmp_path / "raw").rglob(".*"))


# ------------------------------------------------------------------ prepare

SST_FIXTURE = ["\tid\tsentence\tsentiment", "0\ta\t A gorgeous , witty film .\t4", "1\tb\tDull .\t0",
               "2\tc\tIt is a film .\t2"]


def write_sst_fixture(raw_root: Path, lines: list[str] = SST_FIXTURE) -> None:
    (raw_root / "sst").mkdir(parents=True, exist_ok=True)
    for name in ("ids-sst-train.csv", "ids-sst-dev.csv"):
        (raw_root / "sst" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_prepare_writes_npz_meta_stats(tmp_path, tokenizer):
    write_sst_fixture(tmp_path / "raw")
    stats = prepare_dataset("sst", tmp_path / "raw", tmp_path / "prepared", make_params(max_length=8))
    assert stats["train"] == {"rows": 3, "labels": {"0": 1, "2": 1, "4": 1}, "skipped": {}, "dropped": {}}
    assert "test" not in stats  # optional test file absent: a notice, not a crash
    split = load_prepared(tmp_path / "prepared", "sst", "train")
    assert split.labels.dtype == np.int64 and split.labels.tolist() == [4, 0, 2]
    assert split.second is None and split.ids.tolist() == ["a", "b", "c"]
    expected = tokenizer("A gorgeous , witty film .", add_special_tokens=False)["input_ids"][:6]
    assert split.first.get(0).tolist() == expected  # truncated to max_length - 2
    meta = read_meta(tmp_path / "prepared", "sst")
    assert meta["max_length"] == 8 and meta["cls_id"] == tokenizer.cls_token_id and meta["absent"] is False
    assert json.loads((tmp_path / "prepared/sst/stats.json").read_text()) == stats
    assert load_prepared(tmp_path / "prepared", "sst", "test") is None


def test_npz_has_no_pickled_objects(tmp_path):
    write_sst_fixture(tmp_path / "raw")
    prepare_dataset("sst", tmp_path / "raw", tmp_path / "prepared", make_params())
    with np.load(tmp_path / "prepared/sst/train.npz", allow_pickle=False) as data:
        assert all(data[key].dtype != object for key in data.files)
    again = tmp_path / "again.npz"
    save_split(load_split(tmp_path / "prepared/sst/train.npz"), again)
    assert load_split(again).first.flat.tolist() == load_split(tmp_path / "prepared/sst/train.npz").first.flat.tolist()


def test_prepare_subset_is_a_seeded_sample_in_file_order(tmp_path):
    write_sst_fixture(tmp_path / "raw")
    stats = prepare_dataset("sst", tmp_path / "raw", tmp_path / "prepared", make_params(subset=2))
    assert stats["dev"]["rows"] == 2
    ids = load_prepared(tmp_path / "prepared", "sst", "dev").ids.tolist()
    assert len(ids) == 2 and set(ids) <= {"a", "b", "c"} and ids == sorted(ids, key="abc".index)
    prepare_dataset("sst", tmp_path / "raw", tmp_path / "again", make_params(subset=2))
    assert load_prepared(tmp_path / "again", "sst", "dev").ids.tolist() == ids


def test_prepare_dev_subset_samples_only_the_dev_split(tmp_path):
    write_sst_fixture(tmp_path / "raw")
    stats = prepare_dataset("sst", tmp_path / "raw", tmp_path / "prepared", make_params(dev_subset=2))
    assert stats["train"]["rows"] == 3 and stats["dev"]["rows"] == 2
    ids = load_prepared(tmp_path / "prepared", "sst", "dev").ids.tolist()
    assert set(ids) <= {"a", "b", "c"} and ids == sorted(ids, key="abc".index)
    # the same rows as data.subset would keep: one seeded sampler for both
    prepare_dataset("sst", tmp_path / "raw", tmp_path / "again", make_params(subset=2))
    assert load_prepared(tmp_path / "again", "sst", "dev").ids.tolist() == ids


def test_prepare_absent_extra_is_marked_not_a_crash(tmp_path):
    stats = prepare_dataset("snli", tmp_path / "raw", tmp_path / "prepared", make_params())
    assert stats == {}
    assert read_meta(tmp_path / "prepared", "snli")["absent"] is True


def test_prepare_required_dataset_missing_raises(tmp_path):
    with pytest.raises(DataError, match="required dataset sst"):
        prepare_dataset("sst", tmp_path / "raw", tmp_path / "prepared", make_params())
    with pytest.raises(DataError, match="required raw file is missing"):  # cfimdb listed as extra, dev absent
        (tmp_path / "raw/cfimdb").mkdir(parents=True)
        (tmp_path / "raw/cfimdb/ids-cfimdb-train.csv").write_text("\n".join(SST_FIXTURE[:1] + ["0\ta\tx\t1"]) + "\n")
        prepare_dataset("cfimdb", tmp_path / "raw", tmp_path / "prepared", make_params(extra=["cfimdb"]))


def test_failing_prepare_leaves_previous_output_untouched(tmp_path):
    write_sst_fixture(tmp_path / "raw")
    prepare_dataset("sst", tmp_path / "raw", tmp_path / "prepared", make_params(bad_rows="error"))
    before = {p.name: p.read_bytes() for p in (tmp_path / "prepared/sst").iterdir()}
    write_sst_fixture(tmp_path / "raw", SST_FIXTURE + ["3\td\tBroken .\t7"])
    with pytest.raises(DataError, match="ids-sst-train.csv:5: label_out_of_range"):
        prepare_dataset("sst", tmp_path / "raw", tmp_path / "prepared", make_params(bad_rows="error"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "prepared/sst").iterdir()} == before
    assert [p.name for p in (tmp_path / "prepared").iterdir()] == ["sst"]  # no temporary folder left


@needs_mirror
@pytest.mark.parametrize("dataset, labels", [
    ("cfimdb", {"0": 856, "4": 851}),
    ("snli", {"0": 6515, "1": 6697}),
])
def test_prepare_relabels_extras_from_mirror(tmp_path, dataset, labels):
    link_mirror_files(tmp_path / "raw", dataset)
    stats = prepare_dataset(dataset, tmp_path / "raw", tmp_path / "prepared", make_params(subset=0, max_length=16))
    assert stats["train"]["labels"] == labels
    assert sorted(np.unique(load_prepared(tmp_path / "prepared", dataset, "train").labels).tolist()) == \
        sorted(int(k) for k in labels)


# ------------------------------------------------------------------ batching vs the Hugging Face tokenizer


@pytest.fixture(scope="module")
def prepared_pairs(tmp_path_factory):
    """400 sampled rows of each split of the real quora, sts and sst files, prepared with max_length 128."""
    root = tmp_path_factory.mktemp("pairs")
    for dataset in ("quora", "sts", "sst"):
        link_mirror_files(root / "raw", dataset)
        prepare_dataset(dataset, root / "raw", root / "prepared", make_params(subset=400, bad_rows="skip"))
    return root / "prepared"


def _texts(prepared: PreparedSplit, n: int) -> tuple[list[str], list[str]]:
    """The raw texts of the first ``n`` prepared rows, found by id in the mirror file."""
    from palbert.data.readers import read_split

    raw = raw_file(prepared.dataset, prepared.split)
    rows = read_split(prepared.dataset, prepared.split, MIRROR / raw.mirror_path, "skip")
    where = {row_id: i for i, row_id in enumerate(rows.ids)}
    picked = [where[str(row_id)] for row_id in prepared.ids[:n]]
    return [rows.first[i] for i in picked], [(rows.second or [])[i] for i in picked] if rows.second else []


@needs_mirror
@pytest.mark.parametrize("dataset", ["quora", "sts"])
@pytest.mark.parametrize("max_length", [128, 24, 17])
def test_joint_batch_equals_hf_pair_encoding(prepared_pairs, tokenizer, dataset, max_length):
    split = load_prepared(prepared_pairs, dataset, "dev")
    special = SpecialTokens.from_meta(read_meta(prepared_pairs, dataset))
    first, second = _texts(split, len(split))
    for start in range(0, len(split), 64):
        rows = list(range(start, min(start + 64, len(split))))
        batch = make_batch(split, rows, task="para", pair_encoding="joint", special=special, max_length=max_length)
        expected = tokenizer([first[i] for i in rows], [second[i] for i in rows], truncation="longest_first",
                             max_length=max_length, padding=True, return_tensors="pt")
        assert torch.equal(batch.inputs.input_ids, expected["input_ids"])
        assert torch.equal(batch.inputs.token_type_ids, expected["token_type_ids"])
        assert torch.equal(batch.inputs.attention_mask, expected["attention_mask"])
        assert batch.inputs_b is None
        assert batch.inputs.attention_mask.sum(1).tolist() == encoded_lengths(split, max_length)[rows].tolist()


@needs_mirror
def test_separate_and_single_batches_equal_hf_encoding(prepared_pairs, tokenizer):
    split = load_prepared(prepared_pairs, "sts", "dev")
    special = SpecialTokens.from_meta(read_meta(prepared_pairs, "sts"))
    first, second = _texts(split, 32)
    batch = make_batch(split, range(32), task="sts", pair_encoding="separate", special=special, max_length=20)
    for inputs, texts in ((batch.inputs, first), (batch.inputs_b, second)):
        expected = tokenizer(texts, truncation=True, max_length=20, padding=True, return_tensors="pt")
        assert torch.equal(inputs.input_ids, expected["input_ids"])
        assert torch.equal(inputs.attention_mask, expected["attention_mask"])
        assert not inputs.token_type_ids.any()
    assert batch.labels.dtype == torch.float32 and len(batch) == 32

    sst = load_prepared(prepared_pairs, "sst", "train")
    sst_batch = make_batch(sst, [3, 1, 2], task="sst", pair_encoding="joint", special=special, max_length=128)
    sst_texts, _ = _texts(sst, 4)
    expected = tokenizer([sst_texts[i] for i in (3, 1, 2)], padding=True, return_tensors="pt")
    assert torch.equal(sst_batch.inputs.input_ids, expected["input_ids"])
    assert sst_batch.inputs.attention_mask.sum(1).tolist() == encoded_lengths(sst, 128)[[3, 1, 2]].tolist()
    assert sst_batch.labels.dtype == torch.long and sst_batch.ids == [str(sst.ids[i]) for i in (3, 1, 2)]
    assert sst_batch.to("cpu").inputs.input_ids.device.type == "cpu"


def _hand_padded(rows: list[tuple[np.ndarray, np.ndarray]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """A plain padding loop: the reference for make_batch's pad_sequence."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    token_type_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, segments) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.from_numpy(ids.astype(np.int64))
        attention_mask[r, : len(ids)] = 1
        token_type_ids[r, : len(ids)] = torch.from_numpy(segments.astype(np.int64))
    return input_ids, attention_mask, token_type_ids


@needs_mirror
@pytest.mark.parametrize("dataset", ["quora", "sts", "sst"])
@pytest.mark.parametrize("max_length", [128, 24, 17])
def test_batches_equal_the_hand_written_padding(prepared_pairs, dataset, max_length):
    """Every train row of the real files, batched by make_batch (pad_sequence) and by the old loop: the same
    input_ids / attention_mask / token_type_ids, joint and separate, with pairs cut by truncation."""
    from palbert.data.batching import _joint, _single

    split = load_prepared(prepared_pairs, dataset, "train")
    special = SpecialTokens.from_meta(read_meta(prepared_pairs, dataset))
    if split.second is not None:
        assert (split.token_lengths() + 3 > max_length).any() == (max_length < 128)
    for pair_encoding in ("joint", "separate"):
        for start in range(0, len(split), 64):
            rows = list(range(start, min(start + 64, len(split))))
            batch = make_batch(split, rows, task="sts", pair_encoding=pair_encoding, special=special,
                               max_length=max_length)
            if split.second is None:
                expected = [[_single(split.first.get(i), special, max_length) for i in rows]]
            elif pair_encoding == "joint":
                expected = [[_joint(split.first.get(i), split.second.get(i), special, max_length) for i in rows]]
            else:
                expected = [[_single(texts.get(i), special, max_length) for i in rows]
                            for texts in (split.first, split.second)]
            for inputs, reference in zip((batch.inputs, batch.inputs_b), expected):
                input_ids, attention_mask, token_type_ids = _hand_padded(reference, special.pad_id)
                assert torch.equal(inputs.input_ids, input_ids)
                assert torch.equal(inputs.attention_mask, attention_mask)
                assert torch.equal(inputs.token_type_ids, token_type_ids)
            assert (batch.inputs_b is None) == (len(expected) == 1)


@pytest.mark.parametrize("len_a, len_b, budget, expected", [
    (3, 4, 10, (3, 4)), (3, 100, 10, (3, 7)), (100, 3, 10, (7, 3)), (50, 60, 11, (5, 6)), (60, 50, 11, (6, 5)),
    (6, 6, 11, (5, 6)), (60, 50, 10, (5, 5)), (6, 100, 11, (5, 6)), (5, 100, 11, (5, 6)),
])
def test_truncate_longest_first_rule(len_a, len_b, budget, expected):
    assert truncate_longest_first(len_a, len_b, budget) == expected


def test_truncate_longest_first_matches_hf_on_every_length(tokenizer):
    """Exhaustive over lengths 1..30 and odd/even budgets: one-token words make lengths exact."""
    for max_length in (8, 9, 16, 17):
        for len_a in range(1, 31):
            for len_b in range(1, 31):
                segments = tokenizer(" ".join(["cat"] * len_a), " ".join(["dog"] * len_b),
                                     truncation="longest_first", max_length=max_length)["token_type_ids"]
                kept = (segments.count(0) - 2, segments.count(1) - 1)
                assert truncate_longest_first(len_a, len_b, max_length - 3) == kept, (max_length, len_a, len_b)


# ------------------------------------------------------------------ report


def test_data_report_merges_stats_and_writes_figure4_csv(tmp_path):
    write_sst_fixture(tmp_path / "raw")
    for dataset in ("sst", "snli"):
        prepare_dataset(dataset, tmp_path / "raw", tmp_path / "prepared", make_params())
    report = write_data_report(tmp_path / "prepared", tmp_path / "metrics/data.json",
                               tmp_path / "metrics/plots/label_distribution.csv")
    assert json.loads((tmp_path / "metrics/data.json").read_text()) == report
    assert set(report) == {"sst"}  # snli absent, quora/sts not prepared here
    assert report["sst"]["train"]["rows"] == 3
    lines = (tmp_path / "metrics/plots/label_distribution.csv").read_text().splitlines()
    assert lines[0] == "dataset_split,label,split_label,fraction" and "sst_train,0,sst_train:0,0.3333" in lines
