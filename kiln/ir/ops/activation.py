"""More elementwise ops: shrink, swish (with alpha), swiglu and bit_shift.

Each is one expression per element. ``bit_shift`` guards the shift with a Select: a shift
by a negative amount or by the bit width or more is undefined in C, and ONNX defines it
(0, or -1 for a right shift of a negative signed value).
"""
from __future__ import annotations

from kiln.errors import ShapeError
from kiln.ir.compute import compute
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const, Select, Un
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, broadcast_index, broadcast_shapes, register
from kiln.ir.ops.nn import zero


def _same_type(ins, attrs):
    return [ins[0]]


def _const(v, dt: DType) -> Const:
    return Const(float(v) if dt.is_float else int(v), dt)


# -- shrink ---------------------------------------------------------------------------------

def _shrink_compute(ins, outs, attrs):
    """y = x + bias if x < -lambd; x - bias if x > lambd; 0 otherwise."""
    x, o = ins[0], outs[0]
    lambd, bias = float(attrs.get("lambd", 0.5)), float(attrs.get("bias", 0.0))
    dt = x.dtype

    def body(*i):
        v = x[i]
        # integer inputs compare and add in float64, as the ONNX reference promotes them
        f = v if dt.is_float else Cast(v, DType.float64)
        ft = f.dtype
        lo, hi, b = Const(-lambd, ft), Const(lambd, ft), Const(bias, ft)
        y = Select(f.lt(lo), f + b, Select(f.gt(hi), f - b, Const(0.0, ft)))
        return y if dt.is_float else Cast(y, dt)

    return [compute(o.name, o.shape, body, o.dtype)]


register("shrink", FusionKind.ELEMENTWISE, _same_type, _shrink_compute)


# -- swish / swiglu ------------------------------------------------------------------------------

def _swish(v, alpha: float):
    dt = v.dtype
    a = v if alpha == 1.0 else v * Const(alpha, dt)
    return v * Un("sigmoid", a, dt)


def _float_infer(what):
    def infer(ins, attrs):
        if not ins[0].dtype.is_float:
            raise ShapeError(f"{what} needs a floating-point input; got {ins[0].dtype}")
        if len(ins) > 1 and (tuple(ins[1].shape) != tuple(ins[0].shape) or ins[1].dtype != ins[0].dtype):
            raise ShapeError(f"{what} inputs must have identical shapes and dtypes; got {ins[0]} and {ins[1]}")
        return [ins[0]]
    return infer


def _swish_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    alpha = float(attrs.get("alpha", 1.0))
    return [compute(o.name, o.shape, lambda *i: _swish(x[i], alpha), o.dtype)]


def _swiglu_compute(ins, outs, attrs):
    """y = swish_alpha(a) * b (no broadcasting: the shapes are equal)."""
    a, b, o = ins[0], ins[1], outs[0]
    alpha = float(attrs.get("alpha", 1.0))
    return [compute(o.name, o.shape, lambda *i: _swish(a[i], alpha) * b[i], o.dtype)]


register("swish", FusionKind.ELEMENTWISE, _float_infer("swish"), _swish_compute)
register("swiglu", FusionKind.ELEMENTWISE, _float_infer("swiglu"), _swiglu_compute)


# -- bit_shift --------------------------------------------------------------------------------

def _bit_shift_infer(ins, attrs):
    if ins[0].dtype != ins[1].dtype or not ins[0].dtype.is_int:
        raise ShapeError(f"bit_shift needs two integer operands of one dtype; got {ins[0].dtype} "
                         f"and {ins[1].dtype}")
    if attrs["direction"] not in ("LEFT", "RIGHT"):
        raise ShapeError(f"bit_shift direction must be LEFT or RIGHT; got {attrs['direction']!r}")
    return [TensorType(broadcast_shapes(ins[0].shape, ins[1].shape), ins[0].dtype)]


def _bit_shift_compute(ins, outs, attrs):
    a, b, o = ins[0], ins[1], outs[0]
    dt, left = o.dtype, attrs["direction"] == "LEFT"
    width = dt.itemsize * 8
    signed = dt is not DType.uint8

    def body(*i):
        x, s = a[broadcast_index(a, i)], b[broadcast_index(b, i)]
        valid = s.ge(_const(0, dt)).land(s.lt(_const(width, dt))) if signed else s.lt(_const(width, dt))
        if left:
            # gcc defines signed '<<' as the two's-complement bit pattern (no UB exploited)
            return Select(valid, Bin("shl", x, s, dt), zero(dt))
        fill = Select(x.lt(zero(dt)), _const(-1, dt), zero(dt)) if signed else zero(dt)
        return Select(valid, Bin("shr", x, s, dt), fill)

    return [compute(o.name, o.shape, body, o.dtype)]


register("bit_shift", FusionKind.BROADCAST, _bit_shift_infer, _bit_shift_compute)
