"""Loop partitioning at the edges of padding (``kiln/passes/partition_loops.py``):
Before/Expected loop nests, where it must not apply, equivalence on random padded copies
and pooling windows (the loop interpreter), and the stem it was written for against ONNX
Runtime."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.ir.dtype import DType
from kiln.ir.expr import Const, Load, Select, Un, Var
from kiln.ir.loop import PARALLEL, VECTORIZED, Buffer, For, Func, If, Store, format_func, seq
from kiln.ir.loop_eval import run_func
from kiln.passes.partition_loops import partition_loops

I64, F32 = DType.int64, DType.float32
h, w, k, c = Var("h"), Var("w"), Var("k"), Var("c")


def _padded_copy(n_out=10, pad=2, n_in=6, kind="serial") -> Func:
    """out[w] = x[w - pad] where 0 <= w - pad < n_in, else -1."""
    inside = w.ge(Const(pad, I64)).land(w.lt(Const(pad + n_in, I64)))
    value = Select(inside, Load("x", (w + (-pad),), F32), Const(-1.0, F32))  # as ops index: v + offset
    return Func("k", (Buffer("x", (n_in,), F32), Buffer("out", (n_out,), F32)),
                For(w, n_out, Store("out", (w,), value), kind))


def test_padded_copy_splits_into_head_middle_and_tail():
    """Before: one loop testing both edges. Expected: the padding written by a head and a tail
    loop, and a middle loop copying without a test."""
    after = partition_loops(_padded_copy())
    wl, wi, wh = Var("w_lo"), Var("w_in"), Var("w_hi")
    expected = seq(
        For(wl, 2, Store("out", (wl,), Const(-1.0, F32))),
        For(wi, 6, Store("out", (wi + 2,), Load("x", (wi,), F32))),
        For(wh, 2, Store("out", (wh + 8,), Const(-1.0, F32))))
    assert format_func(after) == format_func(Func("k", after.params, expected))


def test_loop_kind_is_kept_and_a_short_middle_is_left_alone():
    after = partition_loops(_padded_copy(kind=VECTORIZED))
    assert [s.kind for s in after.body.stmts] == [VECTORIZED] * 3
    short = _padded_copy(n_out=7, pad=2, n_in=3)  # a middle of 3 iterations: not worth it
    assert partition_loops(short) == short


def test_window_tests_hold_for_every_inner_value_in_the_middle():
    """Before: a 3-tap window at stride 2 and padding 1 (a pooling row): the test involves the
    tap. Expected: from w = 1 on every tap is inside, so that loop has no test; w = 0 keeps it."""
    tap = w * 2 - 1 + k
    value = Select(tap.ge(Const(0, I64)), Load("x", (tap,), F32), Const(0.0, F32))
    acc = Load("out", (w,), F32)
    body = For(w, 8, For(k, 3, Store("out", (w,), acc + value)))
    f = Func("k", (Buffer("x", (16,), F32), Buffer("out", (8,), F32)), body)
    after = partition_loops(f)
    head, rest = after.body.stmts
    assert (head.var.name, head.extent, rest.var.name, rest.extent) == ("w_lo", 1, "w_hi", 7)
    assert "select" in format_func(Func("k", (), head)) and "select" not in format_func(Func("k", (), rest))


def test_parallel_loop_is_unswitched_not_split():
    """Before: a parallel row loop whose rows outside the input are padding. Expected: one
    parallel loop whose body tests the row once: the rows inside run a body without it."""
    inside = h.ge(Const(1, I64)).land(h.lt(Const(5, I64)))
    value = Select(inside, Load("x", (h - 1, w), F32), Const(0.0, F32))
    f = Func("k", (Buffer("x", (4, 8), F32), Buffer("out", (6, 8), F32)),
             For(h, 6, For(w, 8, Store("out", (h, w), value), VECTORIZED), PARALLEL))
    after = partition_loops(f)
    assert isinstance(after.body, For) and after.body.kind == PARALLEL
    fast, slow = after.body.body.stmts
    assert isinstance(fast, If) and isinstance(slow, If) and isinstance(slow.cond, Un)
    assert "select" not in format_func(Func("k", (), fast.then))


def test_nothing_to_split_leaves_the_function_unchanged():
    data_test = Select(Load("m", (w,), F32).gt(Const(0.0, F32)), Load("x", (w,), F32), Const(0.0, F32))
    f = Func("k", (Buffer("m", (8,), F32), Buffer("x", (8,), F32), Buffer("out", (8,), F32)),
             For(w, 8, Store("out", (w,), data_test)))
    assert partition_loops(f) == f
    two_vars = Select((w - h).ge(Const(0, I64)), Const(1.0, F32), Const(0.0, F32))  # h is not a loop here
    g = Func("k", (Buffer("out", (8,), F32),), For(w, 8, Store("out", (w,), two_vars)))
    assert partition_loops(g) == g


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 12), pad_t=st.integers(0, 3), pad_b=st.integers(0, 3),
       pad_l=st.integers(0, 3), pad_r=st.integers(0, 3), stride=st.integers(1, 2), taps=st.integers(1, 4),
       parallel=st.booleans())
def test_random_padded_windows_compute_the_same(rows, cols, pad_t, pad_b, pad_l, pad_r, stride, taps, parallel):
    """A strided, padded 2-D window sum over rows (h) and columns (w) with taps (c, k): the
    partitioned and unswitched nest writes exactly what the original does."""
    out_h = (rows + pad_t + pad_b - taps) // stride + 1
    out_w = (cols + pad_l + pad_r - taps) // stride + 1
    if out_h < 1 or out_w < 1:
        return
    ih, iw = h * stride - pad_t + c, w * stride - pad_l + k
    inside = (ih.ge(Const(0, I64)).land(ih.lt(Const(rows, I64)))
              .land(iw.ge(Const(0, I64))).land(iw.lt(Const(cols, I64))))
    value = Select(inside, Load("x", (ih, iw), F32), Const(-100.0, F32))
    acc = Load("out", (h, w), F32)
    nest = For(h, out_h, For(w, out_w, For(c, taps, For(k, taps, Store("out", (h, w), acc + value)))),
               PARALLEL if parallel else "serial")
    f = Func("k", (Buffer("x", (rows, cols), F32), Buffer("out", (out_h, out_w), F32)), nest)
    x = np.random.default_rng(rows * 100 + cols).standard_normal((rows, cols)).astype(np.float32)
    bufs = {"x": x, "out": np.zeros((out_h, out_w), np.float32)}
    want = run_func(f, bufs)["out"]
    np.testing.assert_array_equal(run_func(partition_loops(f), bufs)["out"], want)


def test_quantizing_stem_matches_onnx_runtime():
    """The RGB stem of an int8 CNN: its input quantized while it is padded and interleaved
    (the copy this pass splits), bit-exact against ONNX Runtime."""
    import kiln
    from benchmarks import lowbit_bench as L
    from examples import models as M
    from kiln.bench import ort_session

    model = L.int8_qdq(M.resnet_style(depth=18, image=64), samples=2)
    m = kiln.compile(model, target="host")
    source = m.source()
    assert "_lo" in source and "_hi" in source  # the padded copy was split
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    name = model.graph.input[0].name
    got = next(iter(m.run({name: x}).values()))
    want = ort_session(model, threads=1).run(None, {name: x})[0]
    np.testing.assert_array_equal(got, want)
