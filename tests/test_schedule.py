"""The LR schedules: STLR's triangle and its edge cases, as transformers' schedules give them."""

import pytest
import torch

from palbert.train.schedule import make_scheduler, warmup_steps


def multipliers(kind: str, total_steps: int, warmup_fraction: float, steps: int) -> list[float]:
    """The LR factor of each of ``steps`` optimizer steps (the scheduler stepped after each, as in training)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(optimizer, kind, total_steps, warmup_fraction)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def paper_stlr(step: int, total_steps: int, warmup: int) -> float:
    """The slanted triangle written out: what palbert computed by hand before it used transformers' schedule."""
    if step < warmup:
        return step / warmup
    if step >= total_steps:
        return 0.0
    return (total_steps - step) / (total_steps - warmup)


@pytest.mark.parametrize("total, fraction", [(100, 0.1), (5400, 0.1), (10, 0.25), (7, 0.3), (4, 0.0), (3, 1.0), (1, 0.1)])
def test_stlr_is_the_slanted_triangle_at_every_step(total, fraction):
    warmup = warmup_steps(total, fraction)
    assert multipliers("stlr", total, fraction, total + 3) == [paper_stlr(s, total, warmup) for s in range(total + 3)]


def test_stlr_triangle():
    f = multipliers("stlr", 100, 0.1, 151)
    assert f[0] == 0.0 and f[5] == pytest.approx(0.5) and f[10] == 1.0 and f[55] == pytest.approx(0.5)
    assert f[100] == 0.0 and f[150] == 0.0
    assert max(f) == 1.0 and f.index(1.0) == 10


def test_constant():
    assert set(multipliers("constant", 10, 0.1, 20)) == {1.0}


def test_no_warmup_and_tiny_runs():
    assert multipliers("stlr", 4, 0.0, 5) == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert warmup_steps(5, 0.1) == 1  # 0.5 rounds up
    assert multipliers("stlr", 1, 0.1, 2) == [1.0, 0.0]  # warmup rounds to 0: one full-LR step
    assert multipliers("stlr", 3, 1.0, 4) == pytest.approx([0.0, 1 / 3, 2 / 3, 0.0])  # all warmup


def test_bad_arguments():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="schedule"):
        make_scheduler(optimizer, "cosine", 10, 0.1)
    with pytest.raises(ValueError, match="total_steps"):
        make_scheduler(optimizer, "stlr", 0, 0.1)


def test_a_resumed_scheduler_follows_its_params_not_its_state():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-5)
    scheduler = make_scheduler(optimizer, "stlr", 10, 0.2)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0, 1e-5, 2e-5, 1.75e-5, 1.5e-5, 1.25e-5, 1e-5, 0.75e-5, 0.5e-5, 0.25e-5])
    assert all(not state for state in scheduler.state_dict()["lr_lambdas"])  # nothing of the schedule is saved
