"""Task losses and SimCSE: a hand-checked tiny case and the 2-process gathered gradient."""

import math
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.nn.functional as F

from palbert.train.losses import simcse_loss, task_loss


def test_task_losses_match_torch_functional():
    torch.manual_seed(0)
    logits, classes = torch.randn(4, 5), torch.tensor([0, 4, 2, 1])
    assert torch.allclose(task_loss("sst", logits, classes), F.cross_entropy(logits, classes))
    para, binary = torch.randn(4), torch.tensor([0.0, 1.0, 1.0, 0.0])
    assert torch.allclose(task_loss("para", para, binary), F.binary_cross_entropy_with_logits(para, binary))
    sts, scores = torch.randn(4), torch.tensor([0.0, 2.5, 5.0, 1.2])
    assert torch.allclose(task_loss("sts", sts, scores), F.mse_loss(sts, scores))
    assert task_loss("sts", sts.bfloat16(), scores).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown task"):
        task_loss("nli", sts, scores)


def test_simcse_orthogonal_views():
    z = torch.eye(2)
    # sim = [[1, 0], [0, 1]] / T; each row: -log(e^(1/T) / (e^(1/T) + 1)) = log(1 + e^(-1/T))
    assert simcse_loss(z, z, temperature=1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert simcse_loss(z, z, temperature=0.05).item() == pytest.approx(math.log(1 + math.exp(-20)), abs=1e-7)


def test_simcse_hand_checked_asymmetric_case():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[2.0, 2.0], [0.0, 3.0]])  # length does not matter: cosines 1/√2, 0; 1/√2, 1
    t = 0.5
    s = math.sqrt(2)  # (1/√2) / 0.5
    row0 = -s + math.log(math.exp(s) + math.exp(0))
    row1 = -2 + math.log(math.exp(s) + math.exp(2))
    assert simcse_loss(z1, z2, temperature=t).item() == pytest.approx((row0 + row1) / 2)


def test_simcse_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        simcse_loss(torch.zeros(2, 3), torch.zeros(3, 3))


# ---- 2 processes (gloo): gathered SimCSE under DDP-style gradient averaging == one process, global batch


def _problem():
    """A tiny 'encoder' and two noisy views of a global batch of 6 sentences."""
    generator = torch.Generator().manual_seed(0)
    encoder = torch.nn.Linear(3, 4)
    with torch.no_grad():
        encoder.weight.copy_(torch.randn(4, 3, generator=generator))
        encoder.bias.copy_(torch.randn(4, generator=generator))
    inputs = torch.randn(6, 3, generator=generator)
    noise = 0.3 * torch.randn(6, 3, generator=generator)
    return encoder, inputs, noise


def _gradients(encoder, inputs, noise):
    loss = simcse_loss(encoder(inputs), encoder(inputs + noise), temperature=0.1)
    loss.backward()
    return loss.detach(), [p.grad for p in encoder.parameters()]


def _worker(rank, world_size, port, out_dir):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size, timeout=timedelta(seconds=60)
    )
    try:
        encoder, inputs, noise = _problem()
        rows = slice(rank * 3, (rank + 1) * 3)
        loss, grads = _gradients(encoder, inputs[rows], noise[rows])
        for tensor in [loss, *grads]:  # what DDP does to gradients: average over ranks
            dist.all_reduce(tensor)
            tensor /= world_size
        torch.save({"loss": loss, "grads": grads}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    # Leave without interpreter teardown: about 1 run in 12, a gloo/autograd thread aborts the process at
    # exit ("terminate called without an active exception", SIGABRT) after all the work is done and saved.
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.distributed
def test_gathered_simcse_gradient_equals_global_batch(tmp_path):
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    encoder, inputs, noise = _problem()
    loss, grads = _gradients(encoder, inputs, noise)
    halves = [simcse_loss(encoder(inputs[r]), encoder(inputs[r] + noise[r]), 0.1) for r in (slice(0, 3), slice(3, 6))]
    assert not torch.allclose(sum(halves) / 2, loss)  # without the gather the negatives differ: the test can tell
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.allclose(result["loss"], loss, atol=1e-6)
        for got, want in zip(result["grads"], grads):
            assert torch.allclose(got, want, atol=1e-6)
