"""Building the model from a pretrained BERT: its config and weights for ``MultitaskBert`` (the tokenizer is re-exported).

One resolver (``palbert.encoder_source``) so that the data stage (tokenizer) and the model (weights)
always read the same checkpoint, and so that the default works offline from the installed package.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from palbert.encoder_source import (
    EMBEDDED,
    PretrainedError,
    bert_config_problem,
    load_failure_message,
    load_tokenizer,
    resolve_pretrained,
)

if TYPE_CHECKING:
    import torch
    from transformers import BertConfig

log = logging.getLogger(__name__)

__all__ = ["EMBEDDED", "PretrainedError", "load_pretrained_bert", "load_tokenizer", "resolve_pretrained"]


def load_pretrained_bert(name: str) -> tuple["BertConfig", dict[str, "torch.Tensor"]]:
    """The config and float32 ``state_dict`` of a BERT checkpoint, read through ``BertModel.from_pretrained``.

    Going through BertModel (public API) lets transformers handle the checkpoint's quirks: a
    ``bert.`` prefix, old ``gamma``/``beta`` names, .bin or safetensors, sharding, the hub cache.
    """
    import torch
    from transformers import BertConfig, BertModel

    path = resolve_pretrained(name)
    try:
        config = BertConfig.from_pretrained(path)
    except OSError as exc:
        raise PretrainedError(load_failure_message(name, path, "config", exc)) from None
    if config.model_type != "bert":
        raise ValueError(f"{name}: model_type is {config.model_type!r}, not a BERT checkpoint")
    problem = bert_config_problem(config.to_dict())
    if problem:
        raise PretrainedError(f"model.pretrained: {name}: config {problem}")
    try:
        bert = BertModel.from_pretrained(path, config=config, dtype=torch.float32, add_pooling_layer=True)
    except OSError as exc:
        raise PretrainedError(load_failure_message(name, path, "weights", exc)) from None
    log.info("loaded pretrained BERT %s (%d layers, hidden %d)", path, config.num_hidden_layers, config.hidden_size)
    return config, {k: v.detach().clone() for k, v in bert.state_dict().items()}
