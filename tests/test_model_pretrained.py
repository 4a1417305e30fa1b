"""PAL BERT on the real embedded all-MiniLM-L6-v2 weights: equivalence with BertModel and the parameter report."""

from __future__ import annotations

import dataclasses

import pytest
import torch
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
