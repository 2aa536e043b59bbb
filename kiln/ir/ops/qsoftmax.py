"""Integer softmax: ``qsoftmax``, from DequantizeLinear -> Softmax -> QuantizeLinear.

An 8-bit input has only 256 possible differences ``d = max(x) - x`` along the axis, so
``exp(-x_scale * d)`` is a 256-entry table computed at compile time from the input scale
(the approach of TFLite Micro's int8 softmax LUT; CMSIS-NN instead evaluates exp in fixed
point, which costs more instructions and is no more exact). Per row of the softmax axis:

    m    = max_k x[k]                                          int32
    T[d] = round(2^Q * exp(-x_scale * d))   d = 0..255          int32 table in flash, T[0] = 2^Q
    S    = sum_k T[m - x[k]]                                    int32: N * 2^Q < 2^31 picks Q <= 20
    r    = (numer + S/2) / S                numer = round(2^K / y_scale)   one int64 division per row
    y    = clamp(((int64(T[m - x]) * r + 2^(K-1)) >> K) + y_zp, lo, hi)

so ``y ~ T / (y_scale * S) = softmax(x) / y_scale``, rounded half up. ``K`` is as large as
keeps ``numer`` (and every product ``T * r <= numer``) below 2^62; the reciprocal keeps
more than 30 significant bits for any realistic output scale. The error against the real
softmax is a small fraction of a quantization step (the table's rounding, 2^-Q relative),
so ONNX Runtime (float32 softmax, then QuantizeLinear's half-to-even) is at most one step
away, and Kiln's targets agree with each other exactly. No floating point at run time.
"""
from __future__ import annotations

import math

import numpy as np

from kiln.errors import ShapeError
from kiln.ir.compute import compute, rmax, rsum
from kiln.ir.dtype import INDEX, DType
from kiln.ir.expr import Bin, Cast, Const
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, normalize_axis, register
from kiln.ir.ops.nn import static_shape
from kiln.ir.ops.qlinear import QTYPES, _check_attrs

I32, I64 = DType.int32, DType.int64
TABLE_SIZE = 256
MAX_TABLE_BITS = 20       # Q: more gains nothing visible in an 8-bit output
MIN_TABLE_BITS = 8
NUMER_BITS = 61           # numer < 2^62: its sum with S/2 and every T * r stay inside int64


def exp_table(x_scale: float, n: int) -> tuple[np.ndarray, int] | None:
    """(T, Q): the int32 table ``round(2^Q * exp(-x_scale * d))`` for ``d = 0..255``, with
    ``Q`` chosen so that ``n`` entries sum below 2^31; None when ``n`` is too long."""
    q = min(MAX_TABLE_BITS, 31 - int(n).bit_length())
    if q < MIN_TABLE_BITS or not x_scale > 0 or not math.isfinite(x_scale):
        return None
    d = np.arange(TABLE_SIZE, dtype=np.float64)
    return np.round(np.exp(-float(x_scale) * d) * 2.0 ** q).astype(np.int32), q


def reciprocal_numerator(y_scale: float, table_bits: int) -> tuple[int, int] | None:
    """(numer, K) with ``numer = round(2^K / y_scale) < 2^62``; None when the output scale is
    so small that fewer than 16 bits would remain beyond the table's."""
    if not y_scale > 0 or not math.isfinite(y_scale):
        return None
    k = NUMER_BITS - max(0, math.ceil(math.log2(1.0 / y_scale)))
    if k < table_bits + 16:
        return None
    numer = int(round(2.0 ** k / y_scale))
    return (numer, k) if numer < 1 << 62 else None


def _qsoftmax_infer(ins, attrs):
    out = _check_attrs(attrs, "qsoftmax")
    x = static_shape(ins[0], "qsoftmax input")
    if ins[0].dtype not in QTYPES:
        raise ShapeError(f"qsoftmax takes int8/uint8 input; got {ins[0].dtype}")
    if ins[1].dtype is not I32 or tuple(ins[1].shape) != (TABLE_SIZE,):
        raise ShapeError(f"qsoftmax needs an int32 exp table of {TABLE_SIZE} entries; got {ins[1]}")
    axis = normalize_axis(int(attrs.get("axis", -1)), len(x), "qsoftmax axis")
    k, numer = int(attrs["frac_bits"]), int(attrs["numer"])
    if not 0 < numer < 1 << 62 or not 1 <= k <= 62 or x[axis] * 2 ** int(attrs["table_bits"]) >= 2 ** 31:
        raise ShapeError(f"qsoftmax fixed-point parameters out of range: numer {numer}, K {k}, "
                         f"table bits {attrs['table_bits']} for {x[axis]} elements")
    return [TensorType(x, out)]


def _qsoftmax_compute(ins, outs, attrs):
    x, table = ins
    o = outs[0]
    axis = normalize_axis(int(attrs.get("axis", -1)), x.ndim, "qsoftmax axis")
    n = x.shape[axis]
    red_shape = x.shape[:axis] + (1,) + x.shape[axis + 1:]
    k = int(attrs["frac_bits"])

    def at(i, r):
        return tuple(i[:axis]) + (r,) + tuple(i[axis + 1:])

    def reduced(i):
        return tuple(i[:axis]) + (0,) + tuple(i[axis + 1:])

    mx = compute(f"{o.name}__max", red_shape, lambda *i: rmax(lambda r: Cast(x[at(i, r)], I32), n),
                 I32, tag="reduce", inline=False)
    m = mx.tensor

    def exp_of(v, mi):   # T[m - x]: the difference is 0..255 for 8-bit data
        return table[(Cast(Bin("sub", m[mi], Cast(v, I32), I32), INDEX),)]

    sm = compute(f"{o.name}__sum", red_shape, lambda *i: rsum(lambda r: exp_of(x[at(i, r)], i), n),
                 I32, tag="reduce", inline=False)
    s = sm.tensor

    def recip(*i):
        total = Cast(s[i], I64)
        return (Const(int(attrs["numer"]), I64) + Bin("shr", total, Const(1, I64), I64)) // total

    rc = compute(f"{o.name}__recip", red_shape, recip, I64, inline=False)
    r = rc.tensor

    def body(*i):
        v = Cast(exp_of(x[i], reduced(i)), I64) * r[reduced(i)]
        v = Bin("shr", v + Const(1 << (k - 1), I64), Const(k, I64), I64) + Const(int(attrs["y_zp"]), I64)
        lo, hi = int(attrs["lo"]), int(attrs["hi"])
        return Cast(Bin("min", Bin("max", v, Const(lo, I64), I64), Const(hi, I64), I64), o.dtype)

    return [mx, sm, rc, compute(o.name, o.shape, body, o.dtype)]


register("qsoftmax", FusionKind.REDUCTION, _qsoftmax_infer, _qsoftmax_compute)
