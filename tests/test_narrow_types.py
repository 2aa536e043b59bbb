"""Narrow element types (bfloat16, float8, float4, int4/int2) and uint16/32/64.

The oracle is ONNX's reference evaluator (``onnx.reference``), which casts with ml_dtypes:
ONNX Runtime implements only some of these types. Narrow results must match bit for bit
(stored codes compared as bytes), NaN codes included, since a cast has one right answer.
"""
from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from kiln.codegen import narrow_types
from kiln.ir.dtype import DType
from tests.util import BACKENDS, kiln_run

backends = pytest.mark.parametrize("backend", BACKENDS)

NARROW = {
    TensorProto.BFLOAT16: ml_dtypes.bfloat16, TensorProto.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn,
    TensorProto.FLOAT8E4M3FNUZ: ml_dtypes.float8_e4m3fnuz, TensorProto.FLOAT8E5M2: ml_dtypes.float8_e5m2,
    TensorProto.FLOAT8E5M2FNUZ: ml_dtypes.float8_e5m2fnuz, TensorProto.FLOAT4E2M1: ml_dtypes.float4_e2m1fn,
    TensorProto.INT4: ml_dtypes.int4, TensorProto.UINT4: ml_dtypes.uint4,
    TensorProto.INT2: ml_dtypes.int2, TensorProto.UINT2: ml_dtypes.uint2,
}
NARROW_FLOATS = [t for t, d in NARROW.items() if np.dtype(d).kind == "V" or "float" in np.dtype(d).name]

# Ties, overflow, subnormals, signed zeros and the specials of every format.
SPECIAL = np.array([0.0, -0.0, 0.25, 0.75, 1.5, 2.5, -2.5, 3.5, 5.0, 5.5, 7.0, 100.0, -100.0, 448.0, 464.0,
                    465.0, 480.0, 57344.0, 61440.0, 1e9, -1e9, 1e-3, -1e-3, 1.9e-3, 2e-6, 1e-8,
                    np.inf, -np.inf, np.nan, 0.1, -0.30078125, 1.00390625, 1.01171875], np.float32)


def model_of(nodes, inputs, outputs, opset=23):
    graph = helper.make_graph(nodes, "narrow", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 11
    return model


def reference(model, feeds):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ReferenceEvaluator(model).run(None, feeds)


def assert_same_codes(got, want):
    """Equal dtype and shape, the same stored bytes; NaN may use any of its codes."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    as_float = want.astype(np.float32)
    nan = np.isnan(as_float) if want.dtype.kind not in "iu" else np.zeros(want.shape, bool)
    assert np.array_equal(np.isnan(got.astype(np.float32)) if nan.any() else nan, nan)
    assert np.array_equal(got.view(np.uint8)[~nan.repeat(got.itemsize).reshape(got.view(np.uint8).shape)]
                          if got.itemsize == 1 else got.view(np.uint16)[~nan],
                          want.view(np.uint8)[~nan.repeat(want.itemsize).reshape(want.view(np.uint8).shape)]
                          if want.itemsize == 1 else want.view(np.uint16)[~nan])


@backends
@pytest.mark.parametrize("to", list(NARROW), ids=lambda t: TensorProto.DataType.Name(t))
@pytest.mark.parametrize("saturate", [1, 0])
def test_cast_float_to_narrow_and_back(backend, to, saturate):
    n = len(SPECIAL)
    model = model_of([helper.make_node("Cast", ["x"], ["y"], to=to, saturate=saturate),
                      helper.make_node("Cast", ["y"], ["z"], to=TensorProto.FLOAT)],
                     [("x", TensorProto.FLOAT, [n])], [("y", to, [n]), ("z", TensorProto.FLOAT, [n])])
    want = reference(model, {"x": SPECIAL})
    got = kiln_run(model, {"x": SPECIAL}, backend)
    assert_same_codes(got["y"], want[0])
    np.testing.assert_array_equal(got["z"], want[1])


@backends
@pytest.mark.parametrize("to", list(NARROW), ids=lambda t: TensorProto.DataType.Name(t))
def test_cast_int64_to_narrow_wraps_as_numpy(backend, to):
    x = np.array([-9, -8, -3, -1, 0, 1, 2, 3, 7, 8, 9, 15, 16, 100, 1000, -1000], np.int64)
    model = model_of([helper.make_node("Cast", ["x"], ["y"], to=to)], [("x", TensorProto.INT64, [16])],
                     [("y", to, [16])])
    assert_same_codes(kiln_run(model, {"x": x}, backend)["y"], reference(model, {"x": x})[0])


@pytest.mark.parametrize("to", NARROW_FLOATS, ids=lambda t: TensorProto.DataType.Name(t))
@settings(max_examples=25, deadline=None)
@given(values=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=64))
def test_float_encoding_matches_ml_dtypes(to, values):
    """Random float32 values, encoded by the generated C, against ml_dtypes' own cast."""
    x = np.array(values, np.float32)
    n = len(x)
    model = model_of([helper.make_node("Cast", ["x"], ["y"], to=to, saturate=0)],
                     [("x", TensorProto.FLOAT, [n])], [("y", to, [n])])
    assert_same_codes(kiln_run(model, {"x": x}, "host")["y"], x.astype(NARROW[to]))


@backends
@pytest.mark.parametrize("dtype", [TensorProto.INT4, TensorProto.UINT4, TensorProto.INT2,
                                   TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2, TensorProto.FLOAT4E2M1])
def test_quantize_dequantize_narrow(backend, dtype):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 8)) * 4).astype(np.float32)
    zp = np.zeros((1,), NARROW[dtype]) if dtype not in (TensorProto.UINT4,) else np.full((1,), 7, NARROW[dtype])
    zp_t = onnx.numpy_helper.from_array(zp, "zp")
    model = model_of([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
                      helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])],
                     [("x", TensorProto.FLOAT, [4, 8]), ("s", TensorProto.FLOAT, [])],
                     [("q", dtype, [4, 8]), ("y", TensorProto.FLOAT, [4, 8])], opset=21)
    model.graph.initializer.append(zp_t)
    feeds = {"x": x, "s": np.array(0.75, np.float32)}
    want = reference(model, feeds)
    got = kiln_run(model, feeds, backend)
    assert_same_codes(got["q"], want[0])
    np.testing.assert_array_equal(got["y"], want[1])


@backends
@pytest.mark.parametrize("op", ["Add", "Mul", "Div", "Max", "Less"])
def test_bfloat16_arithmetic_rounds_each_op(backend, op):
    rng = np.random.default_rng(5)
    a = rng.uniform(-4, 4, (3, 5)).astype(ml_dtypes.bfloat16)
    b = rng.uniform(0.5, 4, (3, 5)).astype(ml_dtypes.bfloat16)
    out = TensorProto.BOOL if op == "Less" else TensorProto.BFLOAT16
    model = model_of([helper.make_node(op, ["a", "b"], ["y"])],
                     [("a", TensorProto.BFLOAT16, [3, 5]), ("b", TensorProto.BFLOAT16, [3, 5])], [("y", out, [3, 5])])
    got, want = kiln_run(model, {"a": a, "b": b}, backend)["y"], reference(model, {"a": a, "b": b})[0]
    np.testing.assert_array_equal(np.asarray(got), want)


@backends
@pytest.mark.parametrize("np_dtype,onnx_type", [(np.uint16, TensorProto.UINT16), (np.uint32, TensorProto.UINT32),
                                                (np.uint64, TensorProto.UINT64)])
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Mod"])
def test_unsigned_integers(backend, np_dtype, onnx_type, op):
    rng = np.random.default_rng(7)
    info = np.iinfo(np_dtype)
    a = rng.integers(0, info.max, (4, 6), dtype=np_dtype, endpoint=True)
    b = rng.integers(1, 1000, (4, 6), dtype=np_dtype)
    model = model_of([helper.make_node(op, ["a", "b"], ["y"])],
                     [("a", onnx_type, [4, 6]), ("b", onnx_type, [4, 6])], [("y", onnx_type, [4, 6])], opset=17)
    want = reference(model, {"a": a, "b": b})[0]
    np.testing.assert_array_equal(kiln_run(model, {"a": a, "b": b}, backend)["y"], want)


def test_support_code_only_for_the_types_used():
    assert narrow_types.support_code([DType.float32, DType.int8]) == ""
    code = narrow_types.support_code([DType.float8_e4m3fn])
    assert "kiln_enc_float8_e4m3fn" in code and "bfloat16" not in code
    assert "kiln_lut_float8_e4m3fn[256]" in code


# -- float8e8m0 (opset 24): powers of two, ONNX's own rounding -------------------------------------

@backends
def test_cast_to_e8m0_rounds_up_and_saturates_as_onnx(backend):
    """ONNX's Cast to float8e8m0 (round_mode "up", saturate): the float32 exponent, plus one
    when any mantissa bit is set, never past 2^127; sign ignored, zero -> 2^-127. Not
    ml_dtypes' rounding, so the oracle is onnx.numpy_helper.to_float8e8m0."""
    from onnx.numpy_helper import to_float8e8m0

    x = np.concatenate([SPECIAL, np.array([2.0 ** 127, 1.5 * 2.0 ** 127, 3e38, 1e-45, 2.0 ** -126, -3.0, 8.0,
                                           0.3, 1.0000001], np.float32)])
    model = model_of([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E8M0)],
                     [("x", TensorProto.FLOAT, [x.size])], [("y", TensorProto.FLOAT8E8M0, [x.size])], opset=25)
    got = kiln_run(model, {"x": x}, backend)["y"]
    assert_same_codes(got, to_float8e8m0(x))


@backends
def test_cast_from_e8m0_decodes_every_code(backend):
    codes = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e8m0fnu)
    model = model_of([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
                     [("x", TensorProto.FLOAT8E8M0, [256])], [("y", TensorProto.FLOAT, [256])], opset=25)
    got = kiln_run(model, {"x": codes}, backend)["y"]
    np.testing.assert_array_equal(got, codes.astype(np.float32))  # 2^(e - 127), 0xFF NaN


def test_cast_to_e8m0_with_other_rounding_is_refused():
    import kiln
    from kiln.errors import UnsupportedOperatorError

    model = model_of([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E8M0, round_mode="down")],
                     [("x", TensorProto.FLOAT, [4])], [("y", TensorProto.FLOAT8E8M0, [4])], opset=25)
    with pytest.raises(UnsupportedOperatorError, match="round_mode 'down'"):
        kiln.compile(model, target="host")
