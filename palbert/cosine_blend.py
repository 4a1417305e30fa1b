"""STS scores blended with the pretrained encoder's cosine similarity (``evaluate.sts_cosine_blend``).

The pretrained encoder (``model.pretrained`` before any fine-tuning: all-MiniLM-L6-v2 was trained for exactly
this) embeds each sentence of a pair alone, mean-pooled over its tokens; the blended score is
``(1 - w) * the model's score + w * 5 * cos``, clamped to the scale 0..5. The weight is a setting fixed before
scoring, not fitted on dev. Training's dev scoring (the best epoch's choice) and the evaluate stage's dev scores
and prediction files use it; ``palbert predict`` and the MLflow Model give the fine-tuned model's own score.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from palbert.data.batching import SpecialTokens, make_batch
from palbert.data.prepared import PreparedSplit
from palbert.model.encoder import PalBertModel, mean_pool
from palbert.model.pretrained_weights import load_pretrained_bert
from palbert.precision import autocast
from palbert.tasks import TASK_SPECS

#: The task whose scores are blended.
BLENDED_TASK = "sts"


class PretrainedCosine:
    """The pretrained encoder (no PALs, eval mode) and the cosine similarities of a split's pairs, kept per split."""

    def __init__(self, pretrained: str, device: torch.device) -> None:
        config, state_dict = load_pretrained_bert(pretrained)
        # Building the encoder draws its (then overwritten) initial weights from the global RNG; training builds
        # this after seeding, so the draw must not move the RNG that its dropout and sampling go on from.
        with torch.random.fork_rng(devices=[]):
            self.encoder = PalBertModel(config)
        self.encoder.load_bert_state_dict(state_dict)
        self.encoder.to(device).eval()
        self._kept: dict[tuple[str, str, int], np.ndarray] = {}

    @torch.inference_mode()
    def _embed(self, split: PreparedSplit, special: SpecialTokens, max_length: int, batch_size: int,
               precision: str) -> torch.Tensor:
        device = next(self.encoder.parameters()).device
        out = []
        for start in range(0, len(split), batch_size):
            rows = range(start, min(start + batch_size, len(split)))
            batch = make_batch(split, rows, task="sst", pair_encoding="joint", special=special,
                               max_length=max_length).inputs.to(device)
            with autocast(precision, device):
                hidden = self.encoder(batch.input_ids, batch.attention_mask, batch.token_type_ids).last_hidden_state
            out.append(mean_pool(hidden.float(), batch.attention_mask))
        return torch.cat(out)

    def similarities(self, split: PreparedSplit, special: SpecialTokens, max_length: int, batch_size: int,
                     precision: str) -> np.ndarray:
        """cos(sentence 1, sentence 2) of every pair of ``split``, in file order."""
        key = (split.dataset, split.split, len(split))
        if key not in self._kept:
            if split.second is None:
                raise ValueError(f"{split.dataset}-{split.split}: the cosine blend needs sentence pairs")
            alone = [PreparedSplit(split.dataset, split.split, split.ids, texts, None, None)
                     for texts in (split.first, split.second)]
            a, b = (self._embed(part, special, max_length, batch_size, precision) for part in alone)
            self._kept[key] = F.cosine_similarity(a, b, dim=-1).double().cpu().numpy()
        return self._kept[key]


def blend(scores: np.ndarray, cosines: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * scores + weight * high * cosines``, clamped to the task's score range (0..5)."""
    low, high = TASK_SPECS[BLENDED_TASK].score_range  # type: ignore[misc]
    return np.clip((1.0 - weight) * scores + weight * high * cosines, low, high)
