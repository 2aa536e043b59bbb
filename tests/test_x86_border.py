"""A VNNI register tile's rows that read only a zero border, segment by segment of its
reduction (``kiln/codegen/x86_border.py``): the segments for the shapes of ResNet's 3x3
convolutions, where nothing is skipped, and a compiled int8 ResNet whose tiles leave those
rows out and still give the integers of tiles that read the zeros."""
from __future__ import annotations

import numpy as np

import kiln
from kiln.codegen.x86_border import Segment, tile_segments
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Const, Load, Var
from tests.test_integer_layout import _residual_model
from tests.test_padded_storage import _resnet_int8
from tests.test_vnni import _host_caps, _inputs

I64, BOOL = DType.int64, DType.bool
i0, i1, i2_o, r, k = Var("i0"), Var("i1"), Var("i2_o"), Var("r"), Var("k")
C = 64  # channels: a window column's bytes


def _i(v):
    return Const(v, I64)


def _x(tile_rows, stride=1, channels=C):
    """A 3x3 convolution's activation load over padded NHWC storage, as the schedule leaves
    it: pixel (i2_o * rows + r) of row i1 reads columns stride * pixel + k // C."""
    pixel = Bin("add", Bin("mul", i2_o, _i(tile_rows), I64), r, I64)
    flat = Bin("add", Bin("mul", Bin("mul", pixel, _i(stride), I64), _i(channels), I64), k, I64)
    return Load("x", (i0, i1, Bin("floordiv", flat, _i(channels), I64), Bin("mod", flat, _i(channels), I64)), DType.uint8)


def _box(width):
    return (None, (1, 1 + width), (1, 1 + width), None)


def test_one_tile_per_image_row_skips_its_first_and_last_pixel():
    # 7 pixels wide (ResNet-18's last stage): column 0 and 8 are border
    segments = tile_segments(_x(7), r, 7, k, 3 * C, _box(7), {"i0": 1, "i1": 7, "i2_o": 1})
    assert segments == [Segment(0, C, frozenset({0})), Segment(C, 2 * C), Segment(2 * C, 3 * C, frozenset({6}))]


def test_two_tiles_per_row_skip_under_a_condition():
    # 14 pixels in two tiles: the first tile's first pixel, the second tile's last
    segments = tile_segments(_x(7), r, 7, k, 3 * C, _box(14), {"i0": 1, "i1": 14, "i2_o": 2})
    first = Bin("lt", Bin("mul", i2_o, _i(7), I64), _i(1), BOOL)
    last = Bin("ge", Bin("add", Bin("mul", i2_o, _i(7), I64), _i(8), I64), _i(15), BOOL)
    assert [(g.lo, g.hi, g.skip) for g in segments] == [(0, C, frozenset()), (C, 2 * C, frozenset()),
                                                         (2 * C, 3 * C, frozenset())]
    assert [len(g.maybe) for g in segments] == [1, 0, 1]
    (row0, cond0), = segments[0].maybe
    (row6, cond6), = segments[2].maybe
    assert (row0, row6) == (0, 6)
    # the conditions hold exactly on the tile at the image's edge
    from kiln.ir.loop_eval import evaluate
    assert [bool(evaluate(cond0, {"i2_o": t})) for t in (0, 1)] == [True, False]
    assert [bool(evaluate(cond6, {"i2_o": t})) for t in (0, 1)] == [False, True]
    assert str(cond0) == str(first) and str(cond6) == str(last)


def test_stride_two_reads_only_the_left_border():
    # a 3x3 stride-2 convolution from 14 to 7 pixels: storage 1 + 14 columns, border on the left only
    box = (None, (1, 15), (1, 15), None)
    segments = tile_segments(_x(7, stride=2), r, 7, k, 3 * C, box, {"i0": 1, "i1": 7, "i2_o": 1})
    assert segments == [Segment(0, C, frozenset({0})), Segment(C, 3 * C)]


def test_nothing_to_skip():
    ranges = {"i0": 1, "i1": 7, "i2_o": 1}
    whole = [Segment(0, 3 * C)]
    assert tile_segments(_x(7), r, 7, k, 3 * C, None, ranges) == whole                 # no zero border
    assert tile_segments(_x(7), r, 7, k, 3 * C, (None, (1, 8), None, None), ranges) == whole  # rows only
    # a 1x1 convolution reading the interior: its column does not move with k
    inner = Load("x", (i0, i1, Bin("add", r, _i(1), I64), k), DType.uint8)
    assert tile_segments(inner, r, 7, k, C, _box(7), ranges) == [Segment(0, C)]
    # a divisor that is no whole number of 4-byte steps: no segments
    odd = Load("x", (i0, i1, Bin("floordiv", Bin("add", r, k, I64), _i(6), I64), _i(0)), DType.uint8)
    assert tile_segments(odd, r, 7, k, 3 * C, _box(7), ranges) == whole


def _stats(compiled) -> dict:
    from kiln.codegen.x86 import X86Renderer

    total: dict = {}
    for kern in compiled.result.kernels:
        renderer = X86Renderer()
        renderer.render_func(kern.func, set())
        for name, n in renderer.stats.items():
            total[name] = total.get(name, 0) + n
    return total


def test_tiles_leave_border_rows_out_and_give_the_same_integers(monkeypatch):
    """A ResNet block and small int8 ResNet-18s: tiles skip their edge pixels' border
    columns (at 64x64 the first stage has two tiles per image row, so which tile is at an edge
    is tested at run time), and every output is the integer that tiles reading those zeros
    give (run on a VNNI host; elsewhere the plain-C branch, which skips only window rows)."""
    from kiln.passes.padded_storage import Border

    _host_caps(monkeypatch, True)
    tests = 0
    for model in (_residual_model(), _resnet_int8(), _resnet_int8(64)):
        x = _inputs(model)
        skipping = kiln.compile(model)
        with monkeypatch.context() as m:
            m.setattr(Border, "zero_box", lambda self, shape: None)
            reading = kiln.compile(model)
        got, want = _stats(skipping), _stats(reading)
        assert got["vnni_zero_rows"] > 0 and want["vnni_zero_rows"] == 0
        assert got["vnni_tiles"] == want["vnni_tiles"]
        tests += got["vnni_zero_row_tests"]
        expected = reading.run(x)
        for key, value in skipping.run(x).items():
            np.testing.assert_array_equal(value, expected[key])
    assert tests > 0
