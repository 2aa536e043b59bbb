"""Edge-case semantics found by ONNX's node tests, pinned down against numpy and ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import kiln
from kiln.errors import KilnError
from tests import util

@pytest.fixture(params=util.BACKENDS)
def backend(request):
    """The numpy interpreter of the compute definitions and the generated C must agree."""
    return request.param


NAN_X = np.array([np.nan, -1.5, 2.0, np.nan, -0.0, 0.25], np.float32)
NAN_Y = np.array([1.0, np.nan, 1.0, np.nan, 0.0, -3.0], np.float32)


def _unary_model(op, opset=17, **attrs):
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    return util.make_model([node], [("x", np.float32, (6,))], [("y", np.float32, (6,))], opset=opset)


@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("HardSigmoid", {}), ("HardSwish", {}), ("Celu", {}),
                                      ("Sign", {}), ("LeakyRelu", {})])
def test_nan_propagates_through_activations(backend, op, attrs):
    """C's fmax/fmin drop a NaN operand; ONNX (numpy, ONNX Runtime) keeps it."""
    util.check_against_ort(_unary_model(op, **attrs), {"x": NAN_X}, backend)


def test_nan_propagates_through_clip(backend):
    util.check_against_ort(_unary_model("Clip", opset=6, min=-1.0, max=1.0), {"x": NAN_X}, backend)


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_nan_propagates_through_max_and_min(backend, op):
    node = helper.make_node(op, ["x", "z"], ["y"])
    model = util.make_model([node], [("x", np.float32, (6,)), ("z", np.float32, (6,))],
                            [("y", np.float32, (6,))], opset=13)
    util.check_against_ort(model, {"x": NAN_X, "z": NAN_Y}, backend)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_mod_takes_the_divisor_sign(backend, dtype):
    """Mod with fmod=0 on floats is Python's %, including zero and infinite divisors."""
    a = np.array([5.0, -5.0, 5.0, -5.0, 3.0, -3.0, 7.5, np.inf], dtype)
    b = np.array([3.0, 3.0, -3.0, -3.0, 0.0, np.inf, 2.0, 2.0], dtype)
    node = helper.make_node("Mod", ["a", "b"], ["y"], fmod=0)
    model = util.make_model([node], [("a", dtype, (8,)), ("b", dtype, (8,))], [("y", dtype, (8,))], opset=13)
    got = util.kiln_run(model, {"a": a, "b": b}, backend)["y"]
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(got, np.mod(a, b))


def test_float16_ops_round_like_numpy():
    """Each float16 op rounds its result (C computes _Float16 in float otherwise)."""
    rng = np.random.default_rng(0)
    x, z = (rng.random(4096).astype(np.float16) for _ in range(2))
    nodes = [helper.make_node("Mul", ["x", "z"], ["t"]), helper.make_node("Add", ["t", "z"], ["u"]),
             helper.make_node("Mul", ["u", "x"], ["y"])]
    model = util.make_model(nodes, [("x", np.float16, (4096,)), ("z", np.float16, (4096,))],
                            [("y", np.float16, (4096,))], opset=13)
    got = kiln.compile(model).run({"x": x, "z": z})["y"]
    np.testing.assert_array_equal(got, (x * z + z) * x)


def test_float16_kernels_forbid_fused_multiply_adds():
    """On a CPU with native half arithmetic (AVX512-FP16) gcc fused the rounded product and
    the sum into one instruction; a kernel doing float16 ops turns contraction off, a float
    kernel keeps it (its multiply-adds are the GEMM's speed)."""
    def source(dtype):
        nodes = [helper.make_node("Mul", ["x", "z"], ["t"]), helper.make_node("Add", ["t", "z"], ["y"])]
        model = util.make_model(nodes, [("x", dtype, (64,)), ("z", dtype, (64,))], [("y", dtype, (64,))], opset=13)
        return kiln.compile(model).source()

    assert 'optimize("fp-contract=off")' in source(np.float16)
    assert 'fp-contract' not in source(np.float32)


def test_an_output_folded_to_a_constant_keeps_its_name():
    """A graph output computed only from constants (here a Cast of a Constant) is copied out."""
    nodes = [helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0]),
             helper.make_node("Cast", ["c"], ["y"], to=1)]
    model = util.make_model(nodes, [], [("y", np.float32, (2,))], opset=13)
    np.testing.assert_array_equal(kiln.compile(model).run({})["y"], [1.0, 2.0])


def test_function_op_whose_strict_shape_inference_fails_still_compiles(backend):
    """ONNX's strict inference rejects MeanVarianceNormalization's own body at opset 13."""
    x = np.random.default_rng(1).random((3, 3, 3, 1)).astype(np.float32)
    node = helper.make_node("MeanVarianceNormalization", ["x"], ["y"])
    model = util.make_model([node], [("x", np.float32, x.shape)], [("y", np.float32, x.shape)], opset=13)
    util.check_against_ort(model, {"x": x}, backend)


def test_a_converter_crash_is_a_kiln_error(monkeypatch):
    from kiln.frontend import onnx_ops

    def broken(ctx, node):
        return 1 // 0

    monkeypatch.setitem(onnx_ops.CONVERTERS, ("", "Relu"), [(1, broken)])
    with pytest.raises(KilnError, match="internal error.*ZeroDivisionError"):
        kiln.compile(_unary_model("Relu"))


def _aliasing_model(outputs):
    from onnx import TensorProto as T
    from onnx import helper

    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Reshape", ["y", "s"], ["z"]),
             helper.make_node("Add", ["z", "z"], ["w"]), helper.make_node("Identity", ["z"], ["v"])]
    shapes = {"w": [3, 4], "y": [2, 6], "z": [3, 4], "v": [3, 4], "x": [2, 6]}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [2, 6])],
                              [helper.make_tensor_value_info(n, T.FLOAT, shapes[n]) for n in outputs],
                              initializer=[onnx.numpy_helper.from_array(np.array([3, 4], np.int64), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("outputs", [["w", "y", "z"], ["v", "z", "y"], ["z", "v"], ["y", "w", "v", "z"]])
def test_outputs_that_alias_each_other_or_views(outputs):
    """Every output is its own tensor, also when one is a view (Reshape, Identity) of another."""
    import kiln
    from tests.util import ort_run

    model = _aliasing_model(outputs)
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    want, got = ort_run(model, {"x": x}), kiln.compile(model).run({"x": x})
    for k in outputs:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=k)


def test_output_named_like_an_input_is_refused_cleanly():
    import kiln
    from kiln.errors import UnsupportedOperatorError

    with pytest.raises(UnsupportedOperatorError, match="graph output 'x' is the graph input"):
        kiln.compile(_aliasing_model(["w", "x"]))


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("where", ["none", "first", "middle", "last", "all"])
@pytest.mark.parametrize("n", [40, 2048])
def test_nan_propagates_through_max_and_min_reductions(backend, op, where, n):
    """A row with a NaN anywhere reduces to NaN, as numpy's max/min (the host prints the
    reduction as a plain max/min plus a NaN flag: ``CRenderer._extreme_with_nan_flag``);
    rows of 40 so a vectorized loop has full vectors and a tail, rows of 2048 so the host
    keeps partial results in lanes (``LONG_EXTREME``)."""
    x = np.random.default_rng(5).standard_normal((3, n)).astype(np.float32)
    x[1, 7], x[2, 3] = np.inf, -np.inf
    pos = {"none": [], "first": [0], "middle": [n // 2 + 1], "last": [n - 1], "all": list(range(n))}[where]
    x[0, pos] = np.nan
    node = helper.make_node(op, ["x"], ["y"], axes=[1], keepdims=0)
    model = util.make_model([node], [("x", np.float32, (3, n))], [("y", np.float32, (3,))], opset=13)
    if n == 2048 and backend == "host":
        assert "acc0_nan_lanes" in kiln.compile(model).source()
    got = util.kiln_run(model, {"x": x}, backend)["y"]
    want = (np.max if op == "ReduceMax" else np.min)(x, axis=1)
    np.testing.assert_array_equal(got, want)


def test_softmax_of_a_row_with_nan_is_nan(backend):
    x = np.random.default_rng(6).standard_normal((2, 33)).astype(np.float32)
    x[0, 17] = np.nan
    node = helper.make_node("Softmax", ["x"], ["y"], axis=-1)
    model = util.make_model([node], [("x", np.float32, (2, 33))], [("y", np.float32, (2, 33))], opset=13)
    got = util.kiln_run(model, {"x": x}, backend)["y"]
    assert np.isnan(got[0]).all() and not np.isnan(got[1]).any()
    e = np.exp(x[1] - x[1].max())
    np.testing.assert_allclose(got[1], e / e.sum(), rtol=1e-5)
