"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a folder ``checkpoints/latest/`` with the model weights (safetensors), the optimizer and
LR-scheduler state (``torch.save``; read back with ``weights_only=True``, so no pickle runs on load), the
RNG state of every rank, and ``state.json`` (step, epoch, data stream positions, logged history, MLflow
run id). It is replaced in one rename, so a run killed mid-write leaves the previous checkpoint intact.

A checkpoint records a fingerprint of the settings that shape the result; a run with other settings
starts afresh instead of resuming someone else's training. Launch settings (number of processes) are
not part of it: a run may resume with a different number of workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from palbert.atomic import atomic_dir, recover_dir, write_json
from palbert.config import Params
from palbert.errors import ModelLoadError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
LATEST = "latest"
#: The moving average of the weights (``train.ema_decay``), beside the trained weights.
AVERAGED = "averaged.safetensors"


def fingerprint(params: Params, data_meta: dict[str, Any]) -> str:
    """Hash of every setting (and the prepared data's identity) that shapes the trained weights."""
    relevant = {**params.result_settings(), "data_meta": data_meta, "format": FORMAT_VERSION}
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """At least what one checkpoint of ``model`` takes on disk: its weights and AdamW's two moments of every
    trainable parameter (a new checkpoint is written beside the old one, so this much must be free)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    moments = sum(2 * p.numel() * 4 for p in model.parameters() if p.requires_grad)  # fp32 exp_avg, exp_avg_sq
    return weights + moments


def save_checkpoint(
    root: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rng_states: list[torch.Tensor],
    state: dict[str, Any],
    averaged: Any = None,
) -> Path:
    """Write ``root/latest`` atomically (rank 0 only; ``rng_states`` holds every rank's RNG state; ``averaged``,
    a ``train.averaging.WeightAverage``, into ``averaged.safetensors``)."""
    target = root / LATEST
    with atomic_dir(target) as tmp:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        if averaged is not None:
            save_file(averaged.state_dict(), str(tmp / AVERAGED))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_states},
            tmp / "optimizer.pt",
        )
        (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    return target


def read_state(root: Path) -> dict[str, Any] | None:
    path = root / LATEST / "state.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return None


def load_checkpoint(
    root: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    averaged: Any = None,
) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Restore model, optimizer and scheduler in place; return the state and the saved RNG states.

    A damaged checkpoint (a disk error, a copy cut short) raises ``ModelLoadError`` saying how to start afresh:
    as a traceback it would stop every later run at the same place.
    """
    folder = root / LATEST
    try:
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        if averaged is not None:
            averaged.load_state_dict(load_file(str(folder / AVERAGED)))
        extra = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        return state, list(extra["rng"])
    except Exception as exc:
        reason = (str(exc).splitlines() or [""])[0][:200]
        raise ModelLoadError(f"{folder}: the checkpoint cannot be read ({type(exc).__name__}: {reason}); move it "
                             f"away (`mv {folder} {folder}.damaged`) and the run starts afresh") from None


def resumable_state(root: Path, expected_fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint's state when it belongs to this configuration and is unfinished (or finished, but stopped
    before its outputs were written), else None."""
    if recover_dir(root / LATEST):
        log.warning("%s: put back the checkpoint a crash left as .%s.old", root / LATEST, LATEST)
    state = read_state(root)
    if state is None:
        return None
    if state.get("format") != FORMAT_VERSION or state.get("fingerprint") != expected_fingerprint:
        log.info("checkpoint in %s is from other settings: starting a new run", root)
        return None
    if state.get("complete") and state.get("outputs_written", True):  # older checkpoints: written
        log.info("checkpoint in %s is of a finished run: starting a new run", root)
        return None
    if state.get("complete"):
        log.warning("checkpoint in %s is of a finished training whose outputs were not written (it stopped at the "
                    "end): writing them from it, without training again", root)
    return state


def mark_outputs_written(root: Path) -> None:
    """Record in the finished checkpoint that its outputs exist: a later run of the same settings starts afresh."""
    state = read_state(root)
    if state is not None:
        write_json(root / LATEST / "state.json", {**state, "outputs_written": True})
