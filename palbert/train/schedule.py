"""The learning-rate schedule (paper 4.1, LR Warmup / Decay), built from transformers' own schedules.

``stlr`` is the slanted triangular schedule of Howard and Ruder (2018) as the paper uses it: the LR rises
linearly from 0 at step 0 to the peak at ``warmup_steps``, then falls linearly to 0 at ``total_steps``:
exactly ``transformers.get_linear_schedule_with_warmup``. ``constant`` is ``get_constant_schedule``.
LambdaLR calls the multiplier with the number of scheduler steps taken so far, so step 0 is the
multiplier of the first optimizer step.

Their multipliers keep no state of their own in the scheduler's state_dict, so a resumed run always follows
the schedule of its current params rather than a saved copy.
"""

from __future__ import annotations

import math
import typing

import torch
from transformers import get_constant_schedule, get_linear_schedule_with_warmup

from palbert.config import TrainParams

#: ``train.schedule``'s choices, as config.py declares them.
SCHEDULE_KINDS: tuple[str, ...] = typing.get_args(typing.get_type_hints(TrainParams)["schedule"])


def warmup_steps(total_steps: int, warmup_fraction: float) -> int:
    """``warmup_fraction * total_steps`` rounded half up (Python's round would send 0.5 to 0)."""
    return min(total_steps, int(math.floor(warmup_fraction * total_steps + 0.5)))


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int,
                   warmup_fraction: float) -> torch.optim.lr_scheduler.LambdaLR:
    """The LR schedule ``kind`` over a run of ``total_steps`` optimizer steps."""
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"schedule {kind!r}: must be one of {', '.join(SCHEDULE_KINDS)}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_fraction <= 1:
        raise ValueError(f"warmup_fraction must be in [0, 1], got {warmup_fraction}")
    if kind == "constant":
        return get_constant_schedule(optimizer)
    return get_linear_schedule_with_warmup(optimizer, warmup_steps(total_steps, warmup_fraction), total_steps)
