"""Integer average pooling and softmax (kiln/ir/ops/qpool.py, qsoftmax.py):

- the quantize pass turns DQ -> AveragePool / GlobalAveragePool / Softmax -> Q into
  ``qavg_pool`` / ``qglobal_avg_pool`` / ``qsoftmax`` (Before/Expected), and leaves
  per-axis or non-constant parameters alone;
- compiled on the host (C) they stay within one quantization step of ONNX Runtime, and
  agree exactly with the numpy interpreter of the same integer compute definitions;
- kiln.quantize now quantizes these ops, so a quantized model has no float op left.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto as TP, helper, numpy_helper as nh

import kiln
from kiln.errors import ShapeError
from kiln.frontend.onnx import from_onnx
from kiln.ir.interp import run_graph
from kiln.passes.quantize import quantize_integer_ops
from tests.util import ort_run

RNG = np.random.default_rng(7)


def qdq_unary(op: str, shape, act=np.uint8, sx=0.05, zx=None, sy=None, zy=None, **attrs):
    """x -> Q -> DQ -> op -> Q -> DQ -> y, per-tensor parameters."""
    zx = (120 if act == np.uint8 else -3) if zx is None else zx
    if op == "Softmax":   # what ONNX Runtime's quantizer gives a softmax output
        sy = 1 / 256 if sy is None else sy
        zy = (0 if act == np.uint8 else -128) if zy is None else zy
    sy = 0.03 if sy is None else sy
    zy = (110 if act == np.uint8 else 4) if zy is None else zy
    inits = [nh.from_array(np.array(sx, np.float32), "sx"), nh.from_array(np.array(zx, act), "zx"),
             nh.from_array(np.array(sy, np.float32), "sy"), nh.from_array(np.array(zy, act), "zy")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node(op, ["xd"], ["o"], **attrs),
             helper.make_node("QuantizeLinear", ["o", "sy", "zy"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["y"])]
    g = helper.make_graph(nodes, f"qdq_{op.lower()}", [helper.make_tensor_value_info("x", TP.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TP.FLOAT, None)], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return onnx.shape_inference.infer_shapes(m), float(sy)


def _ops(graph) -> Counter:
    return Counter(n.op for n in graph.nodes)


def _steps(got, want, scale) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))) / scale) - 1e-3


def _input(model, spread=3.0):
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    return (RNG.standard_normal(shape) * spread).astype(np.float32)


# -- the pass: Before / Expected ---------------------------------------------------------------------

@pytest.mark.parametrize("op, attrs, want", [
    ("GlobalAveragePool", {}, "qglobal_avg_pool"),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2]), "qavg_pool"),
    ("Softmax", dict(axis=-1), "qsoftmax"),
])
def test_pass_rewrites_the_float_op_into_one_integer_op(op, attrs, want):
    model, _ = qdq_unary(op, (1, 4, 7, 7), **attrs)
    before = from_onnx(model)
    assert _ops(before)[want] == 0 and _ops(before)["dequantize_linear"] == 2
    after = quantize_integer_ops(before)
    ops = _ops(after)
    assert ops[want] == 1
    # Expected: Q(x) -> integer op -> DQ(y); nothing float in between
    assert [n.op for n in after.nodes] == ["quantize_linear", want, "dequantize_linear"]


def test_avg_pool_gets_a_count_table_only_when_counts_differ():
    same, _ = qdq_unary("AveragePool", (1, 2, 8, 8), kernel_shape=[2, 2], strides=[2, 2])
    ragged, _ = qdq_unary("AveragePool", (1, 2, 8, 8), kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    for model, entries in ((same, 1), (ragged, 10)):
        g = quantize_integer_ops(from_onnx(model))
        node = next(n for n in g.nodes if n.op == "qavg_pool")
        assert g.constants[node.inputs[1]].shape == (entries,)


def test_pool_epilogues_take_the_high_word_form_of_the_convolutions():
    """``min_shift`` on the integer pools (as on qconv): their rescale is a product's high
    word and int32 steps (``qlinear.requant_high_word``), not an int64 shift and clamp. The
    entries of a count table for counts that no window has (here all but 4, 6 and 9 of 0-9)
    get multiplier 0 and a shift that does not lower ``min_shift``."""
    glob, _ = qdq_unary("GlobalAveragePool", (1, 8, 3, 3))
    ragged, _ = qdq_unary("AveragePool", (1, 2, 8, 8), sx=0.02, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    for model, op in ((glob, "qglobal_avg_pool"), (ragged, "qavg_pool")):
        g = quantize_integer_ops(from_onnx(model))
        node = next(n for n in g.nodes if n.op == op)
        mult, shift = g.constants[node.inputs[1]], g.constants[node.inputs[2]]
        assert node.attrs["min_shift"] == shift.min() >= 33
        source = kiln.compile(model, target="cortex-m4").files["model.c"]
        epilogue = [line for line in source.splitlines() if "out0[" in line and "acc0" in line]
        # the product's high word cast to int32, then a saturating narrow (uint8 activations)
        assert epilogue and all(">> INT64_C(32)))) >>" in e and "kiln_usat8(" in e for e in epilogue)
    assert np.flatnonzero(mult).tolist() == [4, 6, 9]   # corner, edge and inner windows
    assert set(shift[mult == 0].tolist()) == {shift[mult != 0].min()}


def test_softmax_table_is_exp_of_the_input_scale():
    model, _ = qdq_unary("Softmax", (1, 10), sx=0.1)
    g = quantize_integer_ops(from_onnx(model))
    node = next(n for n in g.nodes if n.op == "qsoftmax")
    table = g.constants[node.inputs[1]]
    q = node.attrs["table_bits"]
    assert table.shape == (256,) and table[0] == 2 ** q
    np.testing.assert_allclose(table / 2.0 ** q, np.exp(-0.1 * np.arange(256)), atol=2.0 ** -q)


def test_per_axis_input_scale_stays_float():
    """A per-channel activation scale has no single exp table or multiplier: left as is."""
    model, _ = qdq_unary("GlobalAveragePool", (1, 3, 4, 4))
    model.graph.initializer[0].CopyFrom(nh.from_array(np.array([0.1, 0.2, 0.3], np.float32), "sx"))
    model.graph.initializer[1].CopyFrom(nh.from_array(np.array([1, 2, 3], np.uint8), "zx"))
    for n in model.graph.node[:2]:
        n.attribute.append(helper.make_attribute("axis", 1))
    g = quantize_integer_ops(from_onnx(model))
    assert _ops(g)["global_avg_pool"] == 1 and _ops(g)["qglobal_avg_pool"] == 0
    x = _input(model)
    assert _steps(run_graph(g, {"x": x})["y"], ort_run(model, {"x": x})["y"], 0.03) <= 1


# -- compiled on the host against ONNX Runtime ---------------------------------------------------------

POOLS = [
    ("GlobalAveragePool", (1, 8, 5, 5), {}),
    ("GlobalAveragePool", (2, 3, 25, 5), {}),
    ("AveragePool", (1, 4, 9, 9), dict(kernel_shape=[3, 3], strides=[2, 2])),
    ("AveragePool", (1, 4, 8, 8), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    ("AveragePool", (1, 4, 8, 8), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)),
    ("AveragePool", (1, 2, 9, 9), dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    ("AveragePool", (1, 2, 16), dict(kernel_shape=[4], strides=[3], pads=[2, 1])),
]


@pytest.mark.parametrize("act", [np.uint8, np.int8], ids=["u8", "s8"])
@pytest.mark.parametrize("op, shape, attrs", POOLS, ids=[f"{p[0]}{i}" for i, p in enumerate(POOLS)])
def test_integer_average_pool_matches_ort(op, shape, attrs, act):
    model, sy = qdq_unary(op, shape, act=act, **attrs)
    cm = kiln.compile(model)
    assert _ops(cm.graph)["q" + ("global_avg_pool" if op.startswith("Global") else "avg_pool")] == 1
    assert not any(n.op in ("avg_pool", "global_avg_pool") for n in cm.graph.nodes)
    for _ in range(3):
        x = _input(model)
        got, want = cm.run({"x": x})["y"], ort_run(model, {"x": x})["y"]
        assert _steps(got, want, sy) <= 1
        # small windows give many exact ties (sum * 5/12 = k + 1/2), which ORT's float32
        # rounding breaks either way and the fixed-point epilogue rounds up
        assert np.mean(got == want) > 0.8
        np.testing.assert_array_equal(got, run_graph(quantize_integer_ops(from_onnx(model)), {"x": x})["y"])


SOFTMAXES = [
    ((1, 12), dict(axis=-1), {}),
    ((2, 3, 10), dict(axis=1), {}),
    ((4, 1000), dict(axis=-1), {}),
    ((1, 2), dict(axis=-1), dict(sx=0.2)),
    ((3, 7), dict(axis=-1), dict(sy=0.004, zy=3)),   # a calibrated output scale, not 1/256
]


@pytest.mark.parametrize("act", [np.uint8, np.int8], ids=["u8", "s8"])
@pytest.mark.parametrize("shape, attrs, params", SOFTMAXES, ids=[str(s[0]) for s in SOFTMAXES])
def test_integer_softmax_matches_ort(shape, attrs, params, act):
    model, sy = qdq_unary("Softmax", shape, act=act, **params, **attrs)
    cm = kiln.compile(model)
    assert _ops(cm.graph)["qsoftmax"] == 1 and _ops(cm.graph)["softmax"] == 0
    mcu = kiln.compile(model, target="cortex-m4").files["model.c"]   # integer I/O: no Q/DQ left either
    assert "float" not in mcu and "exp" not in mcu
    for spread in (0.5, 3.0, 20.0):
        x = _input(model, spread)
        got, want = cm.run({"x": x})["y"], ort_run(model, {"x": x})["y"]
        assert _steps(got, want, sy) <= 1
        assert np.mean(got == want) > 0.9
        np.testing.assert_array_equal(got, run_graph(quantize_integer_ops(from_onnx(model)), {"x": x})["y"])


@settings(max_examples=40, deadline=None)
@given(st.floats(0.002, 0.5), st.integers(2, 300), st.sampled_from([1 / 256, 1 / 255, 0.01]))
def test_integer_softmax_is_within_one_step_of_the_real_softmax(sx, n, sy):
    """Against float64 softmax of the dequantized input, rounded: any input scale, any length."""
    from kiln.ir.ops.qsoftmax import exp_table, reciprocal_numerator

    rng = np.random.default_rng(n)
    xq = rng.integers(0, 256, (2, n)).astype(np.uint8)
    table, q = exp_table(sx, n)
    numer, k = reciprocal_numerator(sy, q)
    m = xq.max(axis=1, keepdims=True).astype(np.int64)
    t = table[m - xq].astype(np.int64)
    r = (numer + t.sum(axis=1, keepdims=True) // 2) // t.sum(axis=1, keepdims=True)
    got = np.clip((t * r + (1 << (k - 1))) >> k, 0, 255)
    e = np.exp(sx * (xq.astype(np.float64) - m))
    want = np.clip(np.round(e / e.sum(axis=1, keepdims=True) / sy), 0, 255)
    assert np.max(np.abs(got - want)) <= 1


def test_bad_integer_op_parameters_are_refused():
    from kiln.ir.dtype import DType
    from kiln.ir.graph import TensorType
    from kiln.ir.ops import infer_types

    x = TensorType((1, 4, 8, 8), DType.uint8)
    table = TensorType((1,), DType.int32)
    attrs = dict(x_zp=0, y_zp=0, lo=0, hi=255, dtype="uint8", kernel_shape=(3, 3), pads=(1, 1, 1, 1))
    with pytest.raises(ShapeError, match="different tap counts"):
        infer_types("qavg_pool", [x, table, table], attrs)
    with pytest.raises(ShapeError, match="int32 vectors"):
        infer_types("qglobal_avg_pool", [x, TensorType((1,), DType.int64), table], attrs)
    with pytest.raises(ShapeError, match="exp table of 256"):
        infer_types("qsoftmax", [x, table], dict(attrs, axis=1, numer=1 << 40, frac_bits=40, table_bits=20))
    with pytest.raises(ShapeError, match="int8/uint8 input"):
        infer_types("qsoftmax", [TensorType((1, 4), DType.float32), TensorType((256,), DType.int32)],
                    dict(attrs, axis=1, numer=1 << 40, frac_bits=40, table_bits=20))


def test_kiln_quantize_leaves_no_float_op_in_ds_cnn():
    """kiln.quantize now quantizes GlobalAveragePool, AveragePool and Softmax, so the DS-CNN's
    pooled features stay int8 from the first conv to the classifier."""
    from examples.mcu_models import ds_cnn

    rng = np.random.default_rng(1)
    q = kiln.quantize(ds_cnn(), {"input": rng.standard_normal((16, 1, 49, 10)).astype(np.float32)})
    g = quantize_integer_ops(from_onnx(q))
    float_ops = [n.op for n in g.nodes if n.op not in ("quantize_linear", "dequantize_linear")
                 and any(o.type.dtype.is_float for o in n.outputs)]
    assert float_ops == [] and _ops(g)["qglobal_avg_pool"] == 1
    x = rng.standard_normal((1, 1, 49, 10)).astype(np.float32)
    sy = float(nh.to_array(next(i for i in q.graph.initializer if i.name == "logits_scale")))
    assert _steps(kiln.compile(q).run({"input": x})["logits"], ort_run(q, {"input": x})["logits"], sy) <= 1
