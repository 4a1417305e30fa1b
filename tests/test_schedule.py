"""LR multipliers: STLR's triangle and its edge cases, and LambdaLR use."""

import pytest
import torch

from palbert.train.schedule import lr_multiplier, warmup_steps


def test_stlr_triangle():
    f = lr_multiplier("stlr", total_steps=100, warmup_fraction=0.1)
    assert f(0) == 0.0
    assert f(5) == pytest.approx(0.5)
    assert f(10) == 1.0
    assert f(55) == pytest.approx(0.5)
    assert f(100) == 0.0 and f(150) == 0.0
    values = [f(s) for s in range(101)]
    assert max(values) == 1.0 and values.index(1.0) == 10


def test_constant():
    f = lr_multiplier("constant", 10, 0.1)
    assert {f(s) for s in range(20)} == {1.0}


def test_no_warmup_and_tiny_runs():
    f = lr_multiplier("stlr", 4, 0.0)
    assert [f(s) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert warmup_steps(5, 0.1) == 1  # 0.5 rounds up
    g = lr_multiplier("stlr", 1, 0.1)  # warmup rounds to 0: one full-LR step
    assert g(0) == 1.0 and g(1) == 0.0
    h = lr_multiplier("stlr", 3, 1.0)  # all warmup
    assert [h(s) for s in range(4)] == pytest.approx([0.0, 1 / 3, 2 / 3, 0.0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="schedule"):
        lr_multiplier("cosine", 10, 0.1)
    with pytest.raises(ValueError, match="total_steps"):
        lr_multiplier("stlr", 0, 0.1)


def test_with_lambda_lr():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier("stlr", 10, 0.2))
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0, 1e-5, 2e-5, 1.75e-5, 1.5e-5, 1.25e-5, 1e-5, 0.75e-5, 0.5e-5, 0.25e-5])
    assert scheduler.state_dict()["lr_lambdas"] == [None]
