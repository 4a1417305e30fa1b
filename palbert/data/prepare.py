"""The ``prepare@<dataset>`` stage: read and validate every split, tokenize once, write the prepared form.

All of a dataset's outputs (``<split>.npz``, ``meta.json``, ``stats.json``) are built in a temporary
folder and swapped in with one rename, so a bad row under ``bad_rows=error`` or an interruption leaves
the previous output untouched.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from palbert.atomic import atomic_dir
from palbert.config import Params
from palbert.data.prepared import META_FILE, STATS_FILE, PreparedSplit, TokenizedTexts, save_split
from palbert.data.readers import UNDECODABLE_BYTES, DataError, RawSplit, read_split
from palbert.data.sources import RAW_FILES, is_required, not_a_file
from palbert.paths import PARAMS, PREPARED, RAW
from palbert.encoder_source import load_tokenizer
from palbert.settings_guard import load_guarded
from palbert.tasks import DATASETS, dataset_spec

log = logging.getLogger(__name__)

#: A split that ``bad_rows: skip`` leaves with less than this fraction of its rows gets a loud warning:
#: most of the file being bad usually means a wrong file or encoding, not a few bad rows.
LOUD_SKIP_FRACTION = 0.5

#: Texts per tokenizer call: large enough for the fast tokenizer's batching, small enough for a progress bar.
_TOKENIZE_CHUNK = 2048


def tokenize(tokenizer, texts: Sequence[str], max_tokens: int, desc: str) -> TokenizedTexts:
    """Token ids without special tokens, each truncated to ``max_tokens``."""
    token_ids: list[list[int]] = []
    with tqdm(total=len(texts), desc=desc, unit="text", leave=False, delay=2) as bar:  # no bar for a few texts
        for start in range(0, len(texts), _TOKENIZE_CHUNK):
            chunk = list(texts[start:start + _TOKENIZE_CHUNK])
            encoded = tokenizer(chunk, add_special_tokens=False, truncation=True, max_length=max_tokens)
            token_ids.extend(encoded["input_ids"])
            bar.update(len(chunk))
    return TokenizedTexts.from_lists(token_ids)


def label_counts(dataset: str, labels: Sequence[int] | Sequence[float] | None) -> dict[str, int]:
    """Count per class; for STS a histogram of scores rounded to the nearest integer."""
    if labels is None:
        return {}
    if not dataset_spec(dataset).integer_labels:
        counts = Counter(int(np.floor(score + 0.5)) for score in labels)
    else:
        counts = Counter(int(label) for label in labels)
    return {str(label): counts[label] for label in sorted(counts)}


def split_stats(raw: RawSplit) -> dict:
    return {
        "rows": len(raw),
        "labels": label_counts(raw.dataset, raw.labels),
        "skipped": dict(sorted(raw.skipped.items())),
        "dropped": dict(sorted(raw.dropped.items())),
    }


def check_rows(raw: RawSplit, required: bool) -> None:
    """A required split without rows stops the stage; one that ``skip`` reduced to a fraction is shouted about."""
    skipped = sum(raw.skipped.values())
    read = len(raw) + skipped
    if len(raw) == 0 and required:
        why = (f"all {skipped} rows are bad and were skipped ({dict(raw.skipped)})" if skipped
               else "the file has a header but no rows")
        raise DataError(f"{raw.path}: the required {raw.split} split has no usable rows: {why}; "
                        "check that it is the right file")
    if len(raw) == 0:
        log.warning("%s: the %s split has no rows", raw.path, raw.split)
    elif skipped and len(raw) < LOUD_SKIP_FRACTION * read:
        hint = (" (most rows are not UTF-8: re-save the file as UTF-8)"
                if raw.skipped.get(UNDECODABLE_BYTES, 0) * 2 > skipped else "")
        log.warning("!!! %s: bad_rows=skip kept only %d of %d rows (%.0f %%): %d skipped %s%s. Is it the right "
                       "file? !!!", raw.path, len(raw), read, 100 * len(raw) / read, skipped, dict(raw.skipped), hint)


def _to_prepared(raw: RawSplit, tokenizer, max_length: int) -> PreparedSplit:
    desc = f"{raw.dataset}-{raw.split}"
    labels = None
    if raw.labels is not None:
        labels = np.asarray(raw.labels, dtype=dataset_spec(raw.dataset).label_dtype)
    return PreparedSplit(
        dataset=raw.dataset,
        split=raw.split,
        ids=np.asarray(raw.ids, dtype=str),
        first=tokenize(tokenizer, raw.first, max_length - 2, desc),
        second=None if raw.second is None else tokenize(tokenizer, raw.second, max_length - 2, desc + " (sentence2)"),
        labels=labels,
    )


def _meta(params: Params, tokenizer) -> dict:
    return {
        "tokenizer": params.model.pretrained,
        "vocab_size": len(tokenizer),
        "cls_id": tokenizer.cls_token_id,
        "sep_id": tokenizer.sep_token_id,
        "pad_id": tokenizer.pad_token_id,
        "max_length": params.data.max_length,
        "absent": False,
    }


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def prepare_dataset(dataset: str, raw_root: Path, out_root: Path, params: Params) -> dict:
    """Prepare every split of ``dataset`` found in ``raw_root/<dataset>/``; returns ``{split: stats}``.

    Missing optional files are skipped with a notice; a missing required file raises ``DataError``.
    When no raw file of the dataset is present (an extra that was not fetched), ``meta.json`` says
    ``"absent": true`` and no split is written.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    raw_dir = Path(raw_root) / dataset
    for raw in RAW_FILES[dataset]:
        if why := not_a_file(raw_dir / raw.name):
            raise DataError(f"{raw_dir / raw.name}: {why}; put the raw file itself there (`dvc repro fetch` does)")
    present = [raw for raw in RAW_FILES[dataset] if (raw_dir / raw.name).is_file()]
    for raw in RAW_FILES[dataset]:
        if raw in present:
            continue
        if present and is_required(raw, params):
            raise DataError(f"{raw_dir / raw.name}: required raw file is missing (run the fetch stage)")
        log.info("%s: no %s split (%s absent)", dataset, raw.split, raw_dir / raw.name)

    stats: dict[str, dict] = {}
    with atomic_dir(Path(out_root) / dataset) as tmp:
        if not present:
            if any(is_required(raw, params) for raw in RAW_FILES[dataset]):
                raise DataError(f"{raw_dir}: no raw files of the required dataset {dataset} (run the fetch stage)")
            log.warning("%s: no raw files in %s; writing an empty prepared folder marked absent", dataset, raw_dir)
            _write_json(tmp / META_FILE, {"tokenizer": params.model.pretrained, "absent": True})
            _write_json(tmp / STATS_FILE, {})
            return stats
        tokenizer = load_tokenizer(params.model.pretrained)
        for source in present:
            raw = read_split(dataset, source.split, raw_dir / source.name, params.data.bad_rows)
            check_rows(raw, is_required(source, params))
            if params.data.subset > 0:
                raw = raw.sample(params.data.subset)
            if source.split == "dev" and params.data.dev_subset > 0:
                raw = raw.sample(params.data.dev_subset)
            save_split(_to_prepared(raw, tokenizer, params.data.max_length), tmp / f"{source.split}.npz")
            stats[source.split] = split_stats(raw)
            log.info("%s %s: %d rows, labels %s, skipped %s, dropped %s", dataset, source.split,
                        *(stats[source.split][key] for key in ("rows", "labels", "skipped", "dropped")))
        _write_json(tmp / META_FILE, {**_meta(params, tokenizer), "splits": list(stats)})
        _write_json(tmp / STATS_FILE, stats)
    return stats


def prepare_stage(dataset: str) -> None:
    """The ``prepare@<dataset>`` stage (``stages/prepare.py``): ``data/raw/<dataset>/`` -> ``data/prepared/<dataset>/``."""
    params, guard = load_guarded(PARAMS)
    stats = prepare_dataset(dataset, RAW, PREPARED, params)
    guard.check("at the end of the stage")
    rows = ", ".join(f"{split} {s['rows']} rows" for split, s in stats.items()) or "absent (no raw files)"
    log.info("prepare@%s: %s", dataset, rows)
