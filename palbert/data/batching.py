"""Turn rows of a prepared split into padded tensors for the encoder.

Padding is dynamic (to the longest row of the batch), since sentence lengths vary from 5 to 128
tokens and padding to ``max_length`` would waste most of the compute on short SST batches; it is
``torch.nn.utils.rnn.pad_sequence``.

The special tokens and the pair truncation stay written out here, on the ids that ``prepare``
tokenized once (re-tokenizing text at batch time would be slower), because the tokenizer has no
id-level API that gives the same tensors (transformers 5, checked against the embedded MiniLM):
- the fast tokenizer (``TokenizersBackend``, what ``AutoTokenizer`` and ``load_tokenizer`` return)
  has no ``prepare_for_model``, ``build_inputs_with_special_tokens``,
  ``create_token_type_ids_from_sequences`` or ``truncate_sequences``: it only encodes text;
- the Python backend (``BertTokenizerLegacy.prepare_for_model``/``truncate_sequences``) cuts a pair
  by another ``longest_first`` rule: a 6- and a 100-token text at ``max_length=14`` keep (6, 5)
  tokens there, (5, 6) with the fast tokenizer that ``prepare`` used and that the tests compare with.
``tokenizer.pad`` would pad the same way, but needs the tokenizer at batch time, where the training
loop and the evaluate stage only have meta.json's special ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from palbert.data.prepared import PreparedSplit
from palbert.tasks import TASK_SPECS


@dataclass
class SpecialTokens:
    cls_id: int
    sep_id: int
    pad_id: int

    @classmethod
    def from_meta(cls, meta: dict) -> "SpecialTokens":
        """From a prepared dataset's meta.json (what the training loop and the evaluate stage batch with)."""
        return cls(int(meta["cls_id"]), int(meta["sep_id"]), int(meta["pad_id"]))

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "SpecialTokens":
        """From a Hugging Face tokenizer (new text: prediction, the benchmark)."""
        return cls(int(tokenizer.cls_token_id), int(tokenizer.sep_token_id), int(tokenizer.pad_token_id))


@dataclass
class EncoderInputs:
    """LongTensor [B, T], padded to the longest row."""

    input_ids: Tensor
    attention_mask: Tensor
    token_type_ids: Tensor

    def to(self, device, non_blocking: bool = False) -> "EncoderInputs":
        return EncoderInputs(
            self.input_ids.to(device, non_blocking=non_blocking),
            self.attention_mask.to(device, non_blocking=non_blocking),
            self.token_type_ids.to(device, non_blocking=non_blocking),
        )


@dataclass
class TaskBatch:
    task: str
    dataset: str
    inputs: EncoderInputs  # the sentence, or the joint pair [CLS] a [SEP] b [SEP] (segment ids 0/1)
    inputs_b: EncoderInputs | None  # sentence2 alone when pair_encoding == "separate"
    labels: Tensor | None  # long for sst; float for para (0./1.) and sts
    ids: list[str]

    def to(self, device, non_blocking: bool = False) -> "TaskBatch":
        return TaskBatch(
            self.task,
            self.dataset,
            self.inputs.to(device, non_blocking),
            None if self.inputs_b is None else self.inputs_b.to(device, non_blocking),
            None if self.labels is None else self.labels.to(device, non_blocking=non_blocking),
            self.ids,
        )

    def __len__(self) -> int:
        return len(self.ids)


def truncate_longest_first(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Lengths of a and b after Hugging Face's ``truncation="longest_first"`` (the fast tokenizers' rule).

    The shorter text stays whole when it fits in half the budget and the longer one takes the rest;
    otherwise both are cut to about half, the odd token going to the longer one (to b on a tie).
    """
    if len_a + len_b <= budget:
        return len_a, len_b
    if min(len_a, len_b) * 2 <= budget:
        return (len_a, budget - len_a) if len_a <= len_b else (budget - len_b, len_b)
    half = budget // 2
    return (half, budget - half) if len_a <= len_b else (budget - half, half)


def encoded_lengths(split: PreparedSplit, max_length: int) -> np.ndarray:
    """Tokens per row as the joint encoding feeds them to the model ([CLS] a [SEP] (b [SEP]), truncated to
    ``max_length``): the real, non-padding tokens a batch of these rows costs."""
    specials = 2 if split.second is None else 3
    return np.minimum(split.token_lengths() + specials, max_length)


def _pad(rows: list[tuple[np.ndarray, np.ndarray]], pad_id: int) -> EncoderInputs:
    """(token ids, segment ids) per row -> padded tensors with an attention mask."""
    ids = [torch.from_numpy(row.astype(np.int64)) for row, _ in rows]
    segments = [torch.from_numpy(seg.astype(np.int64)) for _, seg in rows]
    return EncoderInputs(
        pad_sequence(ids, batch_first=True, padding_value=pad_id),
        pad_sequence([torch.ones_like(row) for row in ids], batch_first=True, padding_value=0),
        pad_sequence(segments, batch_first=True, padding_value=0),
    )


def _single(tokens: np.ndarray, special: SpecialTokens, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.concatenate(([special.cls_id], tokens[: max_length - 2], [special.sep_id]))
    return ids, np.zeros(len(ids), dtype=np.int64)


def _joint(a: np.ndarray, b: np.ndarray, special: SpecialTokens, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    keep_a, keep_b = truncate_longest_first(len(a), len(b), max_length - 3)
    ids = np.concatenate(([special.cls_id], a[:keep_a], [special.sep_id], b[:keep_b], [special.sep_id]))
    segments = np.concatenate((np.zeros(keep_a + 2, dtype=np.int64), np.ones(keep_b + 1, dtype=np.int64)))
    return ids, segments


def make_batch(
    split: PreparedSplit,
    indices: Sequence[int],
    *,
    task: str,
    pair_encoding: str,
    special: SpecialTokens,
    max_length: int,
) -> TaskBatch:
    """Rows ``indices`` of ``split`` as one padded batch for ``task``'s head."""
    if pair_encoding not in ("joint", "separate"):
        raise ValueError(f"pair_encoding must be joint or separate, got {pair_encoding!r}")
    rows = [int(i) for i in indices]
    inputs_b = None
    if split.second is None:
        inputs = _pad([_single(split.first.get(i), special, max_length) for i in rows], special.pad_id)
    elif pair_encoding == "joint":
        inputs = _pad([_joint(split.first.get(i), split.second.get(i), special, max_length) for i in rows],
                      special.pad_id)
    else:
        inputs = _pad([_single(split.first.get(i), special, max_length) for i in rows], special.pad_id)
        inputs_b = _pad([_single(split.second.get(i), special, max_length) for i in rows], special.pad_id)
    labels = None
    if split.labels is not None:
        picked = torch.from_numpy(np.asarray(split.labels[rows]))
        labels = picked.long() if TASK_SPECS[task].long_targets else picked.float()
    return TaskBatch(task, split.dataset, inputs, inputs_b, labels, [str(split.ids[i]) for i in rows])
