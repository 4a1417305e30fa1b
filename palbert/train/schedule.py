"""Learning rates: the schedule over steps (paper 4.1, LR Warmup / Decay), built from transformers' own
schedules, and the optional rates per parameter group (``parameter_groups``).

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
from torch import nn
from transformers import get_constant_schedule, get_linear_schedule_with_warmup

from palbert.config import TrainParams

#: Parameter-name prefixes of MultitaskBert's parts (``model/multitask.py``, ``model/encoder.py``).
_EMBEDDINGS, _LAYERS, _PALS, _HEADS = "bert.embeddings.", "bert.encoder.layer.", "bert.pals.", "heads."

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


def parameter_groups(model: nn.Module, settings: TrainParams) -> list[nn.Parameter] | list[dict]:
    """The trainable parameters as AdamW's groups: all at ``train.lr`` (a plain list, as before the per-group
    knobs), or, with ``train.head_lr_multiplier`` / ``train.layer_lr_decay`` set, one group per rate.

    Encoder layer k of L (0-based) trains at ``lr * decay ** (L - 1 - k)``, the embeddings at ``lr * decay ** L``,
    the pooler at ``lr``; the heads and every PAL at ``lr * head_lr_multiplier``. Groups keep the model's
    parameter order, the group at ``lr`` first (the LR that the training log reports).
    """
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if settings.head_lr_multiplier == 1.0 and settings.layer_lr_decay == 1.0:
        return [p for _, p in trainable]
    layers = 1 + max((int(name[len(_LAYERS):].split(".")[0]) for name, _ in model.named_parameters()
                      if name.startswith(_LAYERS)), default=-1)

    def scale(name: str) -> float:
        if name.startswith((_PALS, _HEADS)):
            return settings.head_lr_multiplier
        if name.startswith(_EMBEDDINGS):
            return settings.layer_lr_decay ** layers
        if name.startswith(_LAYERS):
            return settings.layer_lr_decay ** (layers - 1 - int(name[len(_LAYERS):].split(".")[0]))
        return 1.0

    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in trainable:
        groups.setdefault(scale(name), []).append(p)
    order = sorted(groups, key=lambda s: s != 1.0)  # the base rate's group first; the others in model order
    return [{"params": groups[s], "lr": settings.lr * s} for s in order]
