"""Save and load a trained ``MultitaskBert`` as a self-contained directory, without pickle.

The directory is a Hugging Face BERT folder with palbert's own files beside it, so that both
``transformers.AutoModel.from_pretrained(dir)`` / ``AutoTokenizer`` (the shared encoder, for anyone who
lives in that ecosystem) and ``load_model(dir)`` (everything: encoder, PALs, heads) read it:

- ``config.json`` + ``model.safetensors``: the encoder (embeddings, layers, pooler) under BertModel's
  own parameter names, exactly what ``BertModel.save_pretrained`` would write;
- ``palbert_task_layers.safetensors``: the PALs and task heads (names as in ``MultitaskBert.state_dict``),
  which BertModel has no place for;
- ``palbert_model.json``: format version and ModelParams;
- the tokenizer's own files.

Loading needs neither the training state nor the original pretrained directory. Directories of format
1 (one ``model.safetensors`` with every weight, the BertConfig inside ``palbert_model.json``) still load.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig

from palbert.errors import ModelLoadError  # noqa: F401 - raised here, caught by palbert.stage
from palbert.atomic import atomic_dir, read_json_object
from palbert.config import ParamsError, params_from_dict
from palbert.model.multitask import MultitaskBert
from palbert.encoder_source import bert_config_problem

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
TASK_WEIGHTS_FILE = "palbert_task_layers.safetensors"
CONFIG_FILE = "palbert_model.json"
HF_CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: ``MultitaskBert``'s encoder lives under this prefix; BertModel's own names are the rest.
ENCODER_PREFIX = "bert."
_PAL_PREFIX = "bert.pals."



def _is_encoder_key(name: str) -> bool:
    """A parameter BertModel has (everything under ``bert.`` except the PALs)."""
    return name.startswith(ENCODER_PREFIX) and not name.startswith(_PAL_PREFIX)


def save_model(model: MultitaskBert, tokenizer: Any, path: str | Path) -> Path:
    """Write ``path`` atomically: an interrupted save leaves the previous model directory intact."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    path = Path(path)
    metadata = {"format": "pt", "palbert_format": str(FORMAT_VERSION)}  # "pt": what transformers checks
    with atomic_dir(path) as tmp:
        weights = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
        encoder = {name[len(ENCODER_PREFIX):]: t for name, t in weights.items() if _is_encoder_key(name)}
        task_layers = {name: t for name, t in weights.items() if not _is_encoder_key(name)}
        save_file(encoder, str(tmp / WEIGHTS_FILE), metadata=metadata)
        save_file(task_layers, str(tmp / TASK_WEIGHTS_FILE), metadata=metadata)
        bert_config = BertConfig.from_dict(model.bert_config.to_dict())
        bert_config.architectures = ["BertModel"]
        bert_config.save_pretrained(str(tmp))
        config = {"format_version": FORMAT_VERSION, "model_params": dataclasses.asdict(model.params)}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        tokenizer.save_pretrained(str(tmp))
    log.info("saved model to %s", path)
    return path


def _read_config(path: Path) -> dict[str, Any]:
    config_path = path / CONFIG_FILE
    config = read_json_object(config_path, ModelLoadError, "not a saved palbert model directory?")
    version = config.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ModelLoadError(f"{config_path}: format_version {version!r}, this code reads "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
    if not isinstance(config.get("model_params"), dict):
        raise ModelLoadError(f"{config_path}: key 'model_params' missing or not an object")
    if version == 1 and not isinstance(config.get("bert_config"), dict):
        raise ModelLoadError(f"{config_path}: key 'bert_config' missing or not an object")
    return config


def _read_bert_config(path: Path, config: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """The BertConfig dict and the file it came from: ``config.json`` (format 2) or palbert_model.json (1)."""
    if config["format_version"] == 1:
        return config["bert_config"], path / CONFIG_FILE
    hf_path = path / HF_CONFIG_FILE
    return read_json_object(hf_path, ModelLoadError, "the encoder's Hugging Face config was not saved"), hf_path


def _build_model(config: dict[str, Any], config_path: Path, bert_config: dict[str, Any],
                 bert_config_path: Path) -> MultitaskBert:
    try:
        # models saved before ``model.pooling`` existed all read BERT's [CLS] pooler
        params = params_from_dict({"model": {"pooling": "cls", **config["model_params"]}}).model
    except ParamsError as exc:
        raise ModelLoadError(f"{config_path}: model_params: {exc}") from None
    problem = bert_config_problem(bert_config)  # before a negative or absurd size reaches the allocator
    if problem:
        raise ModelLoadError(f"{bert_config_path}: bert_config: {problem}; the folder is damaged: save the model again")
    try:
        return MultitaskBert(BertConfig.from_dict(bert_config), params)
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(f"{bert_config_path}: bert_config: {exc}") from None


def _read_file(weights_path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    if not weights_path.is_file():
        raise ModelLoadError(f"{weights_path}: missing")
    try:
        return load_file(str(weights_path), device=str(device))
    except Exception as exc:  # safetensors raises SafetensorError / OSError / ValueError for damaged files
        raise ModelLoadError(f"{weights_path}: not a readable safetensors file ({exc})") from None


def _check_weights(weights_path: Path, weights: dict[str, torch.Tensor],
                   expected: dict[str, torch.Tensor]) -> None:
    """``weights`` (named as in the model) are exactly ``expected``'s keys and shapes; else name the file."""
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise ModelLoadError(f"{weights_path}: key {missing[0]!r} missing ({len(missing)} missing in all)")
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        raise ModelLoadError(f"{weights_path}: unexpected key {unexpected[0]!r} ({len(unexpected)} in all)")
    for name, tensor in sorted(weights.items()):
        if tensor.shape != expected[name].shape:
            raise ModelLoadError(
                f"{weights_path}: key {name!r} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(expected[name].shape)}"
            )


def _read_weights(path: Path, version: int, model: MultitaskBert,
                  device: str | torch.device) -> dict[str, torch.Tensor]:
    """Every weight of ``model``, checked file by file so that an error names the file at fault."""
    expected = model.state_dict()
    if version == 1:
        weights = _read_file(path / WEIGHTS_FILE, device)
        _check_weights(path / WEIGHTS_FILE, weights, expected)
        return weights
    encoder = {ENCODER_PREFIX + name: t for name, t in _read_file(path / WEIGHTS_FILE, device).items()}
    _check_weights(path / WEIGHTS_FILE, encoder, {k: v for k, v in expected.items() if _is_encoder_key(k)})
    task_layers = _read_file(path / TASK_WEIGHTS_FILE, device)
    _check_weights(path / TASK_WEIGHTS_FILE, task_layers,
                   {k: v for k, v in expected.items() if not _is_encoder_key(k)})
    return {**encoder, **task_layers}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[MultitaskBert, Any]:
    """Rebuild the model and its tokenizer from a ``save_model`` directory; raises ModelLoadError."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"{path}: model directory not found (the train stage writes models/best: `dvc repro`, "
                             "`dvc exp apply <experiment>` after a `--temp` run, or `dvc pull models/best` from a "
                             "DVC remote)")
    config = _read_config(path)
    model = _build_model(config, path / CONFIG_FILE, *_read_bert_config(path, config))
    model.load_state_dict(_read_weights(path, config["format_version"], model, device))
    model.to(device)
    if not (path / TOKENIZER_CONFIG_FILE).is_file():
        raise ModelLoadError(f"{path / TOKENIZER_CONFIG_FILE}: missing (the tokenizer was not saved)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True)
    except Exception as exc:  # tokenizers raise a variety of types for damaged files
        raise ModelLoadError(f"{path}: cannot load the tokenizer ({exc})") from None
    log.info("loaded model from %s", path)
    return model, tokenizer
