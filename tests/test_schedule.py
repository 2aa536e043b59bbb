"""Schedule primitives keep semantics: random loop nests, random primitive sequences.

Tier 1 (no compiler): kernels run in the loop-IR interpreter before and after.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.errors import ScheduleError
from kiln.ir.compute import Tensor, compute, rsum
from kiln.ir.dtype import DType
from kiln.ir.loop import Alloc, Buffer, For, Func, Seq, Store, canonicalize, seq, walk_stmts
from kiln.ir.loop_eval import run_func
from kiln.ir.lower import lower_stage
from kiln.ir.schedule import Schedule


def _leaves(stmt):
    """The statements of a block in order, seen through sequences and allocations."""
    if isinstance(stmt, Seq):
        return [x for c in stmt.stmts for x in _leaves(c)]
    return _leaves(stmt.body) if isinstance(stmt, Alloc) else [stmt]

F32 = DType.float32


def matmul_func(m, n, k, bias=True):
    A, B, bb = Tensor("A", (m, k)), Tensor("B", (k, n)), Tensor("bias", (n,))
    C = compute("C", (m, n), lambda i, j: rsum(lambda r: A[i, r] * B[r, j], k) + (bb[j] if bias else 0.0))
    params = (Buffer("A", (m, k), F32), Buffer("B", (k, n), F32), Buffer("bias", (n,), F32), Buffer("C", (m, n), F32))
    return canonicalize(Func("mm", params, lower_stage(C)))


def elementwise_func(shape):
    X = Tensor("X", shape)
    P = compute("P", shape, lambda *i: X[i] * 2.0)
    Y = compute("Y", shape, lambda *i: P[i] + 1.0)
    params = (Buffer("X", shape, F32), Buffer("P", shape, F32), Buffer("Y", shape, F32))
    return canonicalize(Func("ew", params, seq(lower_stage(P), lower_stage(Y))))


def inputs_for(func, seed=0):
    rng = np.random.default_rng(seed)
    return {b.name: rng.standard_normal(b.shape).astype(np.float32) for b in func.params}


def assert_same(f1, f2, outputs, seed=0):
    ins = inputs_for(f1, seed)
    r1, r2 = run_func(f1, ins), run_func(f2, ins)
    for o in outputs:
        np.testing.assert_allclose(r2[o], r1[o], rtol=1e-5, atol=1e-5)


def test_split_reorder_decompose_matches_and_replays():
    f = matmul_func(6, 8, 5)
    s = Schedule(f)
    io, ii = s.split("i0", 3)
    jo, ji = s.split("i1", 4)
    s.reorder(io, jo, ii, ji)
    s.decompose_reduction(ii)
    s.vectorize(ji)
    s.parallel(io)
    assert_same(f, s.func, ["C"])
    replayed = Schedule.replay(f, json.dumps(s.trace))
    assert replayed.func == s.func


def test_split_with_tail_is_guarded():
    f = matmul_func(7, 5, 3)
    s = Schedule(f)
    s.split("i0", 4)
    s.split("i1", 2)
    assert_same(f, s.func, ["C"])


def test_split_with_a_clamped_tail_repeats_the_last_row_and_replays():
    """Before: for i0 < 7. Expected: for i0_o < 2: for i0_i < 4: row min(4 i0_o + i0_i, 6),
    no test in the body; the register tile's repeated rows store row 6 again."""
    from kiln.ir.expr import Bin
    from kiln.ir.loop import If, walk_stmts
    f = matmul_func(7, 4, 3)
    s = Schedule(f)
    io, ii = s.split("i0", 4, tail="clamp")
    jo, ji = s.split("i1", 2)
    s.reorder(io, jo, ii, ji)
    s.decompose_reduction(ii)
    assert s.trace[0] == {"prim": "split", "args": {"loop": "i0", "factor": 4, "tail": "clamp"}}
    assert s.trace[1] == {"prim": "split", "args": {"loop": "i1", "factor": 2}}
    assert not any(isinstance(x, If) for x in walk_stmts(s.func.body))
    assert any(isinstance(e, Bin) and e.op == "min" for e in _all_exprs(s.func))
    assert_same(f, s.func, ["C"])
    assert Schedule.replay(f, json.dumps(s.trace)).func == s.func
    guarded = Schedule(f)
    guarded.split("i0", 4)
    assert any(isinstance(x, If) for x in walk_stmts(guarded.func.body))


def _all_exprs(func):
    from kiln.ir.expr import walk
    from kiln.ir.loop import stmt_exprs, walk_stmts
    return [e for st in walk_stmts(func.body) for x in stmt_exprs(st) for e in walk(x)]


def test_a_dividing_clamped_split_is_a_plain_split():
    f = matmul_func(8, 5, 3)
    a, b = Schedule(f), Schedule(f)
    a.split("i0", 4, tail="clamp")
    b.split("i0", 4)
    assert a.func == b.func


def test_clamping_refuses_a_body_that_reads_what_it_writes():
    """``C[i] += A[i] * 2`` run twice for the last row would add twice."""
    from kiln.ir.expr import Const, Load, Var
    from kiln.ir.loop import Store
    i = Var("i0")
    body = Store("C", (i,), Load("C", (i,), F32) + Load("A", (i,), F32) * Const(2.0, F32))
    f = Func("acc", (Buffer("A", (7,), F32), Buffer("C", (7,), F32)), For(i, 7, body))
    s = Schedule(f)
    assert not s.clamp_safe("i0")
    with pytest.raises(ScheduleError, match="reads C, which it also writes"):
        s.split("i0", 4, tail="clamp")
    with pytest.raises(ScheduleError, match="tail must be"):
        s.split("i0", 4, tail="wrap")
    assert Schedule(f).clamp_safe("i0") is False and Schedule(matmul_func(7, 5, 3)).clamp_safe("i0")


def test_fuse_then_split():
    f = elementwise_func((3, 5))
    s = Schedule(f)
    fused = s.fuse("i0", "i1")
    s.split(fused, 4)
    assert_same(f, s.func, ["Y"])


def test_compute_inline_removes_producer():
    f = elementwise_func((4, 3))
    s = Schedule(f)
    s.compute_inline("P")
    assert not any(isinstance(x, For) and x.var.name == "i0" for x in [s.func.body])
    assert "P" not in repr(s.func.body)
    assert_same(f, s.func, ["Y"])


def test_compute_at_computes_region_inside_loop():
    f = elementwise_func((4, 6))
    s = Schedule(f)
    s.compute_at("P", "i2")  # Y's outer loop (canonical names: P uses i0, i1; Y uses i2, i3)
    out = s.func.body
    assert isinstance(out, For) and out.var.name == "i2"
    assert_same(f, s.func, ["Y"])


def test_cache_write_tile():
    f = matmul_func(4, 8, 3, bias=False)
    s = Schedule(f)
    jo, ji = s.split("i1", 4)
    s.cache_write("C", jo)
    assert "C_local" in repr(s.func.body)
    assert_same(f, s.func, ["C"])


def test_cache_read_tile_copies_the_region_read_and_replays():
    """B's [k, 4] column block read inside a column-block loop: copied into a local tile
    there, the product reading the tile; the trace replays to the same function."""
    from kiln.ir.loop import Alloc, walk_stmts

    f = matmul_func(4, 8, 3, bias=False)
    s = Schedule(f)
    jo, ji = s.split("i1", 4)
    tile = s.cache_read("B", jo)
    allocs = [x.buffer for x in walk_stmts(s.func.body) if isinstance(x, Alloc) and x.buffer.name == tile]
    assert [(b.shape, b.scope) for b in allocs] == [((3, 4), "local")]
    assert_same(f, s.func, ["C"])
    assert Schedule.replay(f, json.dumps(s.trace)).func == s.func
    with pytest.raises(ScheduleError, match="not read inside"):
        s.cache_read("C", jo)


def test_interleave_statements_runs_iterations_side_by_side_and_replays():
    """Before: for i0 < 6: row i0. Expected: for i0_o < 3: row 2 i0_o; row 2 i0_o + 1 -- each
    copy with its own loops and accumulator (renamed ``_r0``, ``_r1``)."""
    f = matmul_func(6, 8, 5)
    s = Schedule(f)
    _, inner = s.split("i0", 2)
    s.interleave_statements(inner)
    assert_same(f, s.func, ["C"])
    assert s.loops() == ["i0_o", "i1_r0", "i2_r0", "i1_r1", "i2_r1"]
    allocs = [x.buffer.name for x in walk_stmts(s.func.body) if isinstance(x, Alloc)]
    assert allocs == ["acc0_r0", "acc0_r1"]
    assert Schedule.replay(f, json.dumps(s.trace)).func == s.func


def test_interleave_statements_spreads_each_statement_of_a_row_before_the_next():
    """Two statements per row (a sum into T, then a scaled copy into C): both rows' sums come
    before both rows' copies."""
    X = Tensor("X", (4, 3))
    T = compute("T", (4,), lambda i: rsum(lambda k: X[i, k], 3))
    C = compute("C", (4, 3), lambda i, j: X[i, j] * T[i])
    params = (Buffer("X", (4, 3), F32), Buffer("T", (4,), F32), Buffer("C", (4, 3), F32))
    f = canonicalize(Func("rows", params, seq(lower_stage(T), lower_stage(C))))
    s = Schedule(f)
    s.compute_at("T", "i2")  # each row's sum inside the row loop of C
    _, inner = s.split("i2", 2)
    s.interleave_statements(inner)
    assert_same(f, s.func, ["C", "T"])
    outer = s._loop(s.loops()[0]).body
    writes = [next(x.buffer for x in walk_stmts(st) if isinstance(x, Store) and x.buffer in ("T", "C"))
              for st in _leaves(outer) if any(isinstance(x, Store) and x.buffer in ("T", "C") for x in walk_stmts(st))]
    assert writes == ["T", "T", "C", "C"]


def test_bad_primitive_arguments_raise():
    s = Schedule(matmul_func(4, 4, 4))
    with pytest.raises(ScheduleError, match="no loop named"):
        s.split("nope", 2)
    with pytest.raises(ScheduleError, match="fuse needs"):
        s.fuse("i1", "i0")
    with pytest.raises(ScheduleError, match="interleave_statements: loop 'i0' has extent 70"):
        Schedule(matmul_func(70, 2, 2)).interleave_statements("i0")
    with pytest.raises(ScheduleError, match="unknown schedule primitive"):
        Schedule.replay(matmul_func(4, 4, 4), [{"prim": "explode", "args": {}}])


# -- property test: random primitive sequences on random nests ---------------------------

@st.composite
def schedules(draw):
    m, n, k = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    steps = draw(st.lists(st.tuples(st.sampled_from(["split", "fuse", "reorder", "kind", "decompose"]),
                                    st.integers(0, 10), st.integers(1, 5)), max_size=6))
    return (m, n, k), steps


def _apply_random(s: Schedule, steps):
    for prim, a, b in steps:
        loops = s.loops()
        try:
            if prim == "split":
                s.split(loops[a % len(loops)], b)
            elif prim == "fuse":
                name = loops[a % len(loops)]
                body = s._loop(name).body
                if isinstance(body, For):
                    s.fuse(name, body.var.name)
            elif prim == "reorder":
                name = loops[a % len(loops)]
                body = s._loop(name).body
                if isinstance(body, For):
                    s.reorder(body.var.name, name)
            elif prim == "kind":
                getattr(s, ["parallel", "vectorize", "unroll"][b % 3])(loops[a % len(loops)])
            elif prim == "decompose":
                s.decompose_reduction(loops[a % len(loops)])
        except ScheduleError:
            pass  # a primitive that does not apply must refuse, never corrupt the kernel


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules())
def test_random_schedules_preserve_semantics(case):
    (m, n, k), steps = case
    f = matmul_func(m, n, k)
    s = Schedule(f)
    _apply_random(s, steps)
    assert_same(f, s.func, ["C"])
    assert Schedule.replay(f, s.trace).func == s.func
