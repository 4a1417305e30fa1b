"""benchmarks/step_profile.py's accounting: every second of the wall time in one category, matmul FLOPs from the
profiled shapes. Its figures are measured alone on the real model (docs/results/), not here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def step_profile():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("step_profile", BENCHMARKS / "step_profile.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["step_profile"] = module  # its dataclass resolves annotations through sys.modules
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("step_profile", None)
        sys.modules.pop("speed", None)
        sys.path.remove(str(BENCHMARKS))


def test_ops_fall_in_the_categories_that_explain_a_step(step_profile):
    assert step_profile.category("aten::addmm") == "matrix products"
    assert step_profile.category("aten::_scaled_dot_product_flash_attention_for_cpu") == "fused attention"
    assert step_profile.category("aten::native_layer_norm_backward") == "layer norm"
    assert step_profile.category("aten::bernoulli_") == step_profile.OTHER_OPS
    assert step_profile.category("aten::native_dropout") == "activation and dropout"
    assert step_profile.category("aten::_fused_adamw_") == "optimizer"
    assert step_profile.category("autograd::engine::evaluate_function: AddmmBackward0") == step_profile.FRAMEWORK


@pytest.mark.parametrize("name, shapes, dims", [
    ("aten::mm", [[64, 32], [32, 16]], (1, 64, 32, 16)),
    ("aten::addmm", [[16], [64, 32], [32, 16], [], []], (1, 64, 32, 16)),
    ("aten::bmm", [[4, 8, 5], [4, 5, 8]], (4, 8, 5, 8)),
    ("aten::baddbmm", [[4, 8, 8], [4, 8, 5], [4, 5, 8], [], []], (4, 8, 5, 8)),
    ("aten::mm", [], None),
])
def test_matmul_dims_read_the_operands_not_the_bias(step_profile, name, shapes, dims):
    assert step_profile.matmul_dims(name, shapes) == dims


def test_a_profiled_training_loop_is_accounted_to_the_wall_time_and_its_products_counted(step_profile):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Dropout(0.1), nn.LayerNorm(48), nn.Linear(48, 8))
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    x = torch.randn(64, 32)

    def step() -> float:
        model(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return 1.0

    phase = step_profile.profiled("train", 3, [step] * 3)
    report = phase.report(torch.float32, peak_flops=1e9)
    assert phase.analytic_flops == 3.0
    assert sum(report["seconds_by_category"].values()) == pytest.approx(report["wall_s"], rel=1e-9)
    for expected in ("matrix products", "optimizer", "layer norm", "activation and dropout"):
        assert report["seconds_by_category"][expected] > 0, expected
    # Forward x@W1, h@W2; backward: grad of h (one product), grad of W2 and W1 (two); per step, 3 steps.
    forward = 64 * 32 * 48 + 64 * 48 * 8
    backward = 64 * 8 * 48 + 48 * 64 * 8 + 48 * 64 * 32
    assert report["matmul"]["flops"] == pytest.approx(3 * 2 * (forward + backward))
    assert report["matmul"]["alone_gflops"] > 0 and report["matmul"]["share_of_wall"] < 1


def test_reports_name_no_folder_of_the_machine_that_wrote_them(step_profile, tmp_path, capsys):
    speed = step_profile.speed
    facts = speed.run_facts(["--threads", "1", "--out", str(tmp_path / "bench" / "profile.json"),
                             f"--out={speed.ROOT / 'benchmarks' / 'results' / 'p.json'}", "--steps", "3"])
    assert facts["command"].split(" ", 1)[1] == ("--threads 1 --out .../profile.json --out=benchmarks/results/p.json "
                                                 "--steps 3")  # outside the project: the file name only
    speed.write_report({"command": facts["command"]}, tmp_path / "bench" / "profile.json")
    assert capsys.readouterr().out == "wrote .../profile.json\n"
