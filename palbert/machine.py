"""What ran a job: processor, cores, bf16 support, GPU and library versions (results records, summaries)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from palbert.precision import cpu_amx, cpu_bf16_instructions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> dict[str, Any]:
    """The facts that explain a run's speed and precision; two 2-core machines differ mostly in AVX512-BF16 and AMX."""
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cpu_bf16": cpu_bf16_instructions(),
        "cpu_amx": cpu_amx(),
        "gpu": gpu,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
