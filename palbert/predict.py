"""Predictions for new sentences from a trained model folder (``models/best``), without the pipeline.

New text goes through the same tokenization, batching and prediction path as the prepared dev and
test splits, so a sentence scores here exactly as it would in the ``evaluate`` stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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

#: Line ends to editors and Unicode, but not to ``palbert predict`` (which splits on ``\n`` alone, as ``wc -l`` and
#: ``sed`` count): inside an input line they would make the lines a user sees differ from the outputs, so refused.
LINE_ENDS_INSIDE = {"\r": "a carriage return (\\r) not followed by \\n",
                    "\x85": "U+0085 NEXT LINE (what `iconv -f latin1` makes of a Windows-1252 '…')",
                    "\u2028": "U+2028 LINE SEPARATOR", "\u2029": "U+2029 PARAGRAPH SEPARATOR"}
#: Shown inside the line by editors (^K, ^L ...), so kept as a word space: the tokenizer deletes control
#: characters, which would join the words on either side of a form feed into one.
SPACES = str.maketrans({"\x0b": " ", "\x0c": " ", "\x1c": " ", "\x1d": " ", "\x1e": " "})


def split_input_lines(text: str) -> list[str]:
    r"""One input per ``\n``-ended line (a final ``\r`` of ``\r\n`` dropped). Not ``str.splitlines``: it also
    ends lines at U+2028, U+0085, form feeds and more, and output line N would then answer another input line."""
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line starts no input
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


@dataclass
class LineInputs:
    """The non-blank input lines' numbers (0-based) and their sentences, in order."""

    numbers: list[int] = field(default_factory=list)
    first: list[str] = field(default_factory=list)
    second: list[str] = field(default_factory=list)


def parse_input_lines(lines: Sequence[str], task: str, source: str = "input line") -> LineInputs:
    """``lines`` as ``task`` inputs: a sentence, or two separated by a tab for pairs; a blank line is no input
    (it keeps its place in the output). A line that cannot be one input is refused, named as
    ``f"{source} {number}"`` (``standard input line 3``)."""
    inputs = LineInputs()
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        problem = _line_problem(line, task)
        if problem:
            raise ValueError(f"{source} {number + 1}: {problem}")
        parts = line.translate(SPACES).split("\t")
        inputs.numbers.append(number)
        inputs.first.append(parts[0])
        if task in PAIR_TASKS:
            inputs.second.append(parts[1])
    return inputs


def _line_problem(line: str, task: str) -> str | None:
    at = next((i for i, char in enumerate(line) if char in LINE_ENDS_INSIDE), None)
    if at is not None:
        return (f"holds {LINE_ENDS_INSIDE[line[at]]} at character {at + 1}, a line end to other tools: replace "
                "it with a space, or with a newline to make two inputs")
    parts = line.split("\t")
    if task not in PAIR_TASKS:
        return (None if len(parts) == 1 else f"holds a tab; {task} takes one sentence per line (a tab separates "
                "the two sentences of a pair, for " + " and ".join(PAIR_TASKS) + ")")
    if len(parts) != 2:
        tabs = "no tab" if len(parts) == 1 else f"{len(parts) - 1} tabs"
        return f"expected two sentences separated by a tab, got {tabs} in {line[:80]!r}"
    empty = [name for name, part in zip(("first", "second"), parts) if not part.strip()]
    return f"the {empty[0]} sentence is empty" if empty else None


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
    def predict(self, task: str, sentences: str, second: str | None = None, *,
                deadline: float | None = None) -> float: ...
    @overload
    def predict(self, task: str, sentences: Sequence[str], second: Sequence[str] | None = None, *,
                deadline: float | None = None) -> list[float]: ...

    def predict(self, task: str, sentences: str | Sequence[str],
                second: str | Sequence[str] | None = None, *, deadline: float | None = None) -> float | list[float]:
        """sst: class 0..4; para: 0/1; sts: similarity 0..5. Pair tasks need ``second``, one per sentence.

        One string (``predict("sst", "Great!")``) gives one prediction; a list gives a list (a string is a
        sequence of characters too, which would otherwise be scored one character at a time). Past ``deadline``
        (``time.monotonic()``) scoring stops between batches with a ``TimeoutError``.
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
                               progress=len(sentences) > self.settings.batch_size, deadline=deadline).predictions
        return [TASK_SPECS[task].python_value(v) for v in values]
