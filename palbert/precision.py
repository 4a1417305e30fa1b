"""Mixed precision: bf16 autocast where the hardware supports it, float32 master weights always."""

from __future__ import annotations

import contextlib
import logging
from typing import ContextManager

import torch

log = logging.getLogger(__name__)


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU: scoring and prediction outside a distributed run."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # oneDNN's bf16 kernels need AVX512-BF16 / AMX; elsewhere bf16 on CPU is slower than fp32.
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(choice: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where supported, else ``fp32``; an explicit ``bf16`` is honoured."""
    if choice == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if choice == "bf16" and not bf16_supported(device):
        log.warning("train.precision=bf16 on %s without native bf16 support: expect it to be slow", device)
    return choice


def precision_reason(choice: str, device: torch.device) -> str:
    """Why ``resolve_precision(choice, device)`` picks what it picks, for the training log: the choice
    decides much of a run's speed (the README's times differ by CPU kind for this reason)."""
    hardware = "this GPU" if device.type == "cuda" else "this CPU"
    native = bf16_supported(device)
    if choice != "auto":
        return f"train.precision={choice}" + ("" if choice == "fp32" or native else f"; {hardware} has no native bf16")
    if native:
        return f"auto: {hardware} has native bf16" + ("" if device.type == "cuda" else " (AVX512-BF16 / AMX)")
    if device.type == "cpu":
        return "auto: this CPU has no AVX512-BF16, where bf16 is emulated and slower than fp32"
    return f"auto: {hardware} has no native bf16"


def autocast(precision: str, device: torch.device) -> ContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
