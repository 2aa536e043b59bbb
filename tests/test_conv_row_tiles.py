"""Register tiles whose rows have no divisor near the tile's rows (13 x 13 maps:
SqueezeNet's classifier, AlexNet's conv3-5; ViT's 197 tokens): the default rule takes more
rows while the accumulators fit, or a tile that does not divide the rows, its last run
repeating the last row (kiln/passes/default_schedule.py, ``_rows_past_the_tile``).

Tier 1: the rule's decisions (Before/Expected) and the loop nest it builds; tier 2: the
convolutions on the host against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import kiln
from kiln.passes.capabilities import Capabilities
from kiln.passes.default_schedule import default_tiling
from tests.util import check_against_ort, make_model

AVX512 = Capabilities(64, 32, 2).tile()   # (8, 32)
AVX2 = Capabilities(32, 16, 2).tile()     # (6, 16)
CONV_HINTS = {"tile": (3, 4), "col_block_axis": 1}


def conv_spatial(blocks: int, height: int, width: int, block: int):
    """The spatial loops of a conv_nchwc output (N, C/b, H, W, b), as the rule sees them."""
    return [("n", 1), ("cb", blocks), ("h", height), ("w", width), ("c", block)]


@pytest.mark.parametrize("sizes,shape,expected", [
    # 1000 channels in 8-lane blocks at 13 x 13: one row per tile before, all 13 now
    (AVX512, (125, 13, 13, 8), (13, 1)),
    # 256 channels in 16-lane blocks: 2 blocks x 1 row before; now 2 blocks x 7 rows, the
    # second run repeating row 12 once (14 rows of work for 13)
    (AVX512, (16, 13, 13, 16), (7, 2)),
    # a divisor close to the tile's rows stays as it was (56: 8 rows, 2 blocks)
    (AVX512, (16, 56, 56, 16), (8, 2)),
    (AVX512, (4, 7, 7, 16), (7, 2)),
    # 111 = 3 x 37: 8 rows, the last run repeating row 110 once
    (AVX512, (4, 111, 111, 16), (8, 2)),
    # AVX2's 16 registers: 13 accumulators exceed the tile's area (6 x 16); 7 rows of one
    # vector each, 14 rows of work
    (AVX2, (125, 13, 13, 8), (7, 1)),
])
def test_row_tile_for_rows_without_a_near_divisor(sizes, shape, expected):
    blocks, h, w, b = shape
    d = default_tiling(conv_spatial(blocks, h, w, b), CONV_HINTS, 10**9, sizes)
    assert (d["row_tile"], d["col_blocks"]) == expected


@pytest.mark.parametrize("rows,expected", [(197, 8), (196, 7), (200, 8), (77, 7), (34, 7), (13, 7), (5, 5)])
def test_matmul_row_tile(rows, expected):
    """ViT's 197 tokens (prime): a 1-row tile before, 8 rows now (200 of work)."""
    d = default_tiling([("m", rows), ("n", 768)], {"tile": (0, 1)}, 10**9, AVX512)
    assert (d["row_tile"], d["col_tile"]) == (expected, 32)


def test_the_default_stays_inside_the_tuners_domain():
    from kiln.autotune.space import MAX_COL_BLOCKS, MAX_ROW_TILE
    from kiln.passes.default_schedule import MAX_ROW_TILE as RULE_MAX

    assert RULE_MAX <= MAX_ROW_TILE
    for width in range(1, 60):
        d = default_tiling(conv_spatial(16, width, width, 16), CONV_HINTS, 10**9, AVX512)
        assert d["row_tile"] <= min(width, MAX_ROW_TILE)
        assert 16 % d["col_blocks"] == 0 and d["col_blocks"] <= MAX_COL_BLOCKS
        assert d["row_tile"] * d["col_blocks"] * 16 <= AVX512[0] * AVX512[1]


def _conv_model(c: int, oc: int, hw: int, k: int, stride: int = 1):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((oc, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32)
    out = (hw + 2 * (k // 2) - k) // stride + 1
    return make_model([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[k // 2] * 4, strides=[stride] * 2),
                       helper.make_node("Relu", ["c"], ["y"])],
                      [("x", np.float32, [1, c, hw, hw])], [("y", np.float32, [1, oc, out, out])], [("w", w), ("b", b)])


@pytest.mark.parametrize("c,oc,hw,k", [(64, 1000, 13, 1), (32, 256, 13, 1), (48, 64, 13, 3), (16, 40, 11, 3),
                                       (16, 32, 111, 3)])
def test_convolutions_on_13_wide_maps_match_ort(c, oc, hw, k):
    model = _conv_model(c, oc, hw, k)
    x = np.random.default_rng(1).standard_normal((1, c, hw, hw)).astype(np.float32)
    check_against_ort(model, {"x": x}, "host", rtol=1e-4, atol=1e-4)


def test_the_13_row_tile_is_unrolled_in_the_kernel():
    src = kiln.compile(_conv_model(64, 1000, 13, 1), target="host").source()
    assert "float acc0[13][8]" in src and "#pragma GCC unroll 13" in src


@pytest.mark.parametrize("m", [197, 34, 13])
def test_matmuls_with_clamped_row_tiles_match_ort(m):
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((64, 96)) / 8).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
                       [("x", np.float32, [m, 64])], [("y", np.float32, [m, 96])], [("w", w)])
    src = kiln.compile(model, target="host").source()
    assert "kiln_min_int64_t(" in src  # the clamped row index
    check_against_ort(model, {"x": rng.standard_normal((m, 64)).astype(np.float32)}, "host", rtol=1e-4, atol=1e-4)
