"""What ``precision: auto`` picks on each kind of machine: bf16 only where it is faster than fp32."""

from __future__ import annotations

import logging

import pytest
import torch

from palbert import precision
from palbert.machine import describe_machine

CPU = torch.device("cpu")


@pytest.fixture
def cpu_kind(monkeypatch):
    """Pose as another kind of CPU: the probes are the only hardware facts ``auto`` reads."""
    def pose(bf16_instructions: bool, amx: bool) -> None:
        monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: bf16_instructions)
        monkeypatch.setattr(precision, "cpu_amx", lambda: amx)
    return pose


@pytest.mark.parametrize("bf16_instructions, amx, picked, why", [
    (True, True, "bf16", "this CPU has AMX"),
    (True, False, "fp32", "AVX512-BF16 but no AMX"),  # bf16 matmuls at half the fp32 rate there
    (False, False, "fp32", "no AVX512-BF16, where bf16 is emulated"),
])
def test_auto_picks_bf16_only_where_it_is_faster(cpu_kind, bf16_instructions, amx, picked, why):
    cpu_kind(bf16_instructions, amx)
    assert precision.resolve_precision("auto", CPU) == picked
    assert precision.precision_reason("auto", CPU).startswith("auto: ") and why in precision.precision_reason("auto", CPU)


def test_an_explicit_bf16_is_honoured_with_a_warning_where_it_is_slower(cpu_kind, caplog):
    cpu_kind(True, False)
    with caplog.at_level(logging.WARNING, logger="palbert.precision"):
        assert precision.resolve_precision("bf16", CPU) == "bf16"
    assert "no AMX" in caplog.text and "slower than fp32" in caplog.text
    assert precision.precision_reason("bf16", CPU) == (
        "train.precision=bf16; this CPU has AVX512-BF16 but no AMX, where bf16 matmuls run at about half the fp32 rate")
    assert precision.resolve_precision("fp32", CPU) == "fp32" and precision.precision_reason("fp32", CPU) == "train.precision=fp32"


def test_the_machine_record_names_both_facts():
    machine = describe_machine()
    assert machine["cpu_bf16"] == precision.cpu_bf16_instructions() and machine["cpu_amx"] == precision.cpu_amx()
    assert isinstance(machine["cpu_amx"], bool)
