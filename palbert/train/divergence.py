"""A run that diverges stops at the first non-finite number, instead of training to the end on NaN.

Without this a run with ``train.lr: 1000`` went on for every remaining step (an hour and more), scored
``overall=nan`` and then failed on a missing ``checkpoints/best``, never saying NaN. The checks only read the
loss and the weights: they change nothing that is trained.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from palbert.config import Params
from palbert.errors import TrainingDiverged
from palbert.train import checkpoint

#: Above this a learning rate is the first suspect (the paper fine-tunes at 2e-5; 1e-3 is already large).
HIGH_LR = 1e-3


def likely_cause(params: Params) -> str:
    """The setting most likely to blame, with what to try."""
    train = params.train
    if train.lr > HIGH_LR:
        return f"train.lr = {train.lr:g} is far too high (the paper uses 2e-5): lower it"
    if train.simcse and train.simcse_temperature < 0.01:
        return f"train.simcse_temperature = {train.simcse_temperature:g} is very low: raise it (the paper uses 0.05)"
    if train.precision == "bf16":
        return "a bf16 overflow, or train.lr too high: try train.precision=fp32 or a lower train.lr"
    return f"train.lr = {train.lr:g} too high for these settings: lower it"


def _kept(checkpoints: Path, fingerprint: str) -> str:
    state = checkpoint.read_state(checkpoints)
    if state is None or state.get("fingerprint") != fingerprint:
        return "no checkpoint of this run was written yet"
    return f"the last good checkpoint (step {state.get('step')}) is kept in {checkpoints}"


def diverged(what: str, *, step: int, epoch: int, params: Params, checkpoints: Path,
             fingerprint: str) -> TrainingDiverged:
    """The one-line error: what went non-finite where, the likely cause, and what is kept."""
    return TrainingDiverged(f"training diverged: {what} at step {step} (epoch {epoch}); likely cause: "
                            f"{likely_cause(params)}. Stopped; {_kept(checkpoints, fingerprint)} (other settings "
                            "start a new run)")


def check_loss(total: float, parts: dict[str, float | None], *, task: str, step: int, epoch: int, params: Params,
               checkpoints: Path, fingerprint: str) -> None:
    """Raise ``TrainingDiverged`` when the step's loss is NaN or infinite, naming the task and each part."""
    if math.isfinite(total):
        return
    shown = ", ".join(f"{name} {value:g}" for name, value in parts.items() if value is not None)
    raise diverged(f"the loss of task {task} is {total:g} ({shown})", step=step, epoch=epoch, params=params,
                   checkpoints=checkpoints, fingerprint=fingerprint)


def check_weights(model: torch.nn.Module, *, step: int, epoch: int, params: Params, checkpoints: Path,
                  fingerprint: str) -> None:
    """Before a checkpoint is written: a weight that is NaN or infinite must not replace the last good one."""
    for name, tensor in model.named_parameters():
        if not bool(torch.isfinite(tensor.detach()).all()):
            raise diverged(f"weight {name} is not finite", step=step, epoch=epoch, params=params,
                           checkpoints=checkpoints, fingerprint=fingerprint)
