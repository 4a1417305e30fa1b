"""PAL BERT: the encoder with Projected Attention Layers, the task heads, and save/load."""

from palbert.model.encoder import PalBertLayer, PalBertModel
from palbert.model.heads import PAIR_TASKS, RelationalLayer, TaskHeads
from palbert.model.io import ModelLoadError, load_model, save_model
from palbert.model.multitask import MultitaskBert, TaskOutput
from palbert.model.pal import ProjectedAttention
from palbert.model.pretrained_weights import load_pretrained_bert, load_tokenizer, resolve_pretrained

__all__ = [
    "PAIR_TASKS",
    "ModelLoadError",
    "MultitaskBert",
    "PalBertLayer",
    "PalBertModel",
    "ProjectedAttention",
    "RelationalLayer",
    "TaskHeads",
    "TaskOutput",
    "load_model",
    "load_pretrained_bert",
    "load_tokenizer",
    "resolve_pretrained",
    "save_model",
]
