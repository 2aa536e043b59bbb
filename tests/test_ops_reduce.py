"""Reductions (Reduce*, ArgMax, ArgMin) against ONNX Runtime, across the opsets that moved
``axes`` from an attribute to an input, with keepdims and noop_with_empty_axes variants."""
from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import KilnError
from tests.test_ops_shape import C, X, check, node_model
from tests.util import BACKENDS

RNG = np.random.default_rng(1)
SHAPE = (2, 3, 4)
backends = pytest.mark.parametrize("backend", BACKENDS)

# ONNX op -> first opset with axes as an input
AXES_INPUT_SINCE = {
    "ReduceSum": 13, "ReduceMean": 18, "ReduceMax": 18, "ReduceMin": 18, "ReduceProd": 18,
    "ReduceL1": 18, "ReduceL2": 18, "ReduceSumSquare": 18, "ReduceLogSum": 18, "ReduceLogSumExp": 18,
}


def data(op: str, dtype, shape=SHAPE) -> np.ndarray:
    """Inputs in each op's comfortable range (positive for logs, near 1 for products)."""
    if np.dtype(dtype).kind == "i":
        lo = 1 if op in ("ReduceLogSum", "ReduceProd") else -3
        return RNG.integers(lo, 4, shape).astype(dtype)
    if op == "ReduceLogSum":
        return RNG.uniform(0.5, 2.0, shape).astype(dtype)
    if op == "ReduceProd":
        return RNG.uniform(0.5, 1.5, shape).astype(dtype) * RNG.choice([-1, 1], shape).astype(dtype)
    return RNG.standard_normal(shape).astype(dtype)


def reduce_inputs(op, x, axes, opset):
    """(inputs, attrs) for ``op`` with ``axes`` (None: absent) as the opset wants them."""
    if opset >= AXES_INPUT_SINCE[op]:
        return [X("x", x)] + ([C("axes", np.array(axes, np.int64))] if axes is not None else []), {}
    return [X("x", x)], ({"axes": axes} if axes is not None else {})


# -- reductions ------------------------------------------------------------------------------------

# opset 11: axes attribute; 13: ReduceSum takes axes as an input; 18: all of them do.
# ONNX Runtime's integer ReduceLogSumExp truncates its intermediate exps, unlike the ONNX
# reference (exact math, truncated once); kiln follows the reference, so no int64 there.
CASES = [(op, opset, dtype) for op in AXES_INPUT_SINCE for opset in (11, 13, 18)
         for dtype in (np.float32, np.int64)
         if (opset != 13 or op == "ReduceSum") and not (op == "ReduceLogSumExp" and dtype == np.int64)]


@backends
@pytest.mark.parametrize("op,opset,dtype", CASES)
@pytest.mark.parametrize("axes", [None, [1], [0, 2], [-1], [2, 0]])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce(backend, op, opset, dtype, axes, keepdims):
    inputs, attrs = reduce_inputs(op, data(op, dtype), axes, opset)
    check(op, inputs, backend, {**attrs, "keepdims": keepdims}, opset=opset)


@backends
@pytest.mark.parametrize("op", list(AXES_INPUT_SINCE))
@pytest.mark.parametrize("noop", [0, 1])
@pytest.mark.parametrize("axes", [None, []])
def test_reduce_empty_axes(backend, op, noop, axes):
    """Empty or absent axes: reduce everything, or (noop) only apply the per-element part."""
    inputs, _ = reduce_inputs(op, data(op, np.float32), axes, 18)
    check(op, inputs, backend, {"keepdims": 1, "noop_with_empty_axes": noop}, opset=18)


@backends
@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceLogSumExp"])
@pytest.mark.parametrize("shape,axes", [((5,), [0]), ((1, 3, 1), [0, 2]), ((3, 1), [1])])
def test_reduce_odd_shapes(backend, op, shape, axes):
    inputs, attrs = reduce_inputs(op, data(op, np.float32, shape), axes, 18)
    check(op, inputs, backend, {**attrs, "keepdims": 1}, opset=18)


def test_reduce_log_sum_exp_is_stable():
    """Large inputs: exp would overflow without subtracting the max first."""
    from tests.util import check_against_ort

    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1002.0, -1001.0]], np.float32)
    model, feeds = node_model("ReduceLogSumExp", [X("x", x), C("axes", np.array([1], np.int64))],
                              {"keepdims": 0}, opset=18)
    got = check_against_ort(model, feeds, "interp")
    assert np.isfinite(got["y0"]).all()


# -- argmax / argmin ----------------------------------------------------------------------------------

@backends
@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("last", [0, 1])
def test_arg_reduce(backend, op, dtype, axis, keepdims, last):
    # integers in a small range have ties, where select_last_index matters
    x = RNG.integers(0, 3, SHAPE).astype(dtype) if dtype == np.int64 else data(op, dtype)
    check(op, [X("x", x)], backend, {"axis": axis, "keepdims": keepdims, "select_last_index": last},
          opset=13)


@backends
@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
def test_arg_reduce_opset11_defaults(backend, op):
    check(op, [X("x", data(op, np.float32))], backend, opset=11)


@backends
def test_arg_reduce_to_scalar(backend):
    check("ArgMax", [X("x", np.array([1.0, 3.0, 3.0, 2.0], np.float32))], backend, {"keepdims": 0}, opset=13)


def test_arg_reduce_stages():
    """Two stages: the extreme value (not inlined), then the first index holding it."""
    from kiln.ir import ops
    from kiln.ir.compute import Tensor
    from kiln.ir.dtype import DType

    x, o = Tensor("x", (2, 5)), Tensor("o", (2,), DType.int64)
    stages = ops.get("argmax").compute([x], [o], {"axis": 1, "keepdims": False})
    assert [s.name for s in stages] == ["o__max", "o"]
    assert not stages[0].inline and stages[1].dtype is DType.int64
    assert all(s.tag == "reduce" for s in stages)


# -- bad inputs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("op,attrs,match", [
    ("reduce_sum", {"axes": (3,), "keepdims": True}, r"axes \(3,\).*\(2, 3, 4\)"),
    ("reduce_max", {"axes": (1, 1), "keepdims": True}, "distinct"),
    ("argmax", {"axis": 5, "keepdims": True}, r"axis 5.*\(2, 3, 4\)"),
])
def test_reduce_shape_rules_reject_bad_axes(op, attrs, match):
    from kiln.ir import ops
    from kiln.ir.dtype import DType
    from kiln.ir.graph import TensorType

    with pytest.raises(KilnError, match=match):
        ops.infer_types(op, [TensorType(SHAPE, DType.float32)], attrs)


def test_reduce_needs_constant_axes():
    from onnx import helper

    from kiln.frontend.onnx import from_onnx
    from tests.util import make_model

    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)
    model = make_model([node], [("x", np.float32, SHAPE), ("axes", np.int64, [1])],
                       [("y", np.float32, [2, 1, 4])], opset=13)
    with pytest.raises(KilnError, match="axes.*constant"):
        from_onnx(model)


@backends
@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceSumSquare"])
@pytest.mark.parametrize("shape,axes", [((2, 16, 96), [1]), ((3, 5, 6, 7), [1]), ((2, 4, 3, 2), [0, 2]),
                                        ((4, 9, 3), [1])])
def test_reductions_over_columns(backend, op, shape, axes):
    """Reductions over an axis that is not the innermost: the default rule accumulates a
    tile of output columns side by side (``reduce_columns``)."""
    inputs, attrs = reduce_inputs(op, data(op, np.float32, shape), axes, 18)
    check(op, inputs, backend, {**attrs, "keepdims": 0}, opset=18)


def test_column_reduction_schedule():
    """Mean pooling over tokens: the token loop outside a vectorized tile of 64 columns with
    their own accumulators; a reduction along the innermost axis keeps its scalar form."""
    import kiln

    def source(axes):
        inputs, attrs = reduce_inputs("ReduceMean", data("ReduceMean", np.float32, (2, 16, 128)), axes, 18)
        model, _ = node_model("ReduceMean", inputs, {**attrs, "keepdims": 0}, opset=18)
        return kiln.compile(model, target="host").source()

    columns = source([1])
    assert "float acc0[64]" in columns and "#pragma omp simd\n" in columns
    inner = source([2])  # a scalar sum: 16 partial sums added in a tree (CRenderer._float_sum_in_lanes)
    assert "float acc0[" not in inner and "acc0_lanes[16]" in inner


@backends
@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceL2"])
@pytest.mark.parametrize("shape,axes", [((2, 3, 7, 9), [2, 3]), ((2, 5, 4, 3), [1, 2, 3]), ((3, 4, 5, 6), [1, 3])])
def test_reductions_over_trailing_axes(backend, op, shape, axes):
    """Reductions over the last two axes read one contiguous run per output: the default
    rule sums it in one loop (``fuse_contiguous_reduction``); over (1, 3) it cannot."""
    inputs, attrs = reduce_inputs(op, data(op, np.float32, shape), axes, 18)
    check(op, inputs, backend, {**attrs, "keepdims": 1}, opset=18)


def test_trailing_reduction_loops_are_fused():
    """A global average pool over 7 x 9: one vectorized loop of 63 values per (n, c), not 7
    loops of 9; over axes (1, 3) the loops are not adjacent in memory and stay apart."""
    import kiln
    from onnx import helper

    from tests.util import make_model

    pool = make_model([helper.make_node("GlobalAveragePool", ["x"], ["y"])],
                      [("x", np.float32, (2, 3, 7, 9))], [("y", np.float32, (2, 3, 1, 1))])
    src = kiln.compile(pool, target="host").source()
    assert "_f < 63; ++" in src and "< 9; ++" not in src
    inputs, attrs = reduce_inputs("ReduceMean", data("ReduceMean", np.float32, (3, 4, 5, 6)), [1, 3], 18)
    model, _ = node_model("ReduceMean", inputs, {**attrs, "keepdims": 1}, opset=18)
    apart = kiln.compile(model, target="host").source()
    assert "< 4; ++" in apart and "< 6; ++" in apart
