"""A BERT encoder from small modules (as in Hugging Face ``modeling_bert``), with optional PALs.

Why our own modules instead of ``transformers.BertModel``: the PAL output has to enter *inside*
each layer's last residual LayerNorm, h^{l+1} = LN(a + FFN(a) + TS(h^l)), which BertModel offers
no public hook for, and transformers' internals change between major versions. Parameter names
match BertModel's ``state_dict`` exactly, so any BERT checkpoint loads with ``load_state_dict``;
with PALs off the outputs equal BertModel's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertConfig

from palbert.model.attention import SelfAttention, key_padding_mask
from palbert.model.pal import ProjectedAttention


#: ``BertConfig.hidden_act`` values we support, as in transformers' ACT2FN.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def check_supported(config: BertConfig) -> None:
    """Refuse configs this encoder would silently compute differently from BertModel."""
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise ValueError("only encoder-only BERT configs are supported (is_decoder / add_cross_attention set)")
    position_type = getattr(config, "position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(f"position_embedding_type {position_type!r} is not supported (only 'absolute')")
    if config.hidden_act not in ACTIVATIONS:
        raise ValueError(f"hidden_act {config.hidden_act!r} is not supported (one of {sorted(ACTIVATIONS)})")


class BertEmbeddings(nn.Module):
    """word + position + token type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None) -> Tensor:
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        embeddings = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(positions)[None]
        )
        return self.dropout(self.LayerNorm(embeddings))


class BertSelfOutput(nn.Module):
    """The attention block's output projection and residual LayerNorm: LN(x + dropout(W ctx))."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, context: Tensor, input_tensor: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(context)) + input_tensor)


class BertAttention(nn.Module):
    """The attention sub-block: a = LN(h + SelfOutput(SelfAttention(h)))."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = SelfAttention(config.hidden_size, config.num_attention_heads, config.attention_probs_dropout_prob)
        self.output = BertSelfOutput(config)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None) -> Tensor:
        return self.output(self.self(hidden_states, attention_mask), hidden_states)


class BertIntermediate(nn.Module):
    """The feed-forward block's expansion: act(W a)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACTIVATIONS[config.hidden_act]

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.activation(self.dense(hidden_states))


class BertOutput(nn.Module):
    """The layer's last residual LayerNorm: LN(a + dropout(W x) [+ TS(h)]); the PAL output enters here."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, intermediate: Tensor, attention_output: Tensor, task_specific: Tensor | None = None) -> Tensor:
        residual = attention_output if task_specific is None else attention_output + task_specific
        return self.LayerNorm(self.dropout(self.dense(intermediate)) + residual)


class PalBertLayer(nn.Module):
    """One transformer layer; with a PAL: h^{l+1} = LN(a + FFN(a) + TS(h^l)), else BERT's own layer."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None,
        pal: ProjectedAttention | None = None,
        layer_index: int = 0,
    ) -> Tensor:
        attention_output = self.attention(hidden_states, attention_mask)
        task_specific = None if pal is None else pal(hidden_states, attention_mask, layer_index)
        return self.output(self.intermediate(attention_output), attention_output, task_specific)


class BertEncoder(nn.Module):
    """The stack of layers (named ``encoder.layer.N`` as in BertModel, so checkpoints load as they are)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(PalBertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(
        self, hidden_states: Tensor, attention_mask: Tensor | None, pal: ProjectedAttention | None = None
    ) -> Tensor:
        for index, layer in enumerate(self.layer):
            hidden_states = layer(hidden_states, attention_mask, pal, index)
        return hidden_states


class BertPooler(nn.Module):
    """tanh(W h_[CLS]): BERT's pooled output, the sentence embedding the paper's heads use (5.3)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))


def mean_pool(hidden_states: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of ``hidden_states`` [B, T, H] over the tokens where ``attention_mask`` [B, T] is 1."""
    weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


@dataclass
class EncoderOutput:
    last_hidden_state: Tensor  # [B, T, H]
    pooler_output: Tensor  # [B, H]


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation (normal(0, std) weights, zero biases, unit LayerNorms), for new parameters."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class PalBertModel(nn.Module):
    """BertModel's embeddings, encoder and pooler, plus one ``ProjectedAttention`` per task in ``pals``."""

    #: Prefix of PAL parameter names; everything else is the pretrained encoder.
    PAL_PREFIX = "pals."

    def __init__(
        self,
        config: BertConfig,
        pal_tasks: Iterable[str] = (),
        pal_size: int = 204,
        pal_heads: int = 12,
        pal_activation: str = "none",
    ) -> None:
        super().__init__()
        check_supported(config)
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.pals = nn.ModuleDict(
            {
                task: ProjectedAttention(
                    config.hidden_size,
                    pal_size,
                    pal_heads,
                    config.num_hidden_layers,
                    config.attention_probs_dropout_prob,
                    pal_activation,
                )
                for task in pal_tasks
            }
        )
        self.apply(partial(init_bert_weights, std=config.initializer_range))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        task: str | None = None,
    ) -> EncoderOutput:
        """Encode; ``task`` selects that task's PALs (None, or a model without PALs: plain BERT)."""
        pal = None
        if task is not None and len(self.pals) > 0:
            if task not in self.pals:
                raise KeyError(f"no PALs for task {task!r} (have {sorted(self.pals)})")
            pal = self.pals[task]
        mask = key_padding_mask(attention_mask)
        hidden_states = self.encoder(self.embeddings(input_ids, token_type_ids), mask, pal)
        return EncoderOutput(hidden_states, self.pooler(hidden_states))

    def encoder_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        """The pretrained part's parameters (everything but the PALs)."""
        return ((n, p) for n, p in self.named_parameters() if not n.startswith(self.PAL_PREFIX))

    def load_bert_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load a BertModel ``state_dict``; PAL parameters keep their fresh initialisation."""
        result = self.load_state_dict(dict(state_dict), strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(self.PAL_PREFIX)]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"BERT weights do not fit the encoder: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
