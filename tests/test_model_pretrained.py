"""PAL BERT on the real embedded all-MiniLM-L6-v2 weights: equivalence with BertModel and the parameter report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BertModel

from palbert.config import ModelParams
from palbert.data.batching import EncoderInputs
from palbert.model import MultitaskBert, load_tokenizer, resolve_pretrained

pytestmark = pytest.mark.e2e

SENTENCES_A = ["The movie was a delight from start to finish.", "How do I learn Python?", "A man plays guitar."]
SENTENCES_B = ["I hated every minute.", "What is the best way to learn Python quickly?", "Someone is playing music."]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("embedded")


def test_minilm_without_pals_equals_bert_model(tokenizer):
    params = dataclasses.replace(ModelParams(), pals=False)
    ours = MultitaskBert.from_pretrained(params).eval()
    reference = BertModel.from_pretrained(resolve_pretrained("embedded")).eval()
    encoded = tokenizer(SENTENCES_A, SENTENCES_B, padding=True, return_tensors="pt")
    lonely = tokenizer(SENTENCES_A, padding=True, return_tensors="pt")
    for inputs in (encoded, lonely):
        with torch.no_grad():
            expected = reference(**inputs)
            got = ours.bert(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
        assert (got.last_hidden_state - expected.last_hidden_state).abs().max() <= 1e-5
        assert (got.pooler_output - expected.pooler_output).abs().max() <= 1e-5


def test_minilm_with_pals_parameter_report_and_dropout(tokenizer):
    model = MultitaskBert.from_pretrained(ModelParams())
    report = model.parameter_report()
    assert report["encoder"] == sum(p.numel() for p in BertModel.from_pretrained(resolve_pretrained("embedded")).parameters())
    assert set(report["pal_per_task"]) == {"sst", "para", "sts"}
    assert 0 < report["pal_overhead_pct"] < 50
    assert model.bert_config.hidden_dropout_prob == ModelParams().encoder_dropout
    inputs = tokenizer(SENTENCES_A, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        pooled = model.encode(EncoderInputs(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]), "sst")
    assert pooled.shape == (3, 384) and torch.isfinite(pooled).all()


def test_mean_pooling_is_how_the_embedded_minilm_was_trained(tokenizer):
    """The default ``model.pooling: mean`` rests on this: the package's own pooling config, and its effect."""
    pooling = json.loads((Path(resolve_pretrained("embedded")) / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    questions = ["How do I learn Python?", "What is the capital of France?", "A man plays guitar."]
    paraphrases = ["What is the best way to learn Python quickly?", "Which city is France's capital?",
                   "Someone is playing a guitar."]
    model = MultitaskBert.from_pretrained(dataclasses.replace(ModelParams(), pals=False, pooling="mean")).eval()
    with torch.no_grad():
        embeddings = [model.encode(EncoderInputs(*(encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids"))), "sst")
                      for encoded in (tokenizer(texts, padding=True, return_tensors="pt") for texts in (questions, paraphrases))]
    similarity = F.normalize(embeddings[0], dim=-1) @ F.normalize(embeddings[1], dim=-1).T
    # each sentence is closest to its own paraphrase, by a wide margin (cosine 0.81-0.94 vs at most 0.11 here;
    # the [CLS] pooler gives 0.95-0.99 vs up to 0.64: a margin of 0.31)
    off_diagonal = similarity.masked_fill(torch.eye(3, dtype=torch.bool), -1.0)
    assert similarity.diagonal().min() - off_diagonal.max() > 0.5, similarity
