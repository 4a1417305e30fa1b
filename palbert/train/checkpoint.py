"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a folder ``checkpoints/latest/`` with the model weights (safetensors), the optimizer and
LR-scheduler state (``torch.save``; read back with ``weights_only=True``, so no pickle runs on load), the
RNG state of every rank, and ``state.json`` (step, epoch, data stream positions, logged history, MLflow
run id). It is replaced in one rename, so a run killed mid-write leaves the previous checkpoint intact.

A checkpoint records a fingerprint of the settings that shape the result; a run with other settings
starts afresh instead of resuming someone else's training. Launch settings (number of processes) are
not part of it: a run may resume with a different number of workers.

A damaged checkpoint (a file cut short, bytes that are not UTF-8 or not JSON, a field of the wrong type, a weights or
optimizer file that does not load) is one warning and a fresh start: as a traceback it would stop every later run
at the same place. The run's first checkpoint then replaces it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import types
import typing
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
    """``state.json`` of the checkpoint in ``root``; ``None`` (with one warning) when there is none or it is
    damaged: not readable, not UTF-8, not JSON, or not a JSON object."""
    path = root / LATEST / "state.json"
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: UnicodeDecodeError and json.JSONDecodeError
        return _damaged(path, str(exc))
    if not isinstance(state, dict):
        return _damaged(path, f"a JSON {type(state).__name__}, not an object")
    return state


def _damaged(path: Path, reason: str) -> None:
    log.warning("ignoring the damaged checkpoint %s (%s): starting afresh; this run's first checkpoint replaces it",
                path, reason.splitlines()[0][:200] if reason else "unreadable")
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


def resumable_state(root: Path, expected_fingerprint: str, schema: type | None = None) -> dict[str, Any] | None:
    """The checkpoint's state when it belongs to this configuration and is unfinished (or finished, but stopped
    before its outputs were written), else None.

    With ``schema`` (the dataclass the state is read into), a checkpoint whose state does not fit it, or whose
    weights or optimizer file does not load, is damaged: one warning, and None. The files are read here once to
    check them and again by ``load_checkpoint``: a damaged one must be found before the model is changed in place.
    """
    if recover_dir(root / LATEST):
        log.warning("%s: put back the checkpoint a crash left as .%s.old", root / LATEST, LATEST)
    state = read_state(root)
    if state is None:
        return None
    if state.get("format") != FORMAT_VERSION or state.get("fingerprint") != expected_fingerprint:
        log.info("checkpoint in %s is from other settings: starting a new run", root)
        return None
    if schema is not None:
        problem = state_problem(state, schema) or files_problem(root / LATEST)
        if problem:
            return _damaged(root / LATEST / problem[0], problem[1])
    if state.get("complete") and state.get("outputs_written", True):  # older checkpoints: written
        log.info("checkpoint in %s is of a finished run: starting a new run", root)
        return None
    if state.get("complete"):
        log.warning("checkpoint in %s is of a finished training whose outputs were not written (it stopped at the "
                    "end): writing them from it, without training again", root)
    return state


def state_problem(state: dict[str, Any], schema: type) -> tuple[str, str] | None:
    """Why ``state`` does not fit the dataclass ``schema`` (an unknown field, a missing required one, a value of
    another type), as (file, reason); None when it fits."""
    hints = typing.get_type_hints(schema)
    for key, value in state.items():
        if key not in hints:
            return "state.json", f"unknown field {key!r}"
        if not _fits(value, hints[key]):
            return "state.json", f"field {key!r} is {json.dumps(value)[:60]}, not {_type_name(hints[key])}"
    required = [f.name for f in dataclasses.fields(schema)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in state]
    return ("state.json", f"field {missing[0]!r} missing") if missing else None


def _fits(value: Any, kind: Any) -> bool:
    """Whether a JSON value is of the annotated type (the plain types, unions and dict/list a state holds)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is dict:
        return isinstance(value, dict) and all(
            not args or (_fits(k, args[0]) and _fits(v, args[1])) for k, v in value.items())
    if origin is list:
        return isinstance(value, list) and all(not args or _fits(item, args[0]) for item in value)
    return isinstance(value, origin or kind)


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) if typing.get_origin(kind) is None else str(kind).replace("typing.", "")


def files_problem(folder: Path) -> tuple[str, str] | None:
    """Why the weights or the optimizer file of a checkpoint does not load (missing, cut short, not what
    ``save_checkpoint`` writes), as (file, reason); None when both load."""
    try:
        weights = load_file(str(folder / "model.safetensors"))
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ...
        return "model.safetensors", _reason(exc)
    if not weights:
        return "model.safetensors", "no tensors"
    if (folder / AVERAGED).exists():
        try:
            load_file(str(folder / AVERAGED))
        except Exception as exc:  # as for the weights above
            return AVERAGED, _reason(exc)
    try:
        extra = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # a cut-short zip, a pickle weights_only refuses, random bytes: all mean damaged
        return "optimizer.pt", _reason(exc)
    if not (isinstance(extra, dict) and isinstance(extra.get("optimizer"), dict)
            and isinstance(extra.get("scheduler"), dict) and isinstance(extra.get("rng"), list)
            and all(isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 for rng in extra["rng"])):
        return "optimizer.pt", "not the optimizer, scheduler and RNG states a checkpoint holds"
    return None


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def next_run(root: Path, expected_fingerprint: str) -> str:
    """What the next run of these settings does, given the checkpoint in ``root`` (for a stop message)."""
    if (root / LATEST / "state.json").is_file():
        try:
            state = json.loads((root / LATEST / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = None
        if isinstance(state, dict) and state.get("fingerprint") == expected_fingerprint:
            return f"the next run resumes from its checkpoint of step {state.get('step')}"
    return "no checkpoint of this run was written: the next run starts over"


def kept_after_failure(root: Path) -> str:
    """What the next run finds after a failed multi-process job, whose launcher holds no settings fingerprint."""
    state = read_state(root)
    if state is None or state.get("complete"):
        return "no checkpoint of it was written: the next `dvc repro` starts over"
    return f"its checkpoint of step {state.get('step')} is kept: the next `dvc repro` of the same settings resumes from it"


def mark_outputs_written(root: Path) -> None:
    """Record in the finished checkpoint that its outputs exist: a later run of the same settings starts afresh."""
    state = read_state(root)
    if state is not None:
        write_json(root / LATEST / "state.json", {**state, "outputs_written": True})
