"""The loop rewrite that stores a value two sibling loops compute (softmax's exponentials) once
(``kiln/passes/reuse_values.py``): Before/Expected loop nests, where it must not apply, the C
it prints, and softmax results against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import kiln
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Const, Load, Un, Var, walk
from kiln.ir.loop import VECTORIZED, Alloc, Buffer, For, Func, Store, seq, walk_stmts
from kiln.passes.reuse_values import reuse_through_destination
from tests.util import assert_close, make_model, ort_run

F32, F16 = DType.float32, DType.float16
r, k1, k2 = Var("r"), Var("k1"), Var("k2")


def _x(k):
    return Load("x", (r, k), F32)


def _exp(k):
    return Un("exp", Bin("sub", _x(k), Load("m", (r, Const(0, DType.int64)), F32), F32), F32)


def _softmax_rows(out_dtype=F32, between=None, second_extent=8) -> Func:
    """for r: acc = 0; for k1: acc += exp(x - m); s[r] = acc; [between]; for k2: y = exp(x - m) / s"""
    zero = Const(0, DType.int64)
    acc = Buffer("acc", (), F32, "local")
    value = Bin("div", _exp(k2), Load("s", (r, zero), F32), F32)
    if out_dtype is not F32:
        from kiln.ir.expr import Cast
        value = Cast(value, out_dtype)
    row = seq(
        Alloc(acc, seq(Store("acc", (), Const(0.0, F32)),
                       For(k1, 8, Store("acc", (), Bin("add", Load("acc", (), F32), _exp(k1), F32)), VECTORIZED),
                       Store("s", (r, zero), Load("acc", (), F32)))),
        *([between] if between is not None else []),
        For(k2, second_extent, Store("y", (r, k2), value), VECTORIZED))
    params = (Buffer("x", (4, 8), F32), Buffer("m", (4, 1), F32), Buffer("s", (4, 1), F32),
              Buffer("y", (4, 8), out_dtype))
    return Func("k", params, For(r, 4, row))


def _exps(f: Func) -> int:
    return sum(1 for s in walk_stmts(f.body) if isinstance(s, Store)
               for e in walk(s.value) if isinstance(e, Un) and e.op == "exp")


def test_softmax_rows_compute_each_exponential_once():
    before = _softmax_rows()
    after = reuse_through_destination(before)
    zero = Const(0, DType.int64)
    expected = _softmax_rows()
    acc = Buffer("acc", (), F32, "local")
    kept = Store("y", (r, k1), _exp(k1))
    expected_row = seq(
        Alloc(acc, seq(Store("acc", (), Const(0.0, F32)),
                       For(k1, 8, seq(kept, Store("acc", (), Bin("add", Load("acc", (), F32), Load("y", (r, k1), F32),
                                                                 F32))), VECTORIZED),
                       Store("s", (r, zero), Load("acc", (), F32)))),
        For(k2, 8, Store("y", (r, k2), Bin("div", Load("y", (r, k2), F32), Load("s", (r, zero), F32), F32)),
            VECTORIZED))
    assert after == expected.with_body(For(r, 4, expected_row))
    assert _exps(before) == 2 and _exps(after) == 1


def test_a_neighbour_row_written_between_does_not_block_the_rewrite():
    # rows run side by side (Schedule.interleave_statements): the loop in between writes
    # row r + 1 of y, never an element of row r, so row r still stores its exponentials in y
    k3 = Var("k3")
    neighbour = For(k3, 8, Store("y", (Bin("add", r, Const(1, DType.int64), DType.int64), k3), Const(0.0, F32)))
    after = reuse_through_destination(_softmax_rows(between=neighbour))
    assert _exps(after) == 1


@pytest.mark.parametrize("case", ["narrower output", "written between", "destination read between", "other extent",
                                  "same row written between"])
def test_the_rewrite_does_not_apply(case):
    zero = Const(0, DType.int64)
    if case == "narrower output":  # storing the f32 exponential into float16 would round it
        f = _softmax_rows(out_dtype=F16)
    elif case == "written between":  # m changes between the loops: the second exp is another value
        f = _softmax_rows(between=Store("m", (r, zero), Const(1.0, F32)))
    elif case == "destination read between":  # it would see the early values
        f = _softmax_rows(between=Store("s", (r, zero), Load("y", (r, zero), F32)))
    elif case == "same row written between":  # k3 = k1 somewhere: the early value would be overwritten
        k3 = Var("k3")
        f = _softmax_rows(between=For(k3, 8, Store("y", (r, k3), Const(0.0, F32))))
    else:
        f = _softmax_rows(second_extent=4)
    assert reuse_through_destination(f) == f


def test_the_c_loop_keeps_its_reduction_clause():
    model = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], [("x", np.float32, [12, 128])],
                       [("y", np.float32, [12, 128])])
    src = kiln.compile(model, target="host").source()
    # the host runs 4 rows side by side (Capabilities.interleave_rows): one exponential per
    # row copy, each in a vectorized sum (in lanes: CRenderer._float_sum_in_lanes)
    assert src.count("kiln_expf_nonpos(") - src.count("static inline float kiln_expf_nonpos(") == 4
    assert all(f"acc1_r{k}_lanes[16]" in src for k in range(4))


def test_a_symbolic_row_count_runs_one_row_at_a_time():
    # rows side by side need a row count they divide; a dynamic batch keeps one row per step
    x = helper.make_tensor_value_info("x", 1, ["batch", 128])
    y = helper.make_tensor_value_info("y", 1, ["batch", 128])
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m = kiln.compile(model, target="host", dim_bounds={"batch": (1, 64)})
    src = m.source()
    assert "acc0_r1" not in src
    assert src.count("kiln_expf_nonpos(") - src.count("static inline float kiln_expf_nonpos(") == 1
    a = np.random.default_rng(0).standard_normal((7, 128)).astype(np.float32)
    e = np.exp(a - a.max(1, keepdims=True))
    np.testing.assert_allclose(m.run({"x": a})["y"], e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape,axis", [((12, 128), -1), ((2, 5, 33), 1), ((3, 7), 0), ((4, 1000), -1)])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_matches_ort(shape, axis, op):
    model = make_model([helper.make_node(op, ["x"], ["y"], axis=axis)], [("x", np.float32, list(shape))],
                       [("y", np.float32, list(shape))])
    x = (np.random.default_rng(len(shape)).standard_normal(shape) * 4).astype(np.float32)
    assert_close(kiln.compile(model, target="host").run({"x": x}), ort_run(model, {"x": x}), rtol=1e-5, atol=1e-6)
