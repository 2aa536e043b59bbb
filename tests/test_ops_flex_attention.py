"""FlexAttention (ai.onnx.preview): grouped-query attention with score_mod and prob_mod
subgraphs inlined, against numpy; a modifier Kiln cannot convert is refused by name."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.errors import UnsupportedOperatorError
from tests.util import BACKENDS, kiln_run

RNG = np.random.default_rng(9)


def _causal_score_mod(lq, lk):
    """scores where q_idx >= k_idx, else -1e9 (a causal mask as a subgraph with its own constants)."""
    consts = [numpy_helper.from_array((np.arange(lq)[:, None] >= np.arange(lk)[None, :]), "mask"),
              numpy_helper.from_array(np.array(-1e9, np.float32), "neg")]
    nodes = [helper.make_node("Where", ["mask", "scores", "neg"], ["out"])]
    vi = helper.make_tensor_value_info
    return helper.make_graph(nodes, "score_mod", [vi("scores", TensorProto.FLOAT, None)],
                             [vi("out", TensorProto.FLOAT, None)], initializer=consts)


def _prob_mod(outer_value: str):
    """probabilities times a value from the enclosing graph (an outer-scope read)."""
    vi = helper.make_tensor_value_info
    return helper.make_graph([helper.make_node("Mul", ["probs", outer_value], ["out"])], "prob_mod",
                             [vi("probs", TensorProto.FLOAT, None)], [vi("out", TensorProto.FLOAT, None)])


def _model(qs, ks, vs, score_mod=None, prob_mod=None, scale=None, op="FlexAttention"):
    attrs = {}
    if score_mod is not None:
        attrs["score_mod"] = score_mod
    if prob_mod is not None:
        attrs["prob_mod"] = prob_mod
    if scale is not None:
        attrs["scale"] = scale
    node = helper.make_node(op, ["q", "k", "v"], ["y"], domain="ai.onnx.preview", **attrs)
    vi = helper.make_tensor_value_info
    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    graph = helper.make_graph([node], "flex", [vi(n, TensorProto.FLOAT, s) for n, s in (("q", qs), ("k", ks), ("v", vs))],
                              [vi("y", TensorProto.FLOAT, (qs[0], qs[1], qs[2], vs[3]))], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 26), helper.make_opsetid("ai.onnx.preview", 1)])
    m.ir_version = 11
    return m


def _reference(q, k, v, scale, causal, prob_scale):
    g = q.shape[1] // k.shape[1]
    kk, vv = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    s = q @ kk.transpose(0, 1, 3, 2) * scale
    if causal:
        s = np.where(np.arange(q.shape[2])[:, None] >= np.arange(k.shape[2])[None, :], s, -1e9)
    p = np.exp(s - s.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True) * prob_scale
    return (p @ vv).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal, with_prob_mod, scale", [(False, False, None), (True, True, 0.3)])
def test_flex_attention_with_grouped_heads_and_modifiers(backend, causal, with_prob_mod, scale):
    qs, ks, vs = (2, 6, 5, 8), (2, 2, 5, 8), (2, 2, 5, 4)  # three query heads per key/value head
    model = _model(qs, ks, vs, _causal_score_mod(5, 5) if causal else None,
                   _prob_mod("half") if with_prob_mod else None, scale)
    feeds = {n: RNG.standard_normal(s).astype(np.float32) for n, s in (("q", qs), ("k", ks), ("v", vs))}
    got = kiln_run(model, feeds, backend)["y"]
    want = _reference(feeds["q"], feeds["k"], feeds["v"], scale or 1 / np.sqrt(8), causal, 0.5 if with_prob_mod else 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_modifier_with_an_unconvertible_op_is_refused_by_name():
    import kiln

    vi = helper.make_tensor_value_info
    mod = helper.make_graph([helper.make_node("Unique", ["scores"], ["out"])], "score_mod",
                            [vi("scores", TensorProto.FLOAT, None)], [vi("out", TensorProto.FLOAT, None)])
    with pytest.raises(UnsupportedOperatorError, match="Unique"):
        kiln.compile(_model((1, 1, 2, 4), (1, 1, 2, 4), (1, 1, 2, 4), score_mod=mod))
