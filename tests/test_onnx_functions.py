"""ONNX function ops without a Kiln converter are expanded into their bodies
(kiln/frontend/onnx_functions.py): CausalConvWithState (opset 27) against a numpy reference,
ops Kiln converts natively expanded instead (their converters hidden) against ONNX Runtime --
attribute references, defaults, context-dependent bodies, bodies written for another opset --
and bodies with subgraphs left unsupported."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import kiln
from kiln.errors import UnsupportedOperatorError
from kiln.frontend import onnx as frontend
from tests.util import BACKENDS, make_model, ort_run

RNG = np.random.default_rng(21)


def _causal_conv_reference(x, w, bias, past, silu):
    """Depthwise causal 1-D convolution over [past, x]; the new state is the last k-1 positions."""
    k = w.shape[-1]
    full = np.concatenate([past, x], axis=-1)
    out = np.zeros_like(x)
    for t in range(x.shape[-1]):
        out[..., t] = np.sum(full[..., t: t + k] * w[:, 0, :], axis=-1)
    if bias is not None:
        out += bias[:, None]
    if silu:
        out = out / (1 + np.exp(-out))
    return out, full[..., -(k - 1):] if k > 1 else np.zeros_like(past)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "interp"] + ["interp"])
@pytest.mark.parametrize("silu, with_bias", [(False, False), (True, True)])
def test_causal_conv_with_state_runs_its_function_body(backend, silu, with_bias):
    b, c, length, k = 2, 16, 24, 4
    x = RNG.standard_normal((b, c, length)).astype(np.float32)
    w = RNG.standard_normal((c, 1, k)).astype(np.float32)
    past = RNG.standard_normal((b, c, k - 1)).astype(np.float32)
    bias = RNG.standard_normal(c).astype(np.float32) if with_bias else None
    node = helper.make_node("CausalConvWithState", ["x", "w", "bias" if with_bias else "", "past"], ["y", "state"],
                            activation="silu" if silu else "none")
    inits = [("w", w)] + ([("bias", bias)] if with_bias else [])
    model = make_model([node], [("x", np.float32, x.shape), ("past", np.float32, past.shape)],
                       [("y", np.float32, x.shape), ("state", np.float32, past.shape)], inits, opset=27)
    from tests.util import kiln_run

    got = kiln_run(model, {"x": x, "past": past}, backend)
    want_y, want_state = _causal_conv_reference(x, w, bias, past, silu)
    np.testing.assert_allclose(got["y"], want_y, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got["state"], want_state)


def _without_converter(monkeypatch, hidden: str):
    real = frontend.lookup

    def lookup(op, domain, opset):
        return None if op == hidden else real(op, domain, opset)
    monkeypatch.setattr(frontend, "lookup", lookup)


@pytest.mark.parametrize("op, attrs, opset", [
    ("Celu", {"alpha": 0.7}, 12),              # an attribute reference: the body reads alpha
    ("Celu", {}, 12),                          # the function's default for alpha
    ("ThresholdedRelu", {"alpha": 0.3}, 22),
    ("MeanVarianceNormalization", {"axes": [0, 2]}, 13),
    ("LayerNormalization", {"axis": -1, "epsilon": 1e-3}, 17),  # a context-dependent body
    ("Gelu", {"approximate": "tanh"}, 20),
])
def test_function_ops_expand_when_kiln_has_no_converter(monkeypatch, op, attrs, opset):
    _without_converter(monkeypatch, op)
    shape = (3, 4, 5)
    inputs = [("x", np.float32, shape)]
    inits = []
    names = ["x"]
    if op == "LayerNormalization":
        inits = [("g", RNG.standard_normal(5).astype(np.float32)), ("b", RNG.standard_normal(5).astype(np.float32))]
        names += ["g", "b"]
    model = make_model([helper.make_node(op, names, ["y"], **attrs)], inputs, [("y", np.float32, shape)], inits,
                       opset=opset)
    m = kiln.compile(model, target="host")
    assert op not in {n.op for n in m.graph.nodes}
    feeds = {"x": RNG.standard_normal(shape).astype(np.float32)}
    np.testing.assert_allclose(m.run(feeds)["y"], ort_run(model, feeds)["y"], rtol=1e-4, atol=1e-5)


def test_a_function_body_with_subgraphs_stays_unsupported(monkeypatch):
    """AffineGrid's body branches with If: without Kiln's own converter it is not expanded, and
    listed like any unsupported op."""
    _without_converter(monkeypatch, "AffineGrid")
    model = make_model([helper.make_node("AffineGrid", ["theta", "size"], ["grid"])],
                       [("theta", np.float32, (1, 2, 3))], [("grid", np.float32, (1, 4, 5, 2))],
                       [("size", np.array([1, 1, 4, 5], np.int64))], opset=20)
    with pytest.raises(UnsupportedOperatorError, match="AffineGrid"):
        kiln.compile(model)


def test_a_body_with_an_unconvertible_op_keeps_the_error_on_the_models_op(monkeypatch):
    """LinearAttention's body scans over time (Scan): without Kiln's own converter, the error
    names LinearAttention."""
    _without_converter(monkeypatch, "LinearAttention")
    q = ("q", np.float32, (1, 3, 8))
    node = helper.make_node("LinearAttention", ["q", "k", "v"], ["y", "state"], q_num_heads=2, kv_num_heads=2,
                            update_rule="linear")
    model = make_model([node], [q, ("k", np.float32, (1, 3, 8)), ("v", np.float32, (1, 3, 8))],
                       [("y", np.float32, (1, 3, 8)), ("state", np.float32, (1, 2, 4, 4))], opset=27)
    with pytest.raises(UnsupportedOperatorError, match="LinearAttention") as info:
        kiln.compile(model)
    assert "Scan" not in str(info.value)


def test_an_expansion_that_would_leave_an_unconvertible_op_is_not_made(monkeypatch):
    real = frontend.lookup
    monkeypatch.setattr(frontend, "lookup", lambda op, domain, opset: None if op in ("Celu", "Div")
                        else real(op, domain, opset))  # Celu's body divides x by alpha
    model = make_model([helper.make_node("Celu", ["x"], ["y"], alpha=0.5)], [("x", np.float32, (4,))],
                       [("y", np.float32, (4,))], opset=12)
    with pytest.raises(UnsupportedOperatorError, match="Celu") as info:
        kiln.compile(model)
    assert "Div" not in str(info.value)
