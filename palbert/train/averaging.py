"""Weight averaging over training steps (``train.ema_decay``): an exponential moving average of the weights.

After every optimizer step the average moves towards the trained weights: ``avg += (1 - decay) * (w - avg)``
(the first step copies them). Dev scoring after each epoch, the best epoch's saved model and so the evaluate
stage all use the averaged weights; training itself goes on with the raw ones. It costs one more copy of the
weights and no extra forward or backward pass. ``torch.optim.swa_utils.AveragedModel`` keeps the copy and does
the update (one fused ``lerp`` over all tensors).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """The moving average of a model's parameters (buffers are the model's own, as BERT has no running stats)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
        self.averaged.requires_grad_(False)

    @property
    def model(self) -> nn.Module:
        """The averaged model (the same class as the trained one): what dev scoring and saving use."""
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights and the number of steps averaged (``n_averaged``), for a checkpoint."""
        return {k: v.detach().contiguous().cpu() for k, v in self.averaged.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.averaged.load_state_dict(state)


def make_weight_average(model: nn.Module, decay: float) -> WeightAverage | None:
    """The moving average of ``model`` for ``train.ema_decay``; None when it is 0 (off)."""
    return WeightAverage(model, decay) if decay > 0 else None
