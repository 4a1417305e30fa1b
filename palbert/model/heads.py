"""The task heads on the sentence embedding (paper 4.2), and the shared relational layer (4.1).

One linear layer per ``palbert.tasks.TASK_SPECS`` entry, ``outputs`` wide, on single or pair features:
sst: linear -> 5 logits (cross-entropy). para: linear -> 1 logit (binary cross-entropy).
sts: linear -> 1 score on the 0..5 scale (MSE; the raw output is trained, ``predict`` clamps it).

The sts output's bias starts at the middle of the scale (2.5), not 0: from 0 the first MSE is ~10, 15x the
other losses, and the shared encoder is bent to produce scores of 2.5 before anything else is learnt (a
300-step interleaved run kept Quora at the majority class that way; see docs/training.md).

Pair features: with ``joint`` pair encoding the pair is one input, so its pooled embedding [H] is
the feature; with ``separate`` it is the plain concatenation [a; b] of the two embeddings [2H]
(the paper's baseline; no |a-b| or a*b terms).

The relational layer (paper's model 6) is ONE module that both pair heads pass their features
through first; the task's own linear layer follows. It is Linear + GELU: without a
non-linearity it would fold into the next linear layer and add nothing but parameters.
"""

from __future__ import annotations

from torch import Tensor, nn

from palbert.model.encoder import init_bert_weights
from palbert.tasks import PAIR_TASKS, TASK_SPECS  # noqa: F401 - PAIR_TASKS re-exported by palbert.model


class RelationalLayer(nn.Module):
    """GELU(W x + b), shared by the para and sts heads."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(size, size)
        self.activation = nn.GELU()

    def forward(self, features: Tensor) -> Tensor:
        return self.activation(self.dense(features))


def pair_feature_size(hidden_size: int, pair_encoding: str) -> int:
    """Width of a pair's features: H for a joint input, 2H for two concatenated embeddings."""
    if pair_encoding not in ("joint", "separate"):
        raise ValueError(f"pair_encoding must be 'joint' or 'separate', got {pair_encoding!r}")
    return hidden_size if pair_encoding == "joint" else 2 * hidden_size


class TaskHeads(nn.Module):
    """One output layer per task, routed by task name; pair tasks may share a relational layer first."""

    def __init__(self, hidden_size: int, pair_encoding: str, relational_layer: bool) -> None:
        super().__init__()
        pair_size = pair_feature_size(hidden_size, pair_encoding)
        self.relational = RelationalLayer(pair_size) if relational_layer else None
        self.outputs = nn.ModuleDict({task: nn.Linear(pair_size if spec.pair else hidden_size, spec.outputs)
                                      for task, spec in TASK_SPECS.items()})

    def reset_parameters(self, std: float) -> None:
        """BERT's initialisation (normal(0, std) weights, zero biases), a score head's bias at its scale's middle."""
        self.apply(lambda module: init_bert_weights(module, std))
        for task, spec in TASK_SPECS.items():
            if spec.score_range is not None:
                nn.init.constant_(self.outputs[task].bias, sum(spec.score_range) / 2)

    def relational_for(self, task: str) -> RelationalLayer | None:
        """The relational layer ``task``'s features pass through (the same object for para and sts)."""
        return self.relational if task in PAIR_TASKS else None

    def forward(self, task: str, features: Tensor) -> Tensor:
        """sst: logits [B, 5]; para: logit [B]; sts: score [B]."""
        if task not in self.outputs:
            raise KeyError(f"unknown task {task!r} (tasks: {list(self.outputs)})")
        relational = self.relational_for(task)
        if relational is not None:
            features = relational(features)
        out = self.outputs[task](features)
        return out.squeeze(-1) if TASK_SPECS[task].outputs == 1 else out
