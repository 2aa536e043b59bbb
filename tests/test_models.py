"""The project's own models (examples/models.py) compiled for the host, against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest

import kiln
from examples import models
from tests.util import assert_close, ort_run

CASES = {
    "small_cnn": lambda: models.small_cnn(),
    "resnet18_style": lambda: models.resnet_style(18, image=64),
    "mobilenetv2_style": lambda: models.mobilenetv2_style(image=64),
    "bert_encoder_masked": lambda: models.bert_encoder(layers=2, hidden=64, heads=4, seq=16, ffn=128),
    "gpt_decoder_causal": lambda: models.gpt_decoder(layers=2, hidden=64, heads=4, seq=16),
    "lstm_classifier": lambda: models.recurrent_classifier("lstm", seq=12, features=10, hidden=24),
    "gru_classifier": lambda: models.recurrent_classifier("gru", seq=12, features=10, hidden=24),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_matches_ort(name):
    model = CASES[name]()
    feeds = models.example_inputs(model, seed=1)
    want = ort_run(model, feeds)
    got = kiln.compile(model).run(feeds)
    assert_close(got, want, rtol=1e-3, atol=1e-4)


def test_bert_mask_changes_output():
    """The attention mask is honoured: masking tokens changes the unmasked outputs."""
    model = CASES["bert_encoder_masked"]()
    feeds = models.example_inputs(model, seed=2)
    mask_name = next(k for k, v in feeds.items() if v.ndim == 2)
    m = kiln.compile(model)
    full = dict(feeds, **{mask_name: np.ones_like(feeds[mask_name])})
    half = dict(feeds, **{mask_name: np.concatenate(
        [np.ones((1, 8), np.float32), np.zeros((1, 8), np.float32)], axis=1)})
    a, b = m.run(full), m.run(half)
    out = next(iter(a))
    assert not np.allclose(a[out], b[out])
    assert_close(b, ort_run(model, half), rtol=1e-3, atol=1e-4)
