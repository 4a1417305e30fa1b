"""``MultitaskBert``: one PAL BERT encoder, three task heads, routed by ``batch.task``.

The forward pass encodes ``batch.inputs`` (and ``batch.inputs_b`` for a separately encoded pair)
with that task's PALs only, so the other tasks' PAL parameters take no part in the graph and keep
``.grad is None``. With ``simcse=True`` it encodes ``batch.inputs`` a second time: in train mode
the dropout masks differ, which is the noise unsupervised SimCSE contrasts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from transformers import BertConfig

from palbert.config import ModelParams
from palbert.model.encoder import PalBertModel, mean_pool
from palbert.model.heads import TaskHeads
from palbert.tasks import PAIR_TASKS, TASK_SPECS, TASKS
from palbert.model.pretrained_weights import load_pretrained_bert

if TYPE_CHECKING:
    from palbert.data.batching import EncoderInputs, TaskBatch

log = logging.getLogger(__name__)


@dataclass
class TaskOutput:
    prediction: Tensor  # sst logits [B, 5]; para logit [B]; sts score [B]
    embedding: Tensor  # sentence embedding of batch.inputs (before head dropout) [B, H]
    embedding_again: Tensor | None = None  # a second dropout pass of batch.inputs, when simcse or rdrop
    prediction_again: Tensor | None = None  # the head on embedding_again (its own head dropout), when rdrop


def with_encoder_dropout(config: BertConfig, dropout: float) -> BertConfig:
    """A copy of ``config`` whose hidden and attention dropout are ``model.encoder_dropout``."""
    config = BertConfig.from_dict(config.to_dict())
    config.hidden_dropout_prob = dropout
    config.attention_probs_dropout_prob = dropout
    return config


class MultitaskBert(nn.Module):
    """PAL BERT + heads for sst, para and sts. Build with ``from_pretrained`` (or ``io.load_model``)."""

    def __init__(self, bert_config: BertConfig, params: ModelParams) -> None:
        """Randomly initialised model of this shape; ``bert_config`` is used as given (dropout included)."""
        super().__init__()
        self.params = params
        self.bert = PalBertModel(
            bert_config,
            pal_tasks=TASKS if params.pals else (),
            pal_size=params.pal_size,
            pal_heads=params.pal_heads,
            pal_activation=params.pal_activation,
        )
        self.head_dropout = nn.Dropout(params.hidden_dropout)
        self.heads = TaskHeads(bert_config.hidden_size, params.pair_encoding, params.relational_layer)
        self.heads.reset_parameters(bert_config.initializer_range)
        if params.freeze_encoder:
            self.freeze_encoder()

    @property
    def bert_config(self) -> BertConfig:
        return self.bert.config

    @classmethod
    def from_pretrained(cls, params: ModelParams) -> "MultitaskBert":
        """The encoder from ``params.pretrained`` (embedded MiniLM, a BERT dir or hub id); fresh PALs and heads."""
        config, state_dict = load_pretrained_bert(params.pretrained)
        model = cls(with_encoder_dropout(config, params.encoder_dropout), params)
        model.bert.load_bert_state_dict(state_dict)
        return model

    def freeze_encoder(self) -> None:
        """Train only PALs and heads (the parameter-efficient mode of the PALs paper)."""
        for _, parameter in self.bert.encoder_parameters():
            parameter.requires_grad_(False)

    def encode(self, inputs: "EncoderInputs", task: str) -> Tensor:
        """Sentence embedding [B, H] of ``inputs`` through ``task``'s PALs (``model.pooling``: cls or mean)."""
        output = self.bert(inputs.input_ids, inputs.attention_mask, inputs.token_type_ids, task=task)
        if self.params.pooling == "mean":
            return mean_pool(output.last_hidden_state, inputs.attention_mask)
        return output.pooler_output

    def forward(self, batch: "TaskBatch", simcse: bool = False, rdrop: bool = False) -> TaskOutput:
        """``simcse``: also the second dropout view's embedding; ``rdrop``: also the head's prediction on it
        (R-Drop, joint or single-sentence inputs only)."""
        task = batch.task
        if rdrop and task in PAIR_TASKS and self.params.pair_encoding == "separate":
            raise ValueError("R-Drop needs pair_encoding=joint: a separate pair has a second input to view twice")
        if simcse or rdrop:
            # Both SimCSE views in one pass over the batch stacked on itself: dropout draws per row, so the
            # two halves are two independent dropout views, at the cost of one larger (faster) forward.
            inputs = batch.inputs
            doubled = type(inputs)(*(torch.cat([t, t]) for t in
                                     (inputs.input_ids, inputs.attention_mask, inputs.token_type_ids)))
            embedding, embedding_again = self.encode(doubled, task).chunk(2)
        else:
            embedding, embedding_again = self.encode(batch.inputs, task), None
        features = self.head_dropout(embedding)
        if task in PAIR_TASKS and self.params.pair_encoding == "separate":
            if batch.inputs_b is None:
                raise ValueError(f"task {task!r} with pair_encoding=separate needs batch.inputs_b (sentence 2)")
            features = torch.cat([features, self.head_dropout(self.encode(batch.inputs_b, task))], dim=-1)
        prediction = self.heads(task, features)
        prediction_again = self.heads(task, self.head_dropout(embedding_again)) if rdrop else None
        return TaskOutput(prediction=prediction, embedding=embedding, embedding_again=embedding_again,
                          prediction_again=prediction_again)

    @torch.no_grad()
    def predict(self, batch: "TaskBatch") -> Tensor:
        """sst: class 0..4 (long); para: 0/1 (long); sts: score clamped to 0..5 (float).

        Runs in the model's current mode: call ``model.eval()`` first for deterministic predictions.
        """
        return TASK_SPECS[batch.task].predict(self.forward(batch).prediction)

    def parameter_report(self) -> dict[str, Any]:
        """Parameter counts (total, trainable, encoder, heads, PALs per task) and PAL overhead % of the encoder."""
        encoder = sum(p.numel() for _, p in self.bert.encoder_parameters())
        pal_per_task = {task: sum(p.numel() for p in pal.parameters()) for task, pal in self.bert.pals.items()}
        pal_total = sum(pal_per_task.values())
        report: dict[str, Any] = {
            "total": sum(p.numel() for p in self.parameters()),
            "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "encoder": encoder,
            "heads": sum(p.numel() for p in self.heads.parameters()),
            "pal_per_task": pal_per_task,
            "pal_total": pal_total,
            "pal_overhead_pct": 100.0 * pal_total / encoder,
            "pal_overhead_pct_per_task": 100.0 * pal_total / encoder / max(len(pal_per_task), 1),
        }
        log.info(
            "parameters: total %s, trainable %s, encoder %s, heads %s, PALs %s per task (%s in all, +%.2f%% of the encoder)",
            f"{report['total']:,}",
            f"{report['trainable']:,}",
            f"{encoder:,}",
            f"{report['heads']:,}",
            {t: f"{n:,}" for t, n in pal_per_task.items()},
            f"{pal_total:,}",
            report["pal_overhead_pct"],
        )
        return report
