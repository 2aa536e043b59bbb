"""The integer kernels' requantization (``kiln.ir.ops.qlinear.requant``) in its three forms --
int64 throughout, clamped in int32 (shift >= 31), from the product's high word (shift >= 33)
-- gives the integers of the documented formula, and the x86 epilogue prints the high-word
form with 32-bit operations and a saturating narrow (``kiln/codegen/x86_epilogue.py``)."""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto as TP, helper, numpy_helper as nh

import kiln
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Const, Var, walk
from kiln.ir.loop_eval import evaluate
from kiln.ir.ops import qlinear
from tests.test_vnni import _host_caps
from tests.util import ort_run

I32, U8, I8 = DType.int32, DType.uint8, DType.int8
RNG = np.random.default_rng(5)


def _formula(v: int, mult: int, shift: int, zp: int, lo: int, hi: int) -> int:
    """The module docstring's rounding in Python integers: round half up, then clamp."""
    return max(lo, min(hi, ((v * mult + (1 << (shift - 1))) >> shift) + zp))


def _requant_expr(min_shift: int, zp: int, lo: int, hi: int, out: DType):
    attrs = {"y_zp": zp, "lo": lo, "hi": hi, "min_shift": min_shift}
    return qlinear.requant(Var("acc", I32), Var("bias", I32), Var("mult", I32), Var("shift", I32), attrs, out)


@settings(max_examples=400, deadline=None)
@given(acc=st.integers(-(1 << 31), (1 << 31) - 1), mult=st.integers(1 << 30, (1 << 31) - 1),
       shift=st.integers(33, 62), zp=st.integers(0, 255), signed=st.booleans())
def test_every_form_gives_the_formulas_integer(acc, mult, shift, zp, signed):
    """For shifts that allow all three, the three forms agree with the formula (bias 0; the
    accumulator spans int32, so the products reach +-2^61)."""
    out = I8 if signed else U8
    lo, hi = (-128, 127) if signed else (0, 255)
    zp = zp - 128 if signed else zp
    env = {"acc": np.int32(acc), "bias": np.int32(0), "mult": np.int32(mult), "shift": np.int32(shift)}
    want = _formula(acc, mult, shift, zp, lo, hi)
    for min_shift in (0, qlinear.NARROW_SHIFT, qlinear.HIGH_WORD_SHIFT):
        assert int(evaluate(_requant_expr(min_shift, zp, lo, hi, out), env)) == want, min_shift


@pytest.mark.parametrize("shift", [33, 34, 40, 61])
def test_high_word_form_at_rounding_ties_and_extremes(shift):
    """Exact halves round up, one below rounds down; the largest products stay exact (the
    tie needs an accumulator of 2^(shift-31): int32 up to shift 61)."""
    e = _requant_expr(qlinear.HIGH_WORD_SHIFT, 3, -1000, 1000, I32)
    mult = 1 << 30
    for v in (1 << (shift - 31), (1 << (shift - 31)) - 1, -(1 << (shift - 31)), -(1 << 31), (1 << 31) - 1, 0):
        env = {"acc": np.int32(v), "bias": np.int32(0), "mult": np.int32(mult), "shift": np.int32(shift)}
        assert int(evaluate(e, env)) == _formula(v, mult, shift, 3, -1000, 1000), v


def test_form_follows_the_smallest_shift():
    """The high-word form only when every shift is 33 or more: a 64-bit shift by 32, then
    int32 shifts; below that the int64 rounding shift."""
    def shifts(e):
        return {(x.dtype, isinstance(x.b, Const) and int(x.b.value)) for x in walk(e) if isinstance(x, Bin) and x.op == "shr"}

    high = shifts(_requant_expr(33, 0, 0, 255, U8))
    assert (DType.int64, 32) in high and all(dt is I32 for dt, k in high if k != 32)
    assert all(dt is DType.int64 for dt, _ in shifts(_requant_expr(32, 0, 0, 255, U8)))


# -- the host's AVX-512 epilogue ---------------------------------------------------------------------

def _qlinear_matmul(y_scale: float, y_zp: int, signed: bool):
    """x (4 x 64) @ int8 (64 x 32), x scale 0.5, weight scale 0.25: the real multiplier
    is 0.125 / y_scale; x and y int8 or both uint8 (what ONNX Runtime implements)."""
    ydt, ynp = (TP.INT8, np.int8) if signed else (TP.UINT8, np.uint8)
    inits = [nh.from_array(np.array(0.5, np.float32), "xs"), nh.from_array(np.array(0 if signed else 128, ynp), "xz"),
             nh.from_array(RNG.integers(-127, 128, (64, 32)).astype(np.int8), "w"),
             nh.from_array(np.array(0.25, np.float32), "ws"), nh.from_array(np.array(0, np.int8), "wz"),
             nh.from_array(np.array(y_scale, np.float32), "ys"), nh.from_array(np.array(y_zp, ynp), "yz")]
    node = helper.make_node("QLinearMatMul", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
    g = helper.make_graph([node], "qmm", [helper.make_tensor_value_info("x", ydt, [4, 64])],
                          [helper.make_tensor_value_info("y", ydt, [4, 32])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _epilogue(src: str) -> tuple[str, str]:
    """(per 16 columns, per row) of the one AVX-512 write-back in ``src``."""
    (block,) = re.findall(r"#if defined\(__AVX512VNNI__\)\n(\s*for \(int64_t \w+_wb.*?)#else", src, flags=re.S)
    parts = block.split("for (int64_t", 2)
    return parts[1], parts[2]


@pytest.mark.parametrize("signed, y_zp", [(False, 3), (True, -7)])
def test_high_word_epilogue_prints_32_bit_ops_and_a_saturating_narrow(signed, y_zp, monkeypatch):
    """Real multiplier 1/16 (shift 34): per row and 16 columns, two vpmuldq, one masked
    shuffle and an int32 rounding shift -- no 64-bit shifts; the rounding term once per 16
    columns; the 32 columns narrowed together by saturating packs (no clamp instructions).
    The same integers as the int64 form (narrowed a group at a time), at inputs that hit
    both clamps."""
    model = _qlinear_matmul(2.0, y_zp, signed)
    _host_caps(monkeypatch, True)
    cm = kiln.compile(model)
    (node,) = [nd for nd in cm.graph.nodes if nd.op == "qmatmul"]
    assert node.attrs["min_shift"] >= qlinear.HIGH_WORD_SHIFT
    hoisted, per_row = _epilogue(cm.source())
    assert "_mm512_sllv_epi32" in hoisted and "_mm512_sllv_epi32" not in per_row
    assert per_row.count("_mm512_mul_epi32") == 4 and per_row.count("_mm512_mask_shuffle_epi32") == 2
    assert "_mm512_srav_epi32" in per_row and re.findall(r"_mm512_\w+_epi64", per_row) == ["_mm512_srli_epi64"] * 2
    assert "_mm512_packs_epi32" in per_row and ("_mm512_packs_epi16" if signed else "_mm512_packus_epi16") in per_row
    assert "_mm512_min_epi32" not in per_row and "_mm512_max_epi32" not in per_row  # the packs saturate

    lo, hi = (-128, 127) if signed else (0, 255)
    x = np.concatenate([np.full((1, 64), lo), np.full((1, 64), hi), np.full((1, 64), (lo + hi + 1) // 2),
                        RNG.integers(lo, hi + 1, (1, 64))]).astype(np.int8 if signed else np.uint8)
    got = cm.run({"x": x})["y"]
    monkeypatch.setattr(qlinear, "HIGH_WORD_SHIFT", 99)
    monkeypatch.setattr(qlinear, "NARROW_SHIFT", 99)
    wide = kiln.compile(model)
    wide_row = _epilogue(wide.source())[1]
    assert "_mm512_srav_epi64" in wide_row and "_mm512_packs_epi32" not in wide_row  # clamped in int64
    np.testing.assert_array_equal(got, wide.run({"x": x})["y"])
    assert (got == lo).any() and (got == hi).any() and ((got > lo) & (got < hi)).any()
    want = ort_run(model, {"x": x})["y"]
    assert np.max(np.abs(got.astype(int) - want.astype(int))) <= 1
