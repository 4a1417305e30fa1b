"""Mixed precision: bf16 autocast where the hardware makes it faster, float32 master weights always."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import ContextManager

import torch

log = logging.getLogger(__name__)


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU: scoring and prediction outside a distributed run."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_bf16_instructions() -> bool:
    """AVX512-BF16 (or AMX): oneDNN has native bf16 kernels; without them bf16 is emulated."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_amx() -> bool:
    """AMX tiles: the only CPUs where bf16 beats fp32 here. With AMX a 2048^3 bf16 matmul ran at 4.2x the fp32
    rate (852 vs 201 GFLOP/s, docs/results/cpu-speed.txt); with AVX512-BF16 and no AMX at half of it (165 vs
    327 GFLOP/s, palbert's training step 0.7x), both on 2-core machines (benchmarks/speed.py)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        return bool(probe())
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def bf16_faster(device: torch.device) -> bool:
    """Whether bf16 autocast speeds ``device`` up: what ``auto`` decides by."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_bf16_instructions() and cpu_amx()
    return False


def resolve_precision(choice: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where it is faster, else ``fp32``; an explicit ``bf16`` is honoured."""
    if choice == "auto":
        return "bf16" if bf16_faster(device) else "fp32"
    if choice == "bf16" and not bf16_faster(device):
        log.warning("train.precision=bf16 on %s: %s; expect it to be slower than fp32", device, _why_slow(device))
    return choice


def _why_slow(device: torch.device) -> str:
    if device.type != "cpu":
        return f"this {device.type.upper()} has no native bf16"
    if cpu_bf16_instructions():
        return "this CPU has AVX512-BF16 but no AMX, where bf16 matmuls run at about half the fp32 rate"
    return "this CPU has no AVX512-BF16, where bf16 is emulated"


def precision_reason(choice: str, device: torch.device) -> str:
    """Why ``resolve_precision(choice, device)`` picks what it picks, for the training log: the choice
    decides much of a run's speed (the README's times differ by CPU kind for this reason)."""
    faster = bf16_faster(device)
    if choice != "auto":
        return f"train.precision={choice}" + ("" if choice == "fp32" or faster else f"; {_why_slow(device)}")
    if faster:
        return "auto: " + ("this GPU has native bf16" if device.type == "cuda"
                           else "this CPU has AMX, where bf16 matmuls run at several times the fp32 rate")
    return f"auto: {_why_slow(device)}"


def autocast(precision: str, device: torch.device) -> ContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
