"""Training losses: one per task head (paper 5.1) and unsupervised SimCSE (paper 4.1, Gao et al. 2021)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from palbert.tasks import TASK_SPECS, TASKS

#: ``TaskSpec.loss`` -> the mean loss of a batch of raw head outputs against its labels.
LOSSES = {
    "cross_entropy": lambda prediction, labels: F.cross_entropy(prediction, labels.long()),
    "binary_cross_entropy": lambda prediction, labels: F.binary_cross_entropy_with_logits(prediction, labels.float()),
    "mse": lambda prediction, labels: F.mse_loss(prediction, labels.float()),
}


def task_loss(task: str, prediction: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean loss of a batch: sst cross-entropy on [B, 5] logits, para BCE on [B] logits, sts MSE on [B].

    The prediction is cast to float32 so the loss is the same under bf16 autocast. ``label_smoothing``
    (``train.label_smoothing``) applies to the cross-entropy tasks only; 0 is the plain loss, bitwise.
    """
    if task not in TASK_SPECS:
        raise ValueError(f"unknown task {task!r}: expected {', '.join(TASKS)}")
    kind = TASK_SPECS[task].loss
    if label_smoothing and kind == "cross_entropy":
        return F.cross_entropy(prediction.float(), labels.long(), label_smoothing=label_smoothing)
    return LOSSES[kind](prediction.float(), labels)


def _class_log_probabilities(logits: Tensor, kind: str) -> Tensor:
    """[B, C] log-probabilities of a classification head's raw output (a [B] logit: two classes)."""
    if kind == "binary_cross_entropy":
        return torch.stack([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=-1)
    return F.log_softmax(logits, dim=-1)


#: The task losses whose heads R-Drop regularises: classifiers, whose outputs are distributions.
RDROP_LOSSES = ("cross_entropy", "binary_cross_entropy")


def uses_rdrop(task: str) -> bool:
    return TASK_SPECS[task].loss in RDROP_LOSSES


def rdrop_loss(task: str, prediction: Tensor, prediction_again: Tensor) -> Tensor:
    """R-Drop (Liang et al. 2021): the symmetric KL divergence between the class distributions of two dropout
    views of the same batch, averaged over rows (sst: 5 classes; para: paraphrase or not)."""
    kind = TASK_SPECS[task].loss
    if kind not in RDROP_LOSSES:
        raise ValueError(f"R-Drop needs a classification task, not {task!r} ({kind})")
    p = _class_log_probabilities(prediction.float(), kind)
    q = _class_log_probabilities(prediction_again.float(), kind)
    return 0.5 * (F.kl_div(p, q, reduction="batchmean", log_target=True)
                  + F.kl_div(q, p, reduction="batchmean", log_target=True))


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' rows of ``z`` in rank order; backward sums every rank's gradient of a row onto its owner.

    Built on the public ``all_gather`` / ``all_reduce`` (``torch.distributed.nn.functional.all_gather`` is
    deprecated in favour of a private module).
    """

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, z.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        rows = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * rows:(dist.get_rank() + 1) * rows]


def simcse_loss(z1: Tensor, z2: Tensor, temperature: float = 0.05) -> Tensor:
    """Unsupervised SimCSE InfoNCE: row i of ``z1`` must pick its own second view ``z2[i]`` among all.

    sim[i, j] = cos(z1_i, z2_j) / T and the loss is cross-entropy with target j = i, as in Gao et al.

    Under torch.distributed with more than one rank, the negatives span the global batch: ``z2`` is
    gathered from every rank with gradient, and each rank scores its own rows of ``z1`` against all
    global columns. The mean over ranks of these local losses is the single-process loss over the
    global batch. Because the all-gather's backward sums every rank's gradient for a row back onto the
    rank that owns it, each rank's gradient is d(sum of all local losses)/d(its params), and DDP's
    averaging over ranks yields exactly the single-process global-batch gradient. Gathering ``z1`` is
    not needed: no rank scores another rank's rows. All ranks must pass the same number of rows.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"simcse_loss needs two [B, H] tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    z1, z2 = z1.float(), z2.float()
    offset = 0
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        offset = dist.get_rank() * z1.shape[0]
        z2 = _GatherWithGrad.apply(z2)
    sim = F.normalize(z1, dim=-1) @ F.normalize(z2, dim=-1).T / temperature
    targets = torch.arange(offset, offset + z1.shape[0], device=z1.device)
    return F.cross_entropy(sim, targets)
