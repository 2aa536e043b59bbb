"""QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger, ConvInteger,
QLinearMatMul and QLinearConv against ONNX Runtime: integer outputs must match exactly."""
from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import UnsupportedOperatorError
from kiln.frontend.onnx import from_onnx
from tests.test_ops_shape import C, X, check, node_model
from tests.util import BACKENDS, assert_close, kiln_run

RNG = np.random.default_rng(13)
backends = pytest.mark.parametrize("backend", BACKENDS)


def q(shape, dtype):
    info = np.iinfo(dtype)
    return RNG.integers(info.min, int(info.max) + 1, shape).astype(dtype)


def halves(shape, scale):
    """Floats whose quotient by ``scale`` often lands exactly on .5 (round half to even)."""
    k = RNG.integers(-300, 300, shape)
    return ((k + RNG.choice([0.0, 0.5, 0.25], shape)) * scale).astype(np.float32)


# -- QuantizeLinear / DequantizeLinear ------------------------------------------------------------------

@backends
@pytest.mark.parametrize("zp_dtype", [np.uint8, np.int8, None])
@pytest.mark.parametrize("opset", [10, 13, 19, 21])
def test_quantize_per_tensor(backend, zp_dtype, opset):
    x = halves((3, 8), 0.5)
    ins = [X("x", x), C("s", np.array(0.5, np.float32))]
    if zp_dtype is not None:
        ins.append(C("z", np.array(3 if zp_dtype == np.uint8 else -2, zp_dtype)))
    check("QuantizeLinear", ins, backend, opset=opset)


@backends
@pytest.mark.parametrize("zp_dtype", [np.uint8, np.int8, np.int16, np.uint16])
def test_quantize_saturates_infinities_and_maps_nan_to_the_lowest_value(backend, zp_dtype):
    """+-inf and out-of-range values saturate; NaN gives the type's lowest value, as ONNX
    Runtime does (a NaN-keeping clamp left it to an undefined float-to-int cast: int8 got 0)."""
    x = np.array([[np.nan, -np.nan, np.inf, -np.inf, 1e30, -1e30, 0.75, -0.75]], np.float32)
    check("QuantizeLinear", [X("x", x), C("s", np.array(0.5, np.float32)), C("z", np.array(3, zp_dtype))],
          backend, opset=21)


@backends
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_quantize_per_axis(backend, axis):
    x = halves((3, 4, 5), 0.25)
    n = x.shape[axis]
    scale = RNG.uniform(0.1, 0.5, n).astype(np.float32)
    ins = [X("x", x), X("s", scale), X("z", q((n,), np.int8))]
    check("QuantizeLinear", ins, backend, {"axis": axis}, opset=13)


@backends
@pytest.mark.parametrize("block", [2, 3])
def test_quantize_blocked(backend, block):
    x = halves((4, 6), 0.25)
    scale = RNG.uniform(0.1, 0.5, (4, -(-6 // block))).astype(np.float32)
    zp = q(scale.shape, np.uint8)
    check("QuantizeLinear", [X("x", x), X("s", scale), X("z", zp)], backend,
          {"axis": 1, "block_size": block}, opset=21)


@backends
def test_quantize_int16_output_dtype(backend):
    from onnx import TensorProto

    x = halves((2, 5), 0.01)
    check("QuantizeLinear", [X("x", x), C("s", np.array(0.01, np.float32))], backend,
          {"output_dtype": TensorProto.INT16}, opset=21)


def test_quantize_to_int32_is_unsupported():
    from onnx import TensorProto

    model, _ = node_model("QuantizeLinear", [X("x", np.zeros((2, 2), np.float32)), C("s", np.array(1.0, np.float32))],
                          {"output_dtype": TensorProto.INT32}, opset=21)
    with pytest.raises(UnsupportedOperatorError):
        from_onnx(model)


@backends
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int32, np.int16])
@pytest.mark.parametrize("per_axis", [False, True])
def test_dequantize(backend, dtype, per_axis):
    x = q((3, 4), dtype) if dtype != np.int32 else RNG.integers(-10**6, 10**6, (3, 4)).astype(np.int32)
    if per_axis:
        ins = [X("x", x), X("s", RNG.uniform(0.01, 1, 4).astype(np.float32)), X("z", q((4,), dtype) // 4)]
    else:
        ins = [X("x", x), C("s", np.array(0.37, np.float32)), C("z", np.array(1, dtype))]
    if dtype == np.int32:
        ins[2] = C("z", np.zeros(ins[2][1].shape, np.int32))  # int32: zero point 0
    check("DequantizeLinear", ins, backend, {"axis": 1} if per_axis else {}, opset=21 if dtype == np.int16 else 13)


@backends
def test_dequantize_blocked(backend):
    x = q((4, 6), np.int8)
    scale = RNG.uniform(0.1, 0.5, (2, 6)).astype(np.float32)
    check("DequantizeLinear", [X("x", x), X("s", scale), X("z", q((2, 6), np.int8))], backend,
          {"axis": 0, "block_size": 2}, opset=21)


@backends
@pytest.mark.parametrize("kind", ["mixed", "positive", "negative", "zeros"])
def test_dynamic_quantize(backend, kind):
    x = {"mixed": RNG.standard_normal((3, 7)), "positive": RNG.uniform(0.5, 4, (3, 7)),
         "negative": -RNG.uniform(0.5, 4, (3, 7)), "zeros": np.zeros((3, 7))}[kind].astype(np.float32)
    check("DynamicQuantizeLinear", [X("x", x)], backend, n_out=3, opset=11)


# -- integer matmul / conv --------------------------------------------------------------------------------

@backends
@pytest.mark.parametrize("a_dtype,b_dtype", [(np.uint8, np.uint8), (np.uint8, np.int8), (np.int8, np.int8)])
@pytest.mark.parametrize("zps", ["none", "scalar"])
def test_matmul_integer(backend, a_dtype, b_dtype, zps):
    a, b = q((4, 9), a_dtype), q((9, 5), b_dtype)
    ins = [X("a", a), X("b", b)]
    if zps == "scalar":
        ins += [X("az", q((), a_dtype)), X("bz", q((), b_dtype))]
    check("MatMulInteger", ins, backend, opset=10)


@backends
def test_matmul_integer_per_row_and_column_zero_points(backend):
    # ONNX Runtime (and the ONNX reference) take only scalar zero points for A: numpy is the oracle
    a, b, az, bz = q((4, 9), np.uint8), q((9, 5), np.int8), q((4,), np.uint8), q((5,), np.int8)
    model, feeds = node_model("MatMulInteger", [X("a", a), X("b", b), X("az", az), X("bz", bz)], opset=10)
    want = (a.astype(np.int32) - az[:, None].astype(np.int32)) @ (b.astype(np.int32) - bz.astype(np.int32))
    assert_close(kiln_run(model, feeds, backend), {"y0": want})


@backends
def test_matmul_integer_batched_b_zero_point_only(backend):
    ins = [X("a", q((2, 4, 6), np.uint8)), X("b", q((6, 8), np.uint8)), None, C("bz", np.array(7, np.uint8))]
    check("MatMulInteger", ins, backend, opset=10)


CONV = [
    {},
    {"pads": [1, 1, 1, 1]},
    {"pads": [1, 0, 2, 1], "strides": [2, 1]},
    {"dilations": [2, 2], "pads": [2, 1, 2, 1]},
    {"auto_pad": "SAME_UPPER"},
]


@backends
@pytest.mark.parametrize("attrs", CONV)
@pytest.mark.parametrize("with_zp", [False, True])
def test_conv_integer(backend, attrs, with_zp):
    x, w = q((1, 3, 6, 7), np.uint8), q((4, 3, 3, 3), np.uint8)
    ins = [X("x", x), X("w", w)]
    if with_zp:
        ins += [X("xz", np.array(128, np.uint8)), X("wz", np.array(3, np.uint8))]
    check("ConvInteger", ins, backend, attrs, opset=10)


def _qparams(dtype, scale):
    zp = np.array(5 if dtype == np.uint8 else -3, dtype)
    return C(f"s{scale}", np.array(scale, np.float32)), C(f"z{scale}", zp)


@backends
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("opset", [10, 21])
@pytest.mark.parametrize("batched", [False, True])
def test_qlinear_matmul(backend, dtype, opset, batched):
    a = q((2, 3, 8) if batched else (3, 8), dtype)
    b = q((8, 4), dtype)
    sa, za = _qparams(dtype, 0.02)
    sb, zb = _qparams(dtype, 0.03)
    sy, zy = _qparams(dtype, 0.25)
    check("QLinearMatMul", [X("a", a), sa, za, X("b", b), sb, zb, sy, zy], backend, opset=opset)


@backends
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("attrs", [{}, {"pads": [1, 1, 1, 1], "strides": [2, 2]}])
def test_qlinear_conv(backend, dtype, per_channel, attrs):
    x = q((1, 3, 7, 6), dtype)
    w = q((4, 3, 3, 3), np.int8)
    w_scale = (RNG.uniform(0.005, 0.02, 4) if per_channel else np.array(0.01)).astype(np.float32)
    w_zp = np.zeros(w_scale.shape, np.int8)
    sx, zx = _qparams(dtype, 0.05)
    sy, zy = _qparams(dtype, 0.2)
    bias = RNG.integers(-500, 500, 4).astype(np.int32)
    ins = [X("x", x), sx, zx, C("w", w), C("ws", w_scale), C("wz", w_zp), sy, zy, C("b", bias)]
    check("QLinearConv", ins, backend, attrs, opset=10)
