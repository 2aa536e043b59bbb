"""TfIdfVectorizer over integer token ids (kiln/frontend/onnx_ops/tfidf.py) against ONNX
Runtime on every backend: n-gram lengths, skips, the three weightings, 1-d and batched
inputs, repeated output slots; and the errors bad pools get."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import kiln
from kiln.errors import KilnError, UnsupportedOperatorError
from tests.util import BACKENDS, check_against_ort, make_model

# unigrams 2, 3, 5, 4; bigrams (5, 6), (7, 8), (6, 7); trigram (3, 3, 7)
POOL = dict(ngram_counts=[0, 4, 10], pool_int64s=[2, 3, 5, 4, 5, 6, 7, 8, 6, 7, 3, 3, 7],
            ngram_indexes=[0, 1, 2, 3, 4, 5, 6, 7])
TOKENS = np.array([[1, 1, 3, 3, 3, 7, 8, 6, 7, 5, 6, 8], [2, 5, 6, 7, 8, 3, 3, 7, 4, 4, 2, 6]])


def _model(shape, dtype=np.int64, **attrs):
    attrs = {**POOL, **attrs}
    outputs = max(attrs["ngram_indexes"]) + 1
    node = helper.make_node("TfIdfVectorizer", ["x"], ["y"], **attrs)
    out_shape = [shape[0], outputs] if len(shape) == 2 else [outputs]
    return make_model([node], [("x", dtype, list(shape))], [("y", np.float32, out_shape)], opset=9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lo, hi, skips", [(1, 1, 0), (1, 2, 0), (2, 2, 3), (1, 3, 5), (3, 3, 1), (2, 3, 2)])
def test_counts(lo, hi, skips, backend):
    model = _model(TOKENS.shape, min_gram_length=lo, max_gram_length=hi, max_skip_count=skips, mode="TF")
    check_against_ort(model, {"x": TOKENS}, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["TF", "IDF", "TFIDF"])
@pytest.mark.parametrize("weights", [None, [0.5, 1, 2, 3, 0.25, 4, 5, 6]])
def test_weightings(mode, weights, backend):
    attrs = dict(min_gram_length=1, max_gram_length=3, max_skip_count=2, mode=mode)
    if weights:
        attrs["weights"] = weights
    check_against_ort(_model(TOKENS.shape, **attrs), {"x": TOKENS}, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_row_int32_and_shared_slots(backend):
    """A 1-d input gives a 1-d output; two n-grams writing one slot add up."""
    model = _model((12,), np.int32, min_gram_length=1, max_gram_length=2, max_skip_count=1, mode="TF",
                   ngram_indexes=[0, 1, 1, 2, 3, 3, 4, 5])
    check_against_ort(model, {"x": TOKENS[0].astype(np.int32)}, backend)


def test_bad_pools_are_refused():
    strings = helper.make_node("TfIdfVectorizer", ["x"], ["y"], min_gram_length=1, max_gram_length=1, mode="TF",
                               max_skip_count=0,
                               ngram_counts=[0], ngram_indexes=[0], pool_strings=["a"])
    model = make_model([strings], [("x", np.int64, [4])], [("y", np.float32, [1])], opset=9)
    with pytest.raises(UnsupportedOperatorError, match="string n-gram pool"):
        kiln.compile(model, target="host")
    with pytest.raises(KilnError, match="weights has 2 values; expected one per output"):
        kiln.compile(_model(TOKENS.shape, min_gram_length=1, max_gram_length=1, max_skip_count=0, mode="IDF",
                            weights=[1.0, 2.0]), target="host")
    with pytest.raises(KilnError, match="not a whole number of 2-grams"):
        kiln.compile(_model(TOKENS.shape, min_gram_length=1, max_gram_length=2, max_skip_count=0, mode="TF",
                            ngram_counts=[0, 4, 9]), target="host")
