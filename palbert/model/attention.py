"""Multi-head self-attention with query/key/value projections and no output projection.

This is the concept Hugging Face calls ``BertSelfAttention``. BERT's attention block adds an
output projection after it (``BertSelfOutput``); a PAL uses it bare, because V^D plays that role
(as in the PALs reference code). One module serves both, so both run the same fused
``scaled_dot_product_attention`` kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SelfAttention(nn.Module):
    """softmax(QK^T / sqrt(d_head)) V over ``num_heads`` heads, heads concatenated back to ``size``."""

    def __init__(self, size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if size % num_heads != 0:
            raise ValueError(f"attention size {size} is not a multiple of the number of heads {num_heads}")
        self.num_heads = num_heads
        self.head_size = size // num_heads
        self.dropout = dropout
        self.query = nn.Linear(size, size)
        self.key = nn.Linear(size, size)
        self.value = nn.Linear(size, size)
        # One product for Q, K and V instead of three: measured on a 2-core AVX-512 CPU, training no faster and
        # scoring 4% faster (docs/results/cpu-speed-no-amx-epyc.txt), while the trained weights' last bits change;
        # so off, and kept for `benchmarks/speed.py --fused-qkv` on other machines.
        self.fused_qkv = False

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None) -> Tensor:
        """``attention_mask``: bool ``[B, 1, 1, T]``, True where a key may be attended to (or None)."""
        batch, length, _ = hidden_states.shape
        projections = (self.query, self.key, self.value)
        if self.fused_qkv:
            # One product three times as wide; the three Linears stay, so parameter names are BertModel's.
            qkv = F.linear(hidden_states, torch.cat([p.weight for p in projections]),
                           torch.cat([p.bias for p in projections]))
            query, key, value = qkv.view(batch, length, 3, self.num_heads, self.head_size).permute(2, 0, 3, 1, 4)
        else:
            query, key, value = (p(hidden_states).view(batch, length, self.num_heads, self.head_size).transpose(1, 2)
                                 for p in projections)
        context = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=self.dropout if self.training else 0.0
        )
        batch, _, length, _ = context.shape
        return context.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_size)


def set_fused_qkv(model: nn.Module, fused: bool) -> None:
    """``SelfAttention.fused_qkv`` for every attention in ``model`` (BERT's and the PALs')."""
    for module in model.modules():
        if isinstance(module, SelfAttention):
            module.fused_qkv = fused


def key_padding_mask(attention_mask: Tensor | None) -> Tensor | None:
    """``[B, T]`` 1/0 padding mask -> the bool ``[B, 1, 1, T]`` mask that SelfAttention takes."""
    if attention_mask is None:
        return None
    return attention_mask[:, None, None, :].to(torch.bool)
