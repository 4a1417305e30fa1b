"""Opt-in int8 scoring of new text on the CPU: dynamic quantization of every linear layer.

Weights are stored as int8 and activations quantized per batch on the fly (PyTorch's fbgemm kernels), so a trained
float model needs no calibration data. Only for scoring new text (``palbert predict --precision int8``): training
and the experiment's own dev scores stay in the training precision, and the dev-score change int8 brings is
measured by ``benchmarks/int8_scoring.py``, not assumed.
"""

from __future__ import annotations

import warnings
from typing import TypeVar

import torch
from torch import nn

Model = TypeVar("Model", bound=nn.Module)


def quantize_linear_int8(model: Model) -> Model:
    """A copy of ``model`` (same class; on the CPU, in eval mode) whose ``nn.Linear`` layers compute in int8."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 scoring runs on the CPU only (PyTorch's dynamic quantization has no GPU kernels)")
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao's eager quantization is deprecated in favour of torchao (not a dependency of palbert); its
        # warnings would reach every `palbert predict` user without telling them anything they can act on
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, message=".*deprecated.*")
        return quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8, inplace=False)
