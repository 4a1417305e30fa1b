"""Readers for the raw files: CS224N tab-separated files and SNLI JSON lines, validated row by row.

Every bad row is reported with its file, line and reason. ``data.bad_rows`` decides what happens:
``error`` raises one ``DataError`` listing them (nothing is written downstream), ``skip`` drops them
and counts them by reason so the count reaches ``metrics/data.json``. Relabelling lives here too,
because it is part of what a row *means*: SNLI entailment -> 1, contradiction -> 0 (neutral and
``-`` are dropped and counted, not bad); CFIMDB 0/1 -> 0/4 (the SST scale).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
from palbert.errors import DataError  # noqa: F401 - raised here, caught by palbert.stage
from palbert.tasks import TASK_SPECS

log = logging.getLogger(__name__)

BadRowPolicy = Literal["error", "skip"]

# Reasons a row is bad (the keys of the "skipped" counts).
MALFORMED_ROW = "malformed_row"  # wrong column count, or a JSON line that is not an object
MISSING_COLUMN = "missing_column"  # a JSON line without a required field
UNDECODABLE_BYTES = "undecodable_bytes"
EMPTY_ID = "empty_id"
DUPLICATE_ID = "duplicate_id"
EMPTY_SENTENCE = "empty_sentence"
EMPTY_LABEL = "empty_label"
NON_NUMERIC_LABEL = "non_numeric_label"
LABEL_OUT_OF_RANGE = "label_out_of_range"
FIELD_TOO_LONG = "field_too_long"

#: Longest field a raw file may hold, in characters (the csv module's own default limit; the longest
#: CS224N field, a CFIMDB review, has about 6,000). A longer one is a bad row, not a stopped stage.
MAX_FIELD_CHARS = 131_072

#: How many bad rows an error message or a skip notice spells out before summarising.
_SHOWN_BAD_ROWS = 10



@dataclass
class RawSplit:
    """The validated rows of one raw file, labels already on the training scale."""

    dataset: str
    split: str
    path: Path
    ids: list[str] = field(default_factory=list)
    first: list[str] = field(default_factory=list)
    second: list[str] | None = None
    labels: list[int] | list[float] | None = None
    #: Bad rows dropped under ``bad_rows=skip``, by reason.
    skipped: Counter = field(default_factory=Counter)
    #: Good rows dropped by a relabelling rule (SNLI neutral and ``-``), by raw label.
    dropped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.ids)

    def sample(self, n: int, seed: int = 0) -> "RawSplit":
        """``n`` rows drawn at random, kept in file order (for ``data.subset``).

        A random sample, not the first rows: the raw files are not shuffled (the first 400 SST dev
        rows are mostly positive), and a quick run should see the real label mix. Counts of
        skipped/dropped rows are kept as read.
        """
        if n >= len(self):
            return self
        keep = sorted(np.random.default_rng(seed).choice(len(self), size=n, replace=False).tolist())

        def pick(values: list | None) -> list | None:
            return None if values is None else [values[i] for i in keep]

        return RawSplit(self.dataset, self.split, self.path, pick(self.ids), pick(self.first),
                        pick(self.second), pick(self.labels), Counter(self.skipped), Counter(self.dropped))


class _BadLabel(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _number(text: str) -> float:
    text = text.strip()
    if not text:
        raise _BadLabel(EMPTY_LABEL, "the label is empty")
    try:
        value = float(text)
    except ValueError:
        fix = f" (a decimal comma? write {text.replace(',', '.')})" if text.count(",") == 1 else ""
        raise _BadLabel(NON_NUMERIC_LABEL, f"label {text!r} is not a number{fix}") from None
    if not math.isfinite(value):
        raise _BadLabel(NON_NUMERIC_LABEL, f"label {text!r} is not a finite number")
    return value


def class_label(n_classes: int, scale: int = 1) -> Callable[[str], int]:
    """Parser of an integer class 0..n-1 (written ``3`` or ``3.0``), multiplied by ``scale``."""

    def parse(text: str) -> int:
        value = _number(text)
        if not value.is_integer() or not 0 <= value < n_classes:
            raise _BadLabel(LABEL_OUT_OF_RANGE, f"label {text.strip()!r} is not a class in 0..{n_classes - 1}")
        return int(value) * scale

    return parse


def score_label(low: float, high: float) -> Callable[[str], float]:
    """Parser of a real-valued score in [low, high]."""

    def parse(text: str) -> float:
        value = _number(text)
        if not low <= value <= high:
            raise _BadLabel(LABEL_OUT_OF_RANGE, f"label {text.strip()!r} is outside {low:g}..{high:g}")
        return value

    return parse


@dataclass(frozen=True)
class TsvLayout:
    """Which named columns of a CS224N file hold the texts and the label, and how to read the label."""

    text_columns: tuple[str, ...]
    label_column: str
    parse_label: Callable[[str], int | float]


TSV_LAYOUTS: dict[str, TsvLayout] = {
    "sst": TsvLayout(("sentence",), "sentiment", class_label(TASK_SPECS["sst"].classes)),
    # CFIMDB is binary; x4 puts it on the SST scale (0 = very negative, 4 = very positive), paper 4.1.
    "cfimdb": TsvLayout(("sentence",), "sentiment", class_label(2, scale=4)),
    "quora": TsvLayout(("sentence1", "sentence2"), "is_duplicate", class_label(2)),
    "sts": TsvLayout(("sentence1", "sentence2"), "similarity", score_label(*TASK_SPECS["sts"].score_range)),
}

#: SNLI gold labels as paraphrase labels; the others are dropped (neutral, and ``-`` = no majority).
SNLI_LABELS: dict[str, int] = {"entailment": 1, "contradiction": 0}
SNLI_DROPPED: tuple[str, ...] = ("neutral", "-")


class _BadRows:
    """Collects the bad rows of one file and applies the policy once the file is read."""

    def __init__(self, path: Path, policy: BadRowPolicy):
        self.path, self.policy = path, policy
        self.rows: list[tuple[int, str, str]] = []

    def add(self, line: int, reason: str, detail: str) -> None:
        self.rows.append((line, reason, detail))

    def _listing(self) -> str:
        shown = [f"  {self.path}:{line}: {reason}: {detail}" for line, reason, detail in self.rows[:_SHOWN_BAD_ROWS]]
        if len(self.rows) > _SHOWN_BAD_ROWS:
            shown.append(f"  ... and {len(self.rows) - _SHOWN_BAD_ROWS} more")
        return "\n".join(shown)

    def finish(self) -> Counter:
        """Raise under ``error``; under ``skip`` log and return the counts by reason."""
        counts = Counter(reason for _, reason, _ in self.rows)
        if not self.rows:
            return counts
        if self.policy == "error":
            raise DataError(
                f"{self.path}: {len(self.rows)} bad rows ({dict(counts)}); data.bad_rows=error stops here "
                f"(set data.bad_rows: skip to drop and count them):\n{self._listing()}"
            )
        log.warning("%s: skipped %d bad rows %s:\n%s", self.path, len(self.rows), dict(counts), self._listing())
        return counts


def _has_undecodable(text: str) -> bool:
    """True when decoding with ``surrogateescape`` had to escape a byte that is not UTF-8."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _read_text(path: Path) -> str:
    """The file as text: UTF-8 (a byte-order mark is dropped; bytes that are not UTF-8 are kept escaped so
    that their rows can be reported) or, with a UTF-16 byte-order mark (a spreadsheet's "Unicode text"), UTF-16."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: starts like UTF-16 but is not ({exc.reason}); save it as UTF-8") from None
    return data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


@contextlib.contextmanager
def _no_csv_field_limit() -> Iterator[None]:
    """Let ``csv`` read fields of any length, so that an over-long one becomes a counted bad row
    (``MAX_FIELD_CHARS``) instead of a ``csv.Error`` that stops the whole file."""
    previous = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _header_columns(path: Path, header: list[str], needed: tuple[str, ...]) -> dict[str, int]:
    """Where each needed column is; names are matched without surrounding blanks. Raises on missing or twice-named ones."""
    names = [name.strip() for name in header]
    missing = [name for name in needed if name not in names]
    if missing:
        # A file-level problem: no row could be read, so it stops the stage under either policy.
        commas = " (this one is comma-separated: export with tabs)" if len(header) == 1 and "," in header[0] else ""
        raise DataError(f"{path}:1: missing column(s) {', '.join(missing)} (header has {header}); the first line "
                        f"must be the tab-separated header naming {', '.join(needed)}{commas}")
    for name in needed:
        where = [i + 1 for i, other in enumerate(names) if other == name]
        if len(where) > 1:
            raise DataError(f"{path}:1: column {name!r} appears {len(where)} times in the header (columns "
                            f"{', '.join(map(str, where))}); rename or remove all but one")
    return {name: names.index(name) for name in needed}


def _runaway_quote(row: list[str]) -> bool:
    """A field holding both a line break and a tab: a quote that opened and never closed swallowed later rows."""
    return any("\n" in cell and "\t" in cell for cell in row)


def read_tsv(path: Path, dataset: str, split: str, policy: BadRowPolicy) -> RawSplit:
    """Read a CS224N file: tab-separated, a header line, quoted the way ``csv``/pandas write it.

    Columns are found by name, so both header layouts work (train/dev: ``<blank> id sentence ...``;
    SST/CFIMDB test-student: ``0 <blank> id sentence``). The test split has no label column.
    """
    with _no_csv_field_limit():
        return _read_tsv(path, dataset, split, policy)


def _read_tsv(path: Path, dataset: str, split: str, policy: BadRowPolicy) -> RawSplit:
    layout = TSV_LAYOUTS[dataset]
    labelled = split != "test"
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter="\t")
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty file (no header line)") from None
    except csv.Error as exc:
        raise DataError(f"{path}:1: unreadable header: {exc}") from None
    needed = ("id", *layout.text_columns) + ((layout.label_column,) if labelled else ())
    col = _header_columns(path, header, needed)

    out = RawSplit(dataset, split, path, second=[] if len(layout.text_columns) == 2 else None,
                   labels=[] if labelled else None)
    bad = _BadRows(path, policy)
    seen_ids: set[str] = set()
    last_line = reader.line_num
    while True:
        line = last_line + 1  # a quoted field may span lines: report where the row starts
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"{path}:{line}: unreadable row: {exc}") from None
        last_line = reader.line_num
        if not row:  # a blank line (e.g. at the end of an export) holds no row
            continue
        if any(_has_undecodable(cell) for cell in row):
            bad.add(line, UNDECODABLE_BYTES, "bytes that are not valid UTF-8")
            continue
        if _runaway_quote(row):
            bad.add(line, MALFORMED_ROW, f'a quote (") opened here is never closed: this row runs to line '
                                         f"{last_line}; close the quote or remove it")
            continue
        longest = max(range(len(row)), key=lambda i: len(row[i]))
        if len(row[longest]) > MAX_FIELD_CHARS:
            bad.add(line, FIELD_TOO_LONG, f"column {longest + 1} holds {len(row[longest]):,} characters, "
                                          f"more than the {MAX_FIELD_CHARS:,} a field may have")
            continue
        if len(row) != len(header):
            bad.add(line, MALFORMED_ROW, f"{len(row)} columns, the header has {len(header)}")
            continue
        row_id = row[col["id"]].strip()
        texts = [row[col[name]].strip() for name in layout.text_columns]
        if not row_id:
            bad.add(line, EMPTY_ID, "the id is empty")
            continue
        empty = [name for name, text in zip(layout.text_columns, texts) if not text]
        if empty:
            bad.add(line, EMPTY_SENTENCE, f"{', '.join(empty)} is empty")
            continue
        if labelled:
            try:
                label = layout.parse_label(row[col[layout.label_column]])
            except _BadLabel as exc:
                bad.add(line, exc.reason, str(exc))
                continue
        if row_id in seen_ids:
            bad.add(line, DUPLICATE_ID, f"id {row_id} already appeared earlier in the file")
            continue
        seen_ids.add(row_id)
        out.ids.append(row_id)
        out.first.append(texts[0])
        if out.second is not None:
            out.second.append(texts[1])
        if out.labels is not None:
            out.labels.append(label)
    out.skipped = bad.finish()
    return out


def read_snli(path: Path, policy: BadRowPolicy, split: str = "train") -> RawSplit:
    """Read SNLI 1.0 JSON lines (official field names; extra fields such as parses are ignored).

    Ids are the official ``pairID`` when present, else ``line<N>``.
    """
    out = RawSplit("snli", split, path, second=[], labels=[])
    bad = _BadRows(path, policy)
    seen_ids: set[str] = set()
    # Streamed in binary: the official train file is ~470 MB, and binary lines end at b"\n" only
    # (str.splitlines would also split inside JSON strings holding U+2028 and friends).
    try:
        stream = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    with stream:
        for line, data in enumerate(stream, start=1):
            if line == 1:
                data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
            if data.strip():  # blank lines hold no record
                _read_snli_record(data, line, out, bad, seen_ids)
    out.skipped = bad.finish()
    if out.dropped:
        log.info("%s: dropped %s (not paraphrase labels)", path, dict(out.dropped))
    return out


def _read_snli_record(data: bytes, line: int, out: RawSplit, bad: _BadRows, seen_ids: set[str]) -> None:
    """Append one SNLI line to ``out``, or count it as dropped (neutral, ``-``), or record why it is bad."""
    try:
        record = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        return bad.add(line, UNDECODABLE_BYTES, "bytes that are not valid UTF-8")
    except json.JSONDecodeError as exc:
        return bad.add(line, MALFORMED_ROW, f"not a JSON object ({exc.msg})")
    if not isinstance(record, dict):
        return bad.add(line, MALFORMED_ROW, "not a JSON object")
    absent = [name for name in ("gold_label", "sentence1", "sentence2") if name not in record]
    if absent:
        return bad.add(line, MISSING_COLUMN, f"no field {', '.join(absent)}")
    gold, first, second = record["gold_label"], record["sentence1"], record["sentence2"]
    if not all(isinstance(value, str) for value in (gold, first, second)):
        return bad.add(line, MALFORMED_ROW, "gold_label, sentence1 and sentence2 must be strings")
    if gold in SNLI_DROPPED:
        out.dropped[gold] += 1
        return None
    if gold not in SNLI_LABELS:
        return bad.add(line, LABEL_OUT_OF_RANGE, f"gold_label {gold!r} is not entailment, contradiction, neutral or -")
    first, second = first.strip(), second.strip()
    longest = max(len(first), len(second))
    if longest > MAX_FIELD_CHARS:
        return bad.add(line, FIELD_TOO_LONG, f"a sentence holds {longest:,} characters, more than the "
                                             f"{MAX_FIELD_CHARS:,} a field may have")
    empty = [name for name, value in (("sentence1", first), ("sentence2", second)) if not value]
    if empty:
        return bad.add(line, EMPTY_SENTENCE, f"{', '.join(empty)} is empty")
    pair_id = str(record.get("pairID") or f"line{line}")
    if pair_id in seen_ids:
        return bad.add(line, DUPLICATE_ID, f"pairID {pair_id} already appeared earlier in the file")
    seen_ids.add(pair_id)
    out.ids.append(pair_id)
    out.first.append(first)
    out.second.append(second)
    out.labels.append(SNLI_LABELS[gold])
    return None


def read_split(dataset: str, split: str, path: Path, policy: BadRowPolicy) -> RawSplit:
    """Read one raw file of ``dataset`` with the reader its format needs."""
    if dataset == "snli":
        return read_snli(path, policy, split)
    return read_tsv(path, dataset, split, policy)
