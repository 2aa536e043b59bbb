"""Integer average pooling: ``qavg_pool`` (windows) and ``qglobal_avg_pool``.

The ``quantize`` pass makes them out of DequantizeLinear -> AveragePool /
GlobalAveragePool -> QuantizeLinear, so that an int8 model keeps no float op there:

    acc = sum over the window of (x - x_zp)             int32 (in-bounds taps only)
    y   = requant(acc, mult[c], shift[c])               c = the window's tap count

with the same fixed-point epilogue as ``qconv`` (``kiln.ir.ops.qlinear.requant``): the
real multiplier ``x_scale / (y_scale * count)`` as ``mult * 2^-shift``, an int64 product,
**round half up** (add ``2^(shift-1)``, arithmetic shift), plus ``y_zp``, clamped to
``[lo, hi]``. One rounding rule for every integer kernel of the project: Kiln's host and
microcontroller builds agree bit for bit, and ONNX Runtime (float32 average, then
QuantizeLinear's half-to-even) is at most one quantization step away -- on exact ties and
on float32 rounding of the average.

``mult``/``shift`` are int32 tables indexed by the tap count when it varies across
outputs (padding with ``count_include_pad=0``, or ceil mode): a window of K taps has at
most K distinct counts, so the table has K+1 entries computed at compile time and the
kernel needs no division. When every window has the same count the tables have one
entry. Accumulating in int32 is exact up to 2^23 taps of 8-bit values.
"""
from __future__ import annotations

import numpy as np

from kiln.errors import ShapeError
from kiln.ir.compute import compute, rsum
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const, Select
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, register
from kiln.ir.ops.nn import batch_shape, window_attrs, window_out_size
from kiln.ir.ops.pool import _pool_infer, pool_axes, window_taps  # the float pools' window geometry, shared
from kiln.ir.ops.qlinear import QTYPES, _check_attrs, fixed_point, requant

I32, I64 = DType.int32, DType.int64
MAX_TAPS = 1 << 23   # 255 * 2^23 < 2^31: the int32 sum cannot overflow


def count_multipliers(x_scale: float, y_scale: float, counts) -> tuple[np.ndarray, np.ndarray]:
    """(mult, shift) int32 tables for ``x_scale / (y_scale * count)``, one per count
    (count 0 -- a window entirely in padding, or a count no window has -- gets multiplier 0
    and the smallest shift of the others, so that it does not lower the ``min_shift`` that
    lets the epilogue round from the product's high word)."""
    counts = np.asarray(counts, np.float64).reshape(-1)
    real = np.where(counts > 0, x_scale / (y_scale * np.maximum(counts, 1)), 0.0)
    mult, shift = fixed_point(real)
    if (counts > 0).any():   # multiplier 0 with any shift is 0: take one that keeps min_shift
        shift[counts == 0] = shift[counts > 0].min()
    return mult, shift


def window_counts(in_shape, attrs) -> np.ndarray:
    """The tap count of every output window of a pool over ``in_shape`` (N, C, *spatial),
    as an array over the output's spatial positions: what each average divides by."""
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    strides, pb, pe, dil = window_attrs(attrs, len(kernel), "qavg_pool")
    ceil, include_pad = bool(attrs.get("ceil_mode", 0)), bool(attrs.get("count_include_pad", 0))
    total = np.ones((), np.int64)
    for n, k, s, d, b, e in zip(in_shape[-len(kernel):], kernel, strides, dil, pb, pe):
        out = window_out_size(n, k, s, d, b, e, ceil)
        pos = np.arange(out)[:, None] * s - b + np.arange(k)[None, :] * d
        lo, hi = (-b, n + e) if include_pad else (0, n)
        total = np.multiply.outer(total, ((pos >= lo) & (pos < hi)).sum(axis=1))
    return total


def _check_tables(ins, what: str) -> int:
    m, s = ins[1], ins[2]
    if m.dtype is not I32 or s.dtype is not I32 or len(m.shape) != 1 or tuple(m.shape) != tuple(s.shape):
        raise ShapeError(f"{what} multiplier and shift tables must be int32 vectors of one length; got {m} and {s}")
    if ins[0].dtype not in QTYPES:
        raise ShapeError(f"{what} takes int8/uint8 input; got {ins[0].dtype}")
    return int(m.shape[0])


def _epilogue(acc, mult, shift, ix, attrs, out: DType):
    return requant(acc, Const(0, I32), mult[(ix,)], shift[(ix,)], attrs, out)


# -- qavg_pool -------------------------------------------------------------------------------------

def _qavg_infer(ins, attrs):
    out = _check_attrs(attrs, "qavg_pool")
    n = _check_tables(ins, "qavg_pool")
    kernel = int(np.prod([int(k) for k in attrs["kernel_shape"]]))
    if kernel > MAX_TAPS or n not in (1, kernel + 1):
        raise ShapeError(f"qavg_pool with {kernel} taps needs tables of 1 or {kernel + 1} entries "
                         f"(and at most {MAX_TAPS} taps); got {n}")
    base = _pool_infer("max_pool")([ins[0]], attrs)[0]   # same window geometry as the float pools
    if n == 1 and len(set(window_counts(ins[0].shape, attrs).reshape(-1).tolist())) != 1:
        raise ShapeError("qavg_pool windows have different tap counts (padding not counted, or ceil "
                         f"mode): it needs a table of {kernel + 1} multipliers indexed by the count")
    return [TensorType(base.shape, out)]


def _qavg_compute(ins, outs, attrs):
    x, mult, shift = ins
    o = outs[0]
    lead, kernel, axes = pool_axes(x, o, attrs, "qavg_pool")
    include_pad = bool(attrs.get("count_include_pad", 0))
    zx = Const(int(attrs["x_zp"]), I32)
    by_count = mult.shape[0] > 1

    def body(*i):
        def tap(*k):
            pos = [ax.pos(i[lead + j], k[j]) for j, ax in enumerate(axes)]
            conds = [c for ax, p in zip(axes, pos) for c in ax.bounds_conds(p, 0, ax.n)]
            v = Cast(x[tuple(i[:lead]) + tuple(pos)], I32)
            if not conds:
                return v
            cond = conds[0]
            for c in conds[1:]:
                cond = cond.land(c)
            return Select(cond, v - zx, Const(0, I32))   # padding is real zero: adds nothing

        acc = rsum(tap, kernel)
        padded = any(ax.first < 0 or ax.last >= ax.n for ax in axes)
        const, dyn = window_taps(axes, i, lead, include_pad)
        if not padded:   # no tap ever leaves the input: subtract the zero point once
            acc = acc - Const(int(attrs["x_zp"]) * int(np.prod(kernel)), I32)
        if not by_count:   # one multiplier: infer checked that every window has the same count
            ix = Const(0, I64)
        elif dyn is None:
            ix = Const(const, I64)
        else:
            ix = dyn * const if const != 1 else dyn
        return _epilogue(acc, mult, shift, ix, attrs, o.dtype)

    return [compute(o.name, o.shape, body, o.dtype, tag="pool")]


register("qavg_pool", FusionKind.OUT_FUSABLE, _qavg_infer, _qavg_compute)


# -- qglobal_avg_pool ------------------------------------------------------------------------------

def _qglobal_infer(ins, attrs):
    out = _check_attrs(attrs, "qglobal_avg_pool")
    x = batch_shape(ins[0], "qglobal_avg_pool input")
    last = bool(attrs.get("channels_last"))
    if _check_tables(ins, "qglobal_avg_pool") != 1 or len(x) < 3:
        layout = "(N, *spatial, C)" if last else "(N, C, *spatial)"
        raise ShapeError(f"qglobal_avg_pool takes input {layout} and one multiplier; got {x}, {ins[1]}")
    spatial = x[1:-1] if last else x[2:]
    if int(np.prod(spatial)) > MAX_TAPS:
        raise ShapeError(f"qglobal_avg_pool sums at most {MAX_TAPS} values in int32; got {spatial}")
    channels = x[-1] if last else x[1]
    return [TensorType((x[0], channels) + (1,) * len(spatial), out)]


def _qglobal_compute(ins, outs, attrs):
    """Attribute ``channels_last``: the input is (N, *spatial, C) (an NHWC activation of
    ``kiln/passes/integer_layout.py``); the output is (N, C, 1, ...) either way, the same
    bytes in both layouts."""
    x, mult, shift = ins
    o = outs[0]
    last = bool(attrs.get("channels_last"))
    spatial = x.shape[1:-1] if last else x.shape[2:]
    count = int(np.prod(spatial))
    zsum = Const(int(attrs["x_zp"]) * count, I32)

    def body(n, c, *_):
        def tap(*r):
            return Cast(x[(n,) + r + (c,)] if last else x[(n, c) + r], I32)
        acc = Bin("sub", rsum(tap, spatial), zsum, I32)
        return _epilogue(acc, mult, shift, Const(0, I64), attrs, o.dtype)

    # channels last: a register tile of channels with the taps summed outside it, so every
    # load is a vector of contiguous channels (strided scalar loads without it)
    hints = {"tile": (len(o.shape) - 1, 1)} if last else {}
    return [compute(o.name, o.shape, body, o.dtype, tag="reduce", hints=hints)]


register("qglobal_avg_pool", FusionKind.REDUCTION, _qglobal_infer, _qglobal_compute)
