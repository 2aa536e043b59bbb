"""Elementwise, activation, comparison and logic ops against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.util import BACKENDS, check_against_ort, kiln_run, make_model

UNARY = ["Neg", "Exp", "Log", "Sqrt", "Abs", "Tanh", "Erf", "Sigmoid", "Floor", "Ceil", "Round",
         "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
         "Sign", "Reciprocal", "Softplus", "Relu", "Softsign", "Mish", "HardSwish"]
POSITIVE = {"Log", "Sqrt", "Acosh"}
UNIT = {"Asin", "Acos", "Atanh"}


def _data(op, shape, rng):
    x = rng.standard_normal(shape).astype(np.float32) * 2
    if op in POSITIVE:
        x = np.abs(x) + 1.1
    if op in UNIT:
        x = np.tanh(x) * 0.9
    if op == "Round":
        x = np.round(x * 2) / 2 + rng.choice([0, 0.1], shape).astype(np.float32)  # exact halves too
    return x


def unary_model(op, shape, **attrs):
    return make_model([helper.make_node(op, ["x"], ["y"], **attrs)], [("x", np.float32, list(shape))],
                      [("y", np.float32, list(shape))], opset=18)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", UNARY)
def test_unary(op, backend):
    rng = np.random.default_rng(0)
    shape = (3, 17)
    check_against_ort(unary_model(op, shape), {"x": _data(op, shape, rng)}, backend)


PARAMETRIC = [
    ("LeakyRelu", {"alpha": 0.2}), ("Elu", {"alpha": 0.7}), ("Selu", {}), ("HardSigmoid", {"alpha": 0.3}),
    ("ThresholdedRelu", {"alpha": 0.5}), ("Celu", {"alpha": 1.5}), ("LeakyRelu", {}),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op,attrs", PARAMETRIC)
def test_parametric_activations(op, attrs, backend):
    x = np.random.default_rng(1).standard_normal((2, 3, 5)).astype(np.float32)
    check_against_ort(unary_model(op, x.shape, **attrs), {"x": x}, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("approx", ["none", "tanh"])
def test_gelu(approx, backend):
    x = np.random.default_rng(2).standard_normal((4, 33)).astype(np.float32)
    model = make_model([helper.make_node("Gelu", ["x"], ["y"], approximate=approx)],
                       [("x", np.float32, [4, 33])], [("y", np.float32, [4, 33])], opset=20)
    check_against_ort(model, {"x": x}, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lo,hi", [(-0.5, 0.5), (0.0, 6.0), (None, 1.0), (-1.0, None)])
def test_clip(lo, hi, backend):
    x = np.random.default_rng(3).standard_normal((3, 8)).astype(np.float32) * 4
    inputs, inits = ["x"], []
    for name, v in (("lo", lo), ("hi", hi)):
        if v is None:
            inputs.append("")
        else:
            inputs.append(name)
            inits.append((name, np.array(v, np.float32)))
    while inputs and inputs[-1] == "":
        inputs.pop()
    model = make_model([helper.make_node("Clip", inputs, ["y"])], [("x", np.float32, [3, 8])],
                       [("y", np.float32, [3, 8])], initializers=inits, opset=13)
    check_against_ort(model, {"x": x}, backend)


BINARY = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"]
SHAPES = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((1,), (5, 2)), ((), (2, 3))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sa,sb", SHAPES)
@pytest.mark.parametrize("op", BINARY)
def test_binary_broadcast(op, sa, sb, backend):
    rng = np.random.default_rng(4)
    a = rng.standard_normal(sa).astype(np.float32)
    b = rng.standard_normal(sb).astype(np.float32)
    if op == "Pow":
        a = np.asarray(np.abs(a) + 0.5, np.float32)
    if op == "Div":
        b = np.asarray(np.where(np.abs(b) < 0.1, 0.5, b), np.float32)
    out = np.broadcast_shapes(sa, sb)
    model = make_model([helper.make_node(op, ["a", "b"], ["y"])],
                       [("a", np.float32, list(sa)), ("b", np.float32, list(sb))],
                       [("y", np.float32, list(out))])
    check_against_ort(model, {"a": a, "b": b}, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min"])
def test_binary_int64(op, backend):
    rng = np.random.default_rng(5)
    a = rng.integers(-20, 20, (3, 4)).astype(np.int64)
    b = rng.integers(1, 7, (4,)).astype(np.int64) * rng.choice([-1, 1], (4,))
    model = make_model([helper.make_node(op, ["a", "b"], ["y"])],
                       [("a", np.int64, [3, 4]), ("b", np.int64, [4])], [("y", np.int64, [3, 4])])
    check_against_ort(model, {"a": a, "b": b}, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmod", [0, 1])
def test_mod(fmod, backend):
    rng = np.random.default_rng(6)
    a = rng.integers(-20, 20, (12,)).astype(np.int32)
    b = rng.integers(1, 6, (12,)).astype(np.int32) * rng.choice([-1, 1], (12,)).astype(np.int32)
    model = make_model([helper.make_node("Mod", ["a", "b"], ["y"], fmod=fmod)],
                       [("a", np.int32, [12]), ("b", np.int32, [12])], [("y", np.int32, [12])])
    check_against_ort(model, {"a": a, "b": b}, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal"])
def test_compare(op, backend):
    rng = np.random.default_rng(7)
    a = rng.integers(-3, 3, (4, 5)).astype(np.float32)
    b = rng.integers(-3, 3, (5,)).astype(np.float32)
    model = make_model([helper.make_node(op, ["a", "b"], ["y"])],
                       [("a", np.float32, [4, 5]), ("b", np.float32, [5])], [("y", np.bool_, [4, 5])])
    check_against_ort(model, {"a": a, "b": b}, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logic_where_isnan_isinf_not(backend):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    x[0, 0], x[1, 1], x[2, 2] = np.nan, np.inf, -np.inf
    nodes = [
        helper.make_node("IsNaN", ["x"], ["n"]),
        helper.make_node("IsInf", ["x"], ["i"]),
        helper.make_node("Or", ["n", "i"], ["bad"]),
        helper.make_node("Not", ["bad"], ["good"]),
        helper.make_node("Greater", ["x", "zero"], ["pos"]),
        helper.make_node("And", ["good", "pos"], ["keep"]),
        helper.make_node("Xor", ["keep", "n"], ["kx"]),
        helper.make_node("Where", ["keep", "x", "zero"], ["y"]),
    ]
    model = make_model(nodes, [("x", np.float32, [3, 6])],
                       [("y", np.float32, [3, 6]), ("kx", np.bool_, [3, 6])],
                       initializers=[("zero", np.array(0, np.float32))])
    check_against_ort(model, {"x": x}, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("src,dst", [(np.float32, np.int64), (np.int64, np.float32), (np.float32, np.bool_),
                                     (np.int32, np.float32), (np.float32, np.float64), (np.bool_, np.float32)])
def test_cast(src, dst, backend):
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((2, 7)) * 5).astype(src)
    model = make_model([helper.make_node("Cast", ["x"], ["y"], to=helper.np_dtype_to_tensor_dtype(np.dtype(dst)))],
                       [("x", src, [2, 7])], [("y", dst, [2, 7])])
    check_against_ort(model, {"x": x}, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["Sum", "Mean", "Max", "Min"])
def test_variadic(op, backend):
    rng = np.random.default_rng(10)
    xs = {"a": rng.standard_normal((2, 3)).astype(np.float32), "b": rng.standard_normal((3,)).astype(np.float32),
          "c": rng.standard_normal((1, 3)).astype(np.float32)}
    model = make_model([helper.make_node(op, list(xs), ["y"])],
                       [(k, np.float32, list(v.shape)) for k, v in xs.items()], [("y", np.float32, [2, 3])])
    check_against_ort(model, xs, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_prelu_and_dropout(backend):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    slope = np.array([0.1, 0.2, 0.3], np.float32).reshape(3, 1, 1)
    nodes = [helper.make_node("PRelu", ["x", "s"], ["p"]), helper.make_node("Dropout", ["p"], ["y"])]
    model = make_model(nodes, [("x", np.float32, [2, 3, 4, 4])], [("y", np.float32, [2, 3, 4, 4])],
                       initializers=[("s", slope)])
    check_against_ort(model, {"x": x}, backend)


# -- BitCast (opset 26): the same bits as another type --------------------------------------------

def _bitcast_model(src, dst, shape=(3, 5)):
    to = helper.np_dtype_to_tensor_dtype(np.dtype(dst))
    return make_model([helper.make_node("BitCast", ["x"], ["y"], to=to)], [("x", src, shape)], [("y", dst, shape)],
                      opset=26)


def _bit_patterns(dtype):
    """Values whose bits matter: signed zeros, infinities, NaN, subnormals, extremes."""
    if np.dtype(dtype).kind == "f":
        info = np.finfo(dtype)
        special = [0.0, -0.0, np.inf, -np.inf, np.nan, info.tiny / 4, -info.tiny, info.max, -1.5, 3.0e-3]
        rest = np.random.default_rng(5).standard_normal(15 - len(special)) * 1e3
        return np.array(special + list(rest), dtype).reshape(3, 5)
    info = np.iinfo(dtype)
    vals = [0, -1 if info.min < 0 else info.max, info.min, info.max, 1, 0x3F800000 % (info.max + 1), 7]
    rest = np.random.default_rng(6).integers(info.min, info.max, 15 - len(vals), dtype=dtype, endpoint=True)
    return np.array(vals + list(rest)).astype(dtype).reshape(3, 5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("src, dst", [(np.float32, np.int32), (np.int32, np.float32), (np.float32, np.uint32),
                                      (np.float64, np.int64), (np.int64, np.float64), (np.uint64, np.float64),
                                      (np.int8, np.uint8), (np.uint16, np.int16), (np.bool_, np.uint8)])
def test_bitcast_keeps_every_bit(backend, src, dst):
    if backend == "webgpu" and (np.dtype(src).itemsize != 4 or np.dtype(dst) == np.uint32):
        pytest.skip("WGSL words reinterpret 32-bit f32/i32 only")
    with np.errstate(invalid="ignore"):  # the patterns include NaN on purpose
        x = _bit_patterns(src) if src is not np.bool_ else (np.arange(15).reshape(3, 5) % 2 == 0)
    got = kiln_run(_bitcast_model(src, dst), {"x": x}, backend)["y"]
    assert got.dtype == np.dtype(dst)
    np.testing.assert_array_equal(got.view(np.uint8), np.ascontiguousarray(x).view(np.uint8))


def test_bitcast_between_widths_or_of_half_floats_is_refused():
    import kiln
    from kiln.errors import KilnError, UnsupportedOperatorError

    with pytest.raises(KilnError, match="same bit-width"):  # ONNX's shape inference says so first
        kiln.compile(_bitcast_model(np.float32, np.int16))
    with pytest.raises(UnsupportedOperatorError, match="float16 to int16 is not supported"):
        kiln.compile(_bitcast_model(np.float16, np.int16))


def test_bitcast_compiles_for_cuda():
    import kiln
    from kiln.targets.cuda import nvcc_build
    from tests.conftest import require_toolchain

    require_toolchain("nvcc")
    for src, dst in [(np.float32, np.int32), (np.int64, np.float64)]:
        m = kiln.compile(_bitcast_model(src, dst), target="cuda")
        assert "__float_as_int(" in m.source() or "__longlong_as_double(" in m.source()
        assert nvcc_build(m.files, kind="object").stat().st_size > 0
