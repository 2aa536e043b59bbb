"""Shrink, Swish, SwiGLU, BitShift, TopK, Hardmax, Einsum, Det and the data-dependent ops
(Compress, NonZero, Unique, NonMaxSuppression) against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import UnsupportedOperatorError
from kiln.frontend.onnx import from_onnx
from tests.test_ops_shape import C, X, check, node_model
from tests.util import BACKENDS, assert_close, check_against_ort, kiln_run

RNG = np.random.default_rng(7)
backends = pytest.mark.parametrize("backend", BACKENDS)


def randn(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


# -- elementwise -------------------------------------------------------------------------------

@backends
@pytest.mark.parametrize("attrs", [{}, {"lambd": 1.0, "bias": 0.5}, {"lambd": 0.3}])
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_shrink(backend, attrs, dtype):
    x = RNG.uniform(-3, 3, (3, 5)).astype(dtype) if dtype == np.float32 else RNG.integers(-4, 5, (3, 5)).astype(dtype)
    check("Shrink", [X("x", x)], backend, attrs, opset=9)


@backends
@pytest.mark.parametrize("alpha", [None, 0.5])
def test_swish(backend, alpha):
    check("Swish", [X("x", randn(2, 7))], backend, {} if alpha is None else {"alpha": alpha}, opset=24)


@backends
def test_swiglu(backend):
    # ONNX Runtime has no SwiGLU (opset 28) yet: the reference is the formula
    a, b = randn(3, 8), randn(3, 8)
    model, feeds = node_model("SwiGLU", [X("a", a), X("b", b)], {"alpha": 1.5}, opset=28)
    want = a * (1 / (1 + np.exp(-1.5 * a))) * b
    assert_close(kiln_run(model, feeds, backend), {"y0": want.astype(np.float32)}, 1e-5, 1e-6)


@backends
@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_bit_shift(backend, direction):
    x = np.array([[16, 4, 1, 255], [3, 128, 7, 0]], np.uint8)
    y = np.array([1, 2, 3, 7], np.uint8)  # broadcast over rows
    check("BitShift", [X("x", x), X("y", y)], backend, {"direction": direction}, opset=11)


@backends
@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_bit_shift_signed_out_of_range(backend, direction):
    # opset 28 semantics (signed types; shifts < 0 or >= width give 0, or -1 right of a negative)
    x = np.array([16, -4, 1, -128, 64, -1], np.int8)
    y = np.array([1, 2, 9, -1, 7, 3], np.int8)
    model, feeds = node_model("BitShift", [X("x", x), X("y", y)], {"direction": direction}, opset=28)
    from onnx.reference import ReferenceEvaluator

    want = ReferenceEvaluator(model).run(None, feeds)[0]
    assert_close(kiln_run(model, feeds, backend), {"y0": want})


# -- TopK / Hardmax ------------------------------------------------------------------------------

@backends
@pytest.mark.parametrize("axis,k", [(-1, 3), (0, 2), (1, 1), (1, 4)])
@pytest.mark.parametrize("largest", [1, 0])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_topk(backend, axis, k, largest, dtype):
    # small integers: many ties, which ONNX breaks by the lower index
    x = RNG.integers(-3, 4, (3, 4, 5)).astype(dtype)
    check("TopK", [X("x", x), C("k", np.array([k], np.int64))], backend,
          {"axis": axis, "largest": largest}, n_out=2, opset=11)


@backends
def test_topk_opset1_attribute(backend):
    check("TopK", [X("x", randn(4, 6))], backend, {"k": 2}, n_out=2, opset=1)


def test_topk_runtime_k_is_unsupported():
    model, _ = node_model("TopK", [X("x", randn(3, 4)), X("k", np.array([2], np.int64))], n_out=2, opset=11)
    with pytest.raises(UnsupportedOperatorError, match="K"):
        from_onnx(model)


@backends
@pytest.mark.parametrize("axis,opset", [(-1, 13), (0, 13), (1, 13), (1, 11), (0, 11)])
def test_hardmax(backend, axis, opset):
    x = RNG.integers(0, 3, (3, 4, 2)).astype(np.float32)  # ties: the first maximum wins
    check("Hardmax", [X("x", x)], backend, {"axis": axis}, opset=opset)


# -- Einsum / Det -----------------------------------------------------------------------------------

EINSUM = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("ij->ji", [(3, 4)]),
    ("ii->i", [(4, 4)]),
    ("ii", [(4, 4)]),
    ("i,i", [(5,), (5,)]),
    ("ij->", [(3, 4)]),
    ("...ii->...i", [(2, 3, 3)]),
    ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)]),
    ("...j,jk", [(2, 3, 4), (4, 2)]),
    ("i,j->ij", [(3,), (4,)]),
    ("ab...,b->a...", [(2, 3, 4), (3,)]),
    ("iij,kj->ik", [(3, 3, 2), (4, 2)]),
]


@backends
@pytest.mark.parametrize("equation,shapes", EINSUM)
def test_einsum(backend, equation, shapes):
    ins = [X(f"x{k}", randn(*s)) for k, s in enumerate(shapes)]
    check("Einsum", ins, backend, {"equation": equation}, opset=12)


@backends
def test_einsum_int(backend):
    ins = [X("a", RNG.integers(-5, 5, (3, 4)).astype(np.int64)), X("b", RNG.integers(-5, 5, (4, 2)).astype(np.int64))]
    check("Einsum", ins, backend, {"equation": "ij,jk->ik"}, opset=12)


@backends
@pytest.mark.parametrize("shape", [(2, 2), (3, 3), (2, 4, 4), (1, 1)])
def test_det(backend, shape):
    check("Det", [X("x", randn(*shape))], backend, opset=11)


def test_det_large_is_unsupported():
    model, _ = node_model("Det", [X("x", randn(5, 5))], opset=11)
    with pytest.raises(UnsupportedOperatorError, match="n <= 4"):
        from_onnx(model)


# -- data-dependent output shapes ----------------------------------------------------------------------

@backends
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_compress_constant_condition(backend, axis):
    x = randn(3, 4)
    n = 12 if axis is None else x.shape[axis]
    cond = RNG.integers(0, 2, n - 1).astype(bool)  # shorter than the axis: the rest is dropped
    cond[0] = True
    check("Compress", [X("x", x), C("c", cond)], backend, {} if axis is None else {"axis": axis}, opset=11)


def test_compress_runtime_condition_is_unsupported():
    model, _ = node_model("Compress", [X("x", randn(3, 4)), X("c", np.array([1, 0, 1], bool))],
                          {"axis": 0}, opset=11)
    with pytest.raises(UnsupportedOperatorError, match="condition"):
        from_onnx(model)


@backends
def test_nonzero_constant_folds(backend):
    check("NonZero", [C("x", np.array([[1, 0, 2], [0, 3, 0]], np.float32))], backend, opset=13)


@backends
def test_unique_constant_folds(backend):
    x = np.array([2.0, 1.0, 1.0, 3.0, 4.0, 3.0], np.float32)
    check("Unique", [C("x", x)], backend, {"sorted": 1}, n_out=4, opset=11)


@pytest.mark.parametrize("op,inputs", [
    ("NonZero", [X("x", np.array([1, 0, 2], np.float32))]),
    ("Unique", [X("x", np.array([1, 0, 1], np.float32))]),
    ("NonMaxSuppression", [X("b", np.zeros((1, 2, 4), np.float32)), X("s", np.zeros((1, 1, 2), np.float32))]),
])
def test_data_dependent_shapes_are_unsupported(op, inputs):
    model, _ = node_model(op, inputs, opset=13)
    with pytest.raises(UnsupportedOperatorError, match="depends on the input data"):
        from_onnx(model)


@backends
def test_topk_feeds_a_kernel(backend):
    """TopK values used by a following op (the fusion of a two-output op with a consumer)."""
    from onnx import helper

    model, feeds = node_model("TopK", [X("x", randn(4, 6)), C("k", np.array([3], np.int64))], n_out=2, opset=11)
    model.graph.node.append(helper.make_node("Relu", ["y0"], ["r"]))
    model.graph.output[0].name = "r"
    check_against_ort(model, feeds, backend)
