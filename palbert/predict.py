"""Predictions for new sentences from a trained model folder (``models/best``), without the pipeline.

New text goes through the same tokenization, batching and prediction path as the prepared dev and
test splits, so a sentence scores here exactly as it would in the ``evaluate`` stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, overload

import numpy as np
import torch

from palbert.config import INT8
from palbert.data.batching import SpecialTokens
from palbert.data.prepare import tokenize
from palbert.data.prepared import PreparedSplit
from palbert.scoring import EvalSettings, predict_split
from palbert.model import MultitaskBert, load_model
from palbert.precision import default_device, resolve_precision
from palbert.quantize import quantize_linear_int8
from palbert.tasks import PAIR_TASKS, TASK_SPECS, TASKS


@dataclass
class Predictor:
    model: MultitaskBert
    tokenizer: object
    settings: EvalSettings

    @classmethod
    def load(cls, folder: str | Path, *, max_length: int = 128, batch_size: int = 64,
             precision: str = "auto", device: str | None = None) -> "Predictor":
        """``precision``: auto, bf16, fp32, or int8 (CPU only: linear layers in int8, ``palbert.quantize``)."""
        target = torch.device(device) if device else (torch.device("cpu") if precision == INT8 else default_device())
        model, tokenizer = load_model(folder)
        model.to(target).eval()
        settings = EvalSettings(
            pair_encoding=model.params.pair_encoding,
            special=SpecialTokens.from_tokenizer(tokenizer),
            max_length=max_length, batch_size=batch_size, device=target,
            precision="fp32" if precision == INT8 else resolve_precision(precision, target),
        )
        if precision == INT8:
            model = quantize_linear_int8(model)
        return cls(model, tokenizer, settings)

    @overload
    def predict(self, task: str, sentences: str, second: str | None = None) -> float: ...
    @overload
    def predict(self, task: str, sentences: Sequence[str], second: Sequence[str] | None = None) -> list[float]: ...

    def predict(self, task: str, sentences: str | Sequence[str],
                second: str | Sequence[str] | None = None) -> float | list[float]:
        """sst: class 0..4; para: 0/1; sts: similarity 0..5. Pair tasks need ``second``, one per sentence.

        One string (``predict("sst", "Great!")``) gives one prediction; a list gives a list (a string is a
        sequence of characters too, which would otherwise be scored one character at a time).
        """
        if isinstance(sentences, str):
            if second is not None and not isinstance(second, str):
                raise ValueError("one first sentence but a list of second sentences")
            return self.predict(task, [sentences], None if second is None else [second])[0]
        if isinstance(second, str):
            raise ValueError("a list of first sentences but one second sentence")
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        if (task in PAIR_TASKS) != (second is not None):
            raise ValueError(f"task {task} takes {'sentence pairs' if task in PAIR_TASKS else 'single sentences'}")
        if second is not None and len(second) != len(sentences):
            raise ValueError(f"{len(sentences)} first sentences but {len(second)} second sentences")
        if any(not s.strip() for s in [*sentences, *(second or [])]):
            raise ValueError("empty sentence")
        max_tokens = self.settings.max_length - 2
        split = PreparedSplit(
            dataset=task, split="input", ids=np.asarray([str(i) for i in range(len(sentences))], dtype=str),
            first=tokenize(self.tokenizer, list(sentences), max_tokens, "tokenize"),
            second=None if second is None else tokenize(self.tokenizer, list(second), max_tokens, "tokenize"),
            labels=None,
        )
        # one batch (a few sentences) draws no bar, however long a busy machine takes over it
        values = predict_split(self.model, split, task, self.settings,
                               progress=len(sentences) > self.settings.batch_size).predictions
        return [TASK_SPECS[task].python_value(v) for v in values]
