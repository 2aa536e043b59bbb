"""Layout transposes (NCHW <-> NCHWc, Transpose moving the last axis): the default rule
keeps both contiguous axes innermost (kiln/passes/transpose_schedule.py).

Tier 1 checks the schedule's loop structure and runs it in the loop evaluator; tier 2
runs the compiled copies on every backend against numpy and ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from kiln.ir.compute import Tensor
from kiln.ir.dtype import DType
from kiln.ir.loop import PARALLEL, SERIAL, UNROLLED, VECTORIZED, Buffer, For, Func, canonicalize, seq, walk_stmts
from kiln.ir.loop_eval import run_func
from kiln.ir.lower import lower_stage
from kiln.ir.ops import get, transpose_hint
from kiln.ir.schedule import Schedule
from kiln.passes.capabilities import Capabilities
from kiln.passes.default_schedule import schedule_kernel
from tests.util import BACKENDS, check_against_ort, make_model

F32 = DType.float32
AVX512 = Capabilities(64, 32, 2)


def scheduled(op: str, shape, attrs, dtype=F32, caps=AVX512):
    """The op's kernel on one input of ``shape`` under the default rules, and its stages."""
    from kiln.ir.graph import TensorType

    x = Tensor("x", tuple(shape), dtype)
    (out_type,) = get(op).infer([TensorType(tuple(shape), dtype)], attrs)
    y = Tensor("y", tuple(out_type.shape), dtype)
    stages = get(op).compute([x], [y], attrs)
    params = (Buffer("x", x.shape, dtype), Buffer("y", y.shape, dtype))
    func = canonicalize(Func("k", params, seq(*(lower_stage(s) for s in stages))))
    return schedule_kernel(Schedule(func), stages, caps).func, stages, y.shape


def loops(func) -> list[tuple[int, str]]:
    """(extent, kind) of every loop, outermost first (a transpose's nest is one chain)."""
    return [(s.extent, s.kind) for s in walk_stmts(func.body) if isinstance(s, For)]


def run(func, x, out_shape):
    return run_func(func, {"x": x, "y": np.zeros(out_shape, x.dtype)})["y"]


def from_blocked(x):
    n, cb, h, w, b = x.shape
    return x.transpose(0, 1, 4, 2, 3).reshape(n, cb * b, h, w)


def to_blocked(x, b):
    n, c, h, w = x.shape
    return x.reshape(n, c // b, b, h, w).transpose(0, 1, 3, 4, 2)


# -- tier 1: the rule's loops -----------------------------------------------------------------

def test_from_nchwc_runs_the_block_unrolled_inside_the_columns():
    """[1, 2, 5, 7, 16] -> [1, 32, 5, 7]: (n, channel block, row) fused and parallel, the
    7 columns serial, the 16 channels of a block unrolled: each input line read once."""
    func, stages, shape = scheduled("from_nchwc", (1, 2, 5, 7, 16), {"block": 16}, caps=AVX512)
    assert stages[-1].hints == {"transpose": (1, 16)}
    assert loops(func) == [(10, SERIAL), (7, SERIAL), (16, UNROLLED)]  # 560 copies: no threads
    x = np.arange(1 * 2 * 5 * 7 * 16, dtype=np.float32).reshape(1, 2, 5, 7, 16)
    np.testing.assert_array_equal(run(func, x, shape), from_blocked(x))


def test_to_nchwc_unrolls_the_block_inside_the_columns():
    func, stages, shape = scheduled("to_nchwc", (2, 32, 24, 40), {"block": 8})
    assert stages[-1].hints == {"transpose": (3, 40)}
    assert loops(func) == [(192, PARALLEL), (40, SERIAL), (8, UNROLLED)]
    x = np.random.default_rng(0).normal(size=(2, 32, 24, 40)).astype(np.float32)
    np.testing.assert_array_equal(run(func, x, shape), to_blocked(x, 8))


@pytest.mark.parametrize("shape, perm, expected", [
    # the input's rows (96) are output axis 1: blocks of 16 of them unrolled, the output's
    # rows (40) serial, (batch, block) fused and parallel; the 40 x 16 input values of a
    # tile first copied into a local tile (the three loops after the parallel one)
    ((64, 40, 96), (0, 2, 1), [(384, PARALLEL), (1, SERIAL), (40, SERIAL), (16, SERIAL),
                               (40, SERIAL), (16, UNROLLED)]),
    # output rows 4 KiB apart share an L1 set: blocks of 8, not 16 (a 32 KiB tile: not staged)
    ((1024, 64), (1, 0), [(8, PARALLEL), (1024, SERIAL), (8, UNROLLED)]),
    # short input rows (3) are unrolled whole (small: no threads; whole rows: not staged)
    ((6, 40, 3), (0, 2, 1), [(6, SERIAL), (40, SERIAL), (3, UNROLLED)]),
    # a short output row (3) is unrolled whole, the input's rows serial outside it
    ((3, 20, 24), (1, 2, 0), [(20, SERIAL), (24, SERIAL), (3, UNROLLED)]),
])
def test_transpose_moving_the_last_axis_tiles_both_contiguous_axes(shape, perm, expected):
    func, _, out_shape = scheduled("transpose", shape, {"perm": perm})
    assert loops(func) == expected
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(run(func, x, out_shape), x.transpose(perm))


def test_a_tile_cut_from_longer_input_rows_is_staged_in_a_local_buffer():
    """NHWC -> NCHW with 64 channels: a tile takes 16 of them from each of 28 columns (runs
    256 bytes apart); ``cache_read`` copies them back to back into a local [1, 1, 28, 16]
    tile first, and the transpose reads the tile."""
    from kiln.ir.loop import Alloc

    func, _, out_shape = scheduled("transpose", (2, 5, 28, 64), {"perm": (0, 3, 1, 2)})
    tiles = [s.buffer for s in walk_stmts(func.body) if isinstance(s, Alloc)]
    assert [(b.name, b.shape, b.scope) for b in tiles] == [("x_tile", (1, 1, 28, 16), "local")]
    x = np.random.default_rng(4).normal(size=(2, 5, 28, 64)).astype(np.float32)
    np.testing.assert_array_equal(run(func, x, out_shape), x.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("shape, perm", [
    ((4, 8, 16), (1, 0, 2)),   # the last axis stays last: a copy of rows, vectorized
    ((17, 19), (1, 0)),        # prime extents: no block of two or more
])
def test_other_transposes_keep_the_injective_rule(shape, perm):
    func, _, out_shape = scheduled("transpose", shape, {"perm": perm})
    assert loops(func)[-1][1] == VECTORIZED and UNROLLED not in [k for _, k in loops(func)]
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(run(func, x, out_shape), x.transpose(perm))


def test_no_tile_without_a_vector_unit():
    """A Cortex-M4 (4-byte SIMD) keeps the plain rule: the tile's unrolled copies would only
    cost flash there."""
    func, _, _ = scheduled("transpose", (64, 40, 96), {"perm": (0, 2, 1)}, caps=Capabilities(4, 8, 1))
    assert UNROLLED not in [k for _, k in loops(func)]


def test_hint_is_empty_for_a_copy_or_a_symbolic_run():
    assert transpose_hint(2, 16, 3) == {}
    assert transpose_hint(0, "n", 3) == {}
    assert transpose_hint(1, 16, 4) == {"transpose": (1, 16)}


# -- tier 2: compiled, on every backend -------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape, perm, dtype", [
    ((1, 24, 9, 13), (0, 2, 3, 1), np.float32),    # NCHW -> NHWC
    ((1, 9, 13, 24), (0, 3, 1, 2), np.float32),    # NHWC -> NCHW
    ((64, 96), (1, 0), np.float32),
    ((2, 32, 48), (2, 0, 1), np.int8),
    ((5, 48, 40), (0, 2, 1), np.float16),
])
def test_transposes_match_onnx_runtime(backend, shape, perm, dtype):
    out = tuple(shape[p] for p in perm)
    model = make_model([helper.make_node("Transpose", ["x"], ["y"], perm=list(perm))],
                       [("x", dtype, shape)], [("y", dtype, out)])
    x = (np.random.default_rng(3).normal(size=shape) * 40).astype(dtype)
    check_against_ort(model, {"x": x}, backend, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels, hw", [(32, 14), (24, 7), (144, 9)])
def test_depthwise_conv_between_nchw_tensors_matches_onnx_runtime(backend, channels, hw):
    """A depthwise conv with NCHW input and output: converted into NCHWc and back on the
    host (blocks of 16 or 8 channels), so both conversions run through the tile."""
    rng = np.random.default_rng(channels)
    w = rng.normal(size=(channels, 1, 3, 3)).astype(np.float32)
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], group=channels, pads=[1, 1, 1, 1])],
                       [("x", np.float32, (2, channels, hw, hw))], [("y", np.float32, (2, channels, hw, hw))],
                       [("w", w)])
    check_against_ort(model, {"x": rng.normal(size=(2, channels, hw, hw)).astype(np.float32)}, backend)


def test_a_tile_index_relative_to_its_start_simplifies():
    """(y + z) - y == z and y - y == 0 for integers (a ``cache_read`` tile's index); floats
    keep the subtraction (inf - inf is NaN)."""
    from kiln.ir.expr import Const, Var, simplify

    y, z = Var("y", DType.int64), Var("z", DType.int64)
    assert simplify((y // 4 * 16 + z) - y // 4 * 16) == z
    assert simplify((z + y) - y) == z and simplify(y - y) == Const(0, DType.int64)
    f = Var("f", F32)
    assert simplify(f - f) != Const(0.0, F32)
