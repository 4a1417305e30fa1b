"""Projected Attention Layers (Stickland & Murray 2019): the task-specific TS(h) = V^D g(V^E h).

One ``ProjectedAttention`` per task. As in the PALs reference implementation, the projections
V^E (hidden -> pal_size) and V^D (pal_size -> hidden) are shared by all layers of the task, while
g, a multi-head self-attention in the small space, is one per layer. The small size is what makes
PALs cheap: the per-task cost is two thin projections plus a few pal_size^2 attention matrices.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from palbert.model.attention import SelfAttention

PAL_ACTIVATIONS = ("none", "gelu")


class ProjectedAttention(nn.Module):
    """TS_l(h) = act(V^D g_l(V^E h)) for one task; ``act`` is identity (seed paper) or GELU (reference code)."""

    def __init__(
        self,
        hidden_size: int,
        pal_size: int,
        pal_heads: int,
        num_layers: int,
        attention_dropout: float,
        activation: str = "none",
    ) -> None:
        super().__init__()
        if activation not in PAL_ACTIVATIONS:
            raise ValueError(f"PAL activation must be one of {PAL_ACTIVATIONS}, got {activation!r}")
        self.project_down = nn.Linear(hidden_size, pal_size)  # V^E, shared by all layers
        self.attention = nn.ModuleList(
            SelfAttention(pal_size, pal_heads, attention_dropout) for _ in range(num_layers)
        )  # g_l, one per layer
        self.project_up = nn.Linear(pal_size, hidden_size)  # V^D, shared by all layers
        self.activation = activation

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None, layer_index: int) -> Tensor:
        """``hidden_states``: the layer's input h^l; ``attention_mask``: the layer's bool mask."""
        small = self.attention[layer_index](self.project_down(hidden_states), attention_mask)
        out = self.project_up(small)
        return F.gelu(out) if self.activation == "gelu" else out
