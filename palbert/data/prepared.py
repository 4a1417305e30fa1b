"""The prepared form of a split: token ids computed once by ``prepare``, read quickly by training.

Texts are stored ragged (one flat id array plus offsets) without special tokens, so that the batcher
can build either a single input, a joint pair or two separate inputs from the same file. Files are
``.npz`` with plain arrays only, loaded with ``allow_pickle=False``: a prepared file cannot run code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from palbert.atomic import atomic_path

META_FILE = "meta.json"
STATS_FILE = "stats.json"


@dataclass
class TokenizedTexts:
    """Ragged token ids WITHOUT special tokens, each text truncated to ``max_length - 2``."""

    flat: np.ndarray  # int32
    offsets: np.ndarray  # int64, len(n) + 1

    @classmethod
    def from_lists(cls, token_ids: Sequence[Sequence[int]]) -> "TokenizedTexts":
        lengths = np.fromiter((len(ids) for ids in token_ids), dtype=np.int64, count=len(token_ids))
        offsets = np.zeros(len(token_ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((t for ids in token_ids for t in ids), dtype=np.int32, count=int(offsets[-1]))
        return cls(flat, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass
class PreparedSplit:
    dataset: str
    split: str
    ids: np.ndarray  # str ids from the raw file
    first: TokenizedTexts  # sentence / sentence1
    second: TokenizedTexts | None  # sentence2 for pair datasets
    labels: np.ndarray | None  # int64 (sst 0..4, cfimdb 0/4, quora/snli 0/1) or float32 (sts 0..5); None for test

    def __len__(self) -> int:
        return len(self.ids)

    def token_lengths(self) -> np.ndarray:
        """Tokens per row (both sentences of a pair): what batching by similar length sorts on."""
        lengths = self.first.lengths()
        return lengths if self.second is None else lengths + self.second.lengths()


def save_split(split: PreparedSplit, path: Path) -> None:
    """Write one split as ``.npz`` atomically (plain arrays only)."""
    arrays: dict[str, np.ndarray] = {
        "dataset": np.array(split.dataset),
        "split": np.array(split.split),
        "ids": np.asarray(split.ids, dtype=str),
        "first_flat": split.first.flat.astype(np.int32, copy=False),
        "first_offsets": split.first.offsets.astype(np.int64, copy=False),
    }
    if split.second is not None:
        arrays["second_flat"] = split.second.flat.astype(np.int32, copy=False)
        arrays["second_offsets"] = split.second.offsets.astype(np.int64, copy=False)
    if split.labels is not None:
        arrays["labels"] = split.labels
    with atomic_path(path) as tmp, tmp.open("wb") as fp:  # a file object: np.savez adds no suffix
        np.savez(fp, **arrays)


def load_split(path: Path) -> PreparedSplit:
    with np.load(path, allow_pickle=False) as data:
        second = TokenizedTexts(data["second_flat"], data["second_offsets"]) if "second_flat" in data else None
        return PreparedSplit(
            dataset=str(data["dataset"]),
            split=str(data["split"]),
            ids=data["ids"],
            first=TokenizedTexts(data["first_flat"], data["first_offsets"]),
            second=second,
            labels=data["labels"] if "labels" in data else None,
        )


def split_path(root: Path, dataset: str, split: str) -> Path:
    return Path(root) / dataset / f"{split}.npz"


def load_prepared(root: Path, dataset: str, split: str) -> PreparedSplit | None:
    """The prepared split, or None when it was not prepared (raw file absent)."""
    path = split_path(root, dataset, split)
    return load_split(path) if path.is_file() else None


def read_meta(root: Path, dataset: str) -> dict:
    """``{"tokenizer", "max_length", "cls_id", "sep_id", "pad_id", ...}``; ``{"absent": true}`` when not prepared."""
    return json.loads((Path(root) / dataset / META_FILE).read_text(encoding="utf-8"))
