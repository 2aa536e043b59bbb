"""Elementwise and broadcasting ops: unary math, binary arithmetic, comparisons, where, cast.

Parametric activations (clip, leaky_relu, gelu ...) are ops of their own so the graph stays
readable; their compute definitions are one expression each.
"""
from __future__ import annotations

import math

import ml_dtypes

from kiln.errors import ShapeError
from kiln.ir.compute import compute
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const, Select, Un, as_expr
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, broadcast_index, broadcast_shapes, register


def _same_type(ins, attrs):
    return [ins[0]]


# C's fmax/fmin return the other operand when one is NaN; ONNX (numpy, ONNX Runtime)
# propagates NaN through Max, Min, Relu, Clip ... so float max/min are selects.

def _pick(op: str, a, b):
    """``b`` where it wins (b > a for max, b < a for min) or is NaN, else ``a``: a NaN ``a``
    loses every comparison and stays. A constant operand goes second, where it needs no NaN test."""
    if isinstance(a, Const) and not isinstance(b, Const):
        a, b = b, a
    wins = b.gt(a) if op == "max" else b.lt(a)
    if not (isinstance(b, Const) and not math.isnan(b.value)):
        wins = wins.lor(Un("isnan", b, DType.bool))
    return Select(wins, b, a)


def nan_max(a, b):
    """numpy.maximum: NaN when either operand is NaN."""
    return _pick("max", a, b) if a.dtype.is_float else Bin("max", a, b, a.dtype)


def nan_min(a, b):
    """numpy.minimum: NaN when either operand is NaN."""
    return _pick("min", a, b) if a.dtype.is_float else Bin("min", a, b, a.dtype)


def _unary_expr(op: str, x, attrs):
    f32 = x.dtype
    c = lambda v: Const(float(v), f32)  # noqa: E731
    if op == "relu":
        return nan_max(x, c(0))
    if op == "leaky_relu":
        return Select(x.lt(c(0)), x * c(attrs.get("alpha", 0.01)), x)
    if op == "elu":
        a = attrs.get("alpha", 1.0)
        # expm1, as ONNX's reference: exact near 0, where exp(x) - 1 cancels
        return Select(x.lt(c(0)), c(a) * Un("expm1", x, f32), x)
    if op == "selu":
        a, g = attrs.get("alpha", 1.67326319217681884765625), attrs.get("gamma", 1.05070102214813232421875)
        return Select(x.le(c(0)), c(g) * (c(a) * Un("exp", x, f32) - c(a)), c(g) * x)
    if op == "clip":
        lo, hi = attrs.get("min"), attrs.get("max")
        y = x
        if lo is not None:
            y = nan_max(y, as_expr(lo, f32))
        if hi is not None:
            y = nan_min(y, as_expr(hi, f32))
        return y
    if op == "hard_sigmoid":
        a, b = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
        return nan_min(nan_max(c(a) * x + c(b), c(0)), c(1))
    if op == "hard_swish":
        return x * nan_min(nan_max(x * c(1 / 6) + c(0.5), c(0)), c(1))
    if op == "gelu":
        if attrs.get("approximate", "none") == "tanh":
            # 0.5 x (1 + tanh(u)) = x sigmoid(2u): one exponential instead of tanh's exponential,
            # polynomial and select, and no cancellation in 1 + tanh(u) for negative x
            inner = c(2 * math.sqrt(2 / math.pi)) * (x + c(0.044715) * x * x * x)
            return x * Un("sigmoid", inner, f32)
        return c(0.5) * x * (c(1) + Un("erf", x * c(1 / math.sqrt(2)), f32))
    if op == "silu":
        return x * Un("sigmoid", x, f32)
    if op == "mish":
        return x * Un("tanh", Un("softplus", x, f32), f32)
    if op == "softsign":
        return x / (c(1) + Un("abs", x, f32))
    if op == "thresholded_relu":
        return Select(x.gt(c(attrs.get("alpha", 1.0))), x, c(0))
    if op == "celu":
        a = attrs.get("alpha", 1.0)
        return nan_max(x, c(0)) + nan_min(c(a) * Un("expm1", x / c(a), f32), c(0))
    if op in ("isnan", "isinf", "not"):
        return Un(op, x, DType.bool)
    if op == "sign" and f32.is_float:  # sign(NaN) is NaN
        return Select(Un("isnan", x, DType.bool), x, Un("sign", x, f32))
    return Un(op, x, f32)


UNARY = [
    "neg", "exp", "log", "sqrt", "abs", "tanh", "erf", "sigmoid", "floor", "ceil", "round",
    "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh",
    "sign", "reciprocal", "softplus", "relu", "leaky_relu", "elu", "selu", "clip",
    "hard_sigmoid", "hard_swish", "gelu", "silu", "mish", "softsign", "thresholded_relu", "celu",
]
BOOL_UNARY = ["isnan", "isinf", "not"]


def _make_unary(op: str):
    def compute_fn(ins, outs, attrs):
        x = ins[0]
        return [compute(outs[0].name, outs[0].shape, lambda *i: _unary_expr(op, x[i], attrs), outs[0].dtype)]
    return compute_fn


for _op in UNARY:
    register(_op, FusionKind.ELEMENTWISE, _same_type, _make_unary(_op))
for _op in BOOL_UNARY:
    register(_op, FusionKind.ELEMENTWISE, lambda ins, a: [TensorType(ins[0].shape, DType.bool)], _make_unary(_op))


# -- binary, with numpy broadcasting -------------------------------------------------------

ARITH = ["add", "sub", "mul", "div", "pow", "min", "max", "mod", "fmod", "bitand", "bitor", "shl", "shr"]
COMPARE = ["lt", "le", "gt", "ge", "eq", "ne", "and", "or", "xor"]


def _binary_infer(bool_out: bool):
    def infer(ins, attrs):
        if ins[0].dtype != ins[1].dtype:
            raise ShapeError(f"binary op operands have dtypes {ins[0].dtype} and {ins[1].dtype}; expected equal")
        shape = broadcast_shapes(ins[0].shape, ins[1].shape)
        return [TensorType(shape, DType.bool if bool_out else ins[0].dtype)]
    return infer


def _float_mod(a, b):
    """Python's (floored) modulo for floats, from C's truncated fmod: the result takes the
    divisor's sign. fmod also gives NaN for a zero divisor and keeps x for an infinite one."""
    r = Bin("fmod", a, b, a.dtype)
    zero = Const(0.0, a.dtype)
    wrong_sign = r.ne(zero).land(Bin("ne", r.lt(zero), b.lt(zero), DType.bool))
    return Select(wrong_sign, r + b, r)


def _binary_expr(op, a, b):
    if op == "pow":
        return Bin("pow", a, b, a.dtype)
    if op in ("max", "min"):
        return nan_max(a, b) if op == "max" else nan_min(a, b)
    if op == "mod" and a.dtype.is_float:
        return _float_mod(a, b)
    return Bin(op, a, b, DType.bool if op in COMPARE else a.dtype)


def _make_binary(op: str):
    def compute_fn(ins, outs, attrs):
        a, b = ins
        o = outs[0]
        return [compute(o.name, o.shape,
                        lambda *i: _binary_expr(op, a[broadcast_index(a, i)], b[broadcast_index(b, i)]),
                        o.dtype)]
    return compute_fn


for _op in ARITH:
    register(_op, FusionKind.BROADCAST, _binary_infer(False), _make_binary(_op))
for _op in COMPARE:
    register(_op, FusionKind.BROADCAST, _binary_infer(True), _make_binary(_op))


def _where_infer(ins, attrs):
    if ins[1].dtype != ins[2].dtype:
        raise ShapeError(f"where branches have dtypes {ins[1].dtype} and {ins[2].dtype}; expected equal")
    return [TensorType(broadcast_shapes(*(t.shape for t in ins)), ins[1].dtype)]


def _where_compute(ins, outs, attrs):
    c, a, b = ins
    o = outs[0]
    return [compute(o.name, o.shape, lambda *i: Select(
        c[broadcast_index(c, i)], a[broadcast_index(a, i)], b[broadcast_index(b, i)]), o.dtype)]


register("where", FusionKind.BROADCAST, _where_infer, _where_compute)


def _cast_infer(ins, attrs):
    return [TensorType(ins[0].shape, DType(attrs["to"]))]


def _cast_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    # float8_e8m0fnu saturates in its encoder (kiln/codegen/narrow_types.py): no clamp here
    saturate = attrs.get("saturate", 0) and o.dtype.is_narrow_float and o.dtype is not DType.float8_e8m0fnu
    limit = float(ml_dtypes.finfo(o.dtype.np).max) if saturate else None

    def body(*i):
        v = x[i]
        if o.dtype is DType.bool:
            return v.ne(Const(0, v.dtype) if not v.dtype.is_float else Const(0.0, v.dtype))
        if saturate:
            # ONNX Cast(saturate=1) to float8 clamps to the finite range (NaN stays NaN);
            # the comparisons are false for NaN, so the Selects pass it through
            f = v if v.dtype is DType.float32 else Cast(v, DType.float32)
            hi, lo = Const(limit, DType.float32), Const(-limit, DType.float32)
            v = Select(f.gt(hi), hi, Select(f.lt(lo), lo, f))
        # C truncates toward zero on float -> int conversion, as ONNX Cast does.
        return Cast(v, o.dtype)

    return [compute(o.name, o.shape, body, o.dtype)]


register("cast", FusionKind.ELEMENTWISE, _cast_infer, _cast_compute)


def _bitcast_compute(ins, outs, attrs):
    """The bits of a float read as an integer of the same width, or the reverse (ONNX BitCast
    between integer types is a cast: the same bits, two's complement)."""
    x, o = ins[0], outs[0]
    return [compute(o.name, o.shape, lambda *i: Un("bitcast", x[i], o.dtype), o.dtype)]


register("bitcast", FusionKind.ELEMENTWISE, _cast_infer, _bitcast_compute)


def _variadic_infer(ins, attrs):
    return [TensorType(broadcast_shapes(*(t.shape for t in ins)), ins[0].dtype)]


def _make_variadic(op: str, mean: bool = False):
    def compute_fn(ins, outs, attrs):
        o = outs[0]

        def body(*i):
            acc = ins[0][broadcast_index(ins[0], i)]
            for t in ins[1:]:
                b = t[broadcast_index(t, i)]
                if op in ("max", "min"):
                    acc = nan_max(acc, b) if op == "max" else nan_min(acc, b)
                else:
                    acc = Bin(op, acc, b, o.dtype)
            if mean:
                acc = acc * Const(1.0 / len(ins), o.dtype)
            return acc

        return [compute(o.name, o.shape, body, o.dtype)]
    return compute_fn


register("sum", FusionKind.BROADCAST, _variadic_infer, _make_variadic("add"))
register("mean", FusionKind.BROADCAST, _variadic_infer, _make_variadic("add", mean=True))
register("maximum", FusionKind.BROADCAST, _variadic_infer, _make_variadic("max"))
register("minimum", FusionKind.BROADCAST, _variadic_infer, _make_variadic("min"))
