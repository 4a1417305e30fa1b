"""Save and load a trained ``MultitaskBert`` as a self-contained directory, without pickle.

Layout: ``model.safetensors`` (all weights), ``palbert_model.json`` (format version, ModelParams,
the BertConfig dict) and the tokenizer's own files. Loading needs neither the training state nor
the original pretrained directory: the BertConfig in the JSON rebuilds the shape, the weights fill it.
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

from palbert.atomic import atomic_dir
from palbert.config import ParamsError, params_from_dict
from palbert.model.multitask import MultitaskBert
from palbert.pretrained_source import bert_config_problem

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "palbert_model.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
FORMAT_VERSION = 1


class ModelLoadError(RuntimeError):
    """A saved model directory cannot be loaded; the message names the file (and key) at fault."""


def save_model(model: MultitaskBert, tokenizer: Any, path: str | Path) -> Path:
    """Write ``path`` atomically: an interrupted save leaves the previous model directory intact."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    path = Path(path)
    with atomic_dir(path) as tmp:
        weights = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "palbert_format": str(FORMAT_VERSION)})
        config = {
            "format_version": FORMAT_VERSION,
            "model_params": dataclasses.asdict(model.params),
            "bert_config": model.bert_config.to_dict(),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        tokenizer.save_pretrained(str(tmp))
    logger.info("saved model to %s", path)
    return path


def _read_config(path: Path) -> dict[str, Any]:
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise ModelLoadError(f"{config_path}: missing (not a saved palbert model directory?)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_path}: expected a JSON object")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelLoadError(f"{config_path}: format_version {version!r}, this code reads {FORMAT_VERSION}")
    for key in ("model_params", "bert_config"):
        if not isinstance(config.get(key), dict):
            raise ModelLoadError(f"{config_path}: key {key!r} missing or not an object")
    return config


def _build_model(config: dict[str, Any], config_path: Path) -> MultitaskBert:
    try:
        # models saved before ``model.pooling`` existed all read BERT's [CLS] pooler
        params = params_from_dict({"model": {"pooling": "cls", **config["model_params"]}}).model
    except ParamsError as exc:
        raise ModelLoadError(f"{config_path}: model_params: {exc}") from None
    problem = bert_config_problem(config["bert_config"])  # before a negative or absurd size reaches the allocator
    if problem:
        raise ModelLoadError(f"{config_path}: bert_config: {problem}; the folder is damaged: save the model again")
    try:
        bert_config = BertConfig.from_dict(config["bert_config"])
        return MultitaskBert(bert_config, params)
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(f"{config_path}: bert_config: {exc}") from None


def _read_weights(weights_path: Path, model: MultitaskBert, device: str | torch.device) -> dict[str, torch.Tensor]:
    if not weights_path.is_file():
        raise ModelLoadError(f"{weights_path}: missing")
    try:
        weights = load_file(str(weights_path), device=str(device))
    except Exception as exc:  # safetensors raises SafetensorError / OSError / ValueError for damaged files
        raise ModelLoadError(f"{weights_path}: not a readable safetensors file ({exc})") from None
    expected = model.state_dict()
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
    return weights


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[MultitaskBert, Any]:
    """Rebuild the model and its tokenizer from a ``save_model`` directory; raises ModelLoadError."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"{path}: model directory not found")
    model = _build_model(_read_config(path), path / CONFIG_FILE)
    model.load_state_dict(_read_weights(path / WEIGHTS_FILE, model, device))
    model.to(device)
    if not (path / TOKENIZER_CONFIG_FILE).is_file():
        raise ModelLoadError(f"{path / TOKENIZER_CONFIG_FILE}: missing (the tokenizer was not saved)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True)
    except Exception as exc:  # tokenizers raise a variety of types for damaged files
        raise ModelLoadError(f"{path}: cannot load the tokenizer ({exc})") from None
    logger.info("loaded model from %s", path)
    return model, tokenizer
