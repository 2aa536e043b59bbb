"""Converters for elementwise, activation, comparison and logic ops."""
from __future__ import annotations

import numpy as np

from kiln.frontend.onnx_ops import converter
from kiln.ir.dtype import DType

_UNARY = {
    "Neg": "neg", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Abs": "abs", "Tanh": "tanh",
    "Erf": "erf", "Sigmoid": "sigmoid", "Floor": "floor", "Ceil": "ceil", "Round": "round",
    "Sin": "sin", "Cos": "cos", "Tan": "tan", "Asin": "asin", "Acos": "acos", "Atan": "atan",
    "Sinh": "sinh", "Cosh": "cosh", "Asinh": "asinh", "Acosh": "acosh", "Atanh": "atanh",
    "Sign": "sign", "Reciprocal": "reciprocal", "Softplus": "softplus", "Relu": "relu",
    "Not": "not", "IsNaN": "isnan", "Softsign": "softsign", "Mish": "mish",
}
# ONNX attribute name -> kiln attribute name for parametric activations
_PARAMETRIC = {
    "LeakyRelu": ("leaky_relu", {"alpha": 0.01}),
    "Elu": ("elu", {"alpha": 1.0}),
    "Selu": ("selu", {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875}),
    "HardSigmoid": ("hard_sigmoid", {"alpha": 0.2, "beta": 0.5}),
    "ThresholdedRelu": ("thresholded_relu", {"alpha": 1.0}),
    "Celu": ("celu", {"alpha": 1.0}),
    "HardSwish": ("hard_swish", {}),
}
_BINARY = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow",
    "Less": "lt", "LessOrEqual": "le", "Greater": "gt", "GreaterOrEqual": "ge", "Equal": "eq",
    "And": "and", "Or": "or", "Xor": "xor", "BitwiseAnd": "bitand", "BitwiseOr": "bitor",
}
_VARIADIC = {"Sum": "sum", "Mean": "mean", "Max": "maximum", "Min": "minimum"}


def _unary(kiln_op):
    def convert(ctx, node):
        return ctx.emit(kiln_op, [ctx.input(0)], out_names=ctx.outputs())
    return convert


def _parametric(kiln_op, defaults):
    def convert(ctx, node):
        attrs = {k: float(ctx.attr(k, v)) for k, v in defaults.items()}
        return ctx.emit(kiln_op, [ctx.input(0)], attrs, out_names=ctx.outputs())
    return convert


def _binary(kiln_op):
    def convert(ctx, node):
        a, b = ctx.input(0), ctx.input(1)
        if kiln_op == "pow" and ctx.type(a).dtype != ctx.type(b).dtype:
            b = ctx.emit("cast", [b], {"to": ctx.type(a).dtype.value})[0]
        if ctx.opset < 7 and ctx.attr("broadcast", 0) and ctx.attr("axis") is not None:
            b = _legacy_broadcast(ctx, a, b, ctx.attr("axis"))
        return ctx.emit(kiln_op, [a, b], out_names=ctx.outputs())
    return convert


def _legacy_broadcast(ctx, a, b, axis):
    """Opset < 7 broadcast with an axis: align b's dims starting at ``axis``."""
    ra, rb = len(ctx.shape(a)), len(ctx.shape(b))
    axis = axis % ra
    shape = (1,) * 0 + tuple(ctx.shape(b)) + (1,) * (ra - axis - rb)
    return ctx.emit("reshape", [b], {"shape": shape})[0]


def _variadic(kiln_op):
    def convert(ctx, node):
        names = [n for n in ctx.inputs() if n]
        if len(names) == 1:
            return ctx.emit("identity", names, out_names=ctx.outputs())
        return ctx.emit(kiln_op, names, out_names=ctx.outputs())
    return convert


for _onnx, _kiln in _UNARY.items():
    converter(_onnx)(_unary(_kiln))
for _onnx, (_kiln, _defaults) in _PARAMETRIC.items():
    converter(_onnx)(_parametric(_kiln, _defaults))
for _onnx, _kiln in _BINARY.items():
    converter(_onnx)(_binary(_kiln))
for _onnx, _kiln in _VARIADIC.items():
    converter(_onnx)(_variadic(_kiln))


@converter("IsInf", since=10)
def _isinf(ctx, node):
    x = ctx.input(0)
    pos, neg = ctx.attr("detect_positive", 1), ctx.attr("detect_negative", 1)
    inf = ctx.emit("isinf", [x])[0]
    if pos and neg:
        return ctx.emit("identity", [inf], out_names=ctx.outputs())
    zero = ctx.add_const(np.zeros((), ctx.type(x).dtype.np))
    sign = ctx.emit("gt" if pos else "lt", [x, zero])[0]
    if not pos and not neg:
        return ctx.emit("and", [inf, ctx.emit("not", [inf])[0]], out_names=ctx.outputs())
    return ctx.emit("and", [inf, sign], out_names=ctx.outputs())


@converter("Mod", since=10)
def _mod(ctx, node):
    op = "fmod" if ctx.attr("fmod", 0) else "mod"
    return ctx.emit(op, [ctx.input(0), ctx.input(1)], out_names=ctx.outputs())


@converter("Clip", since=1)
def _clip_attr(ctx, node):
    attrs = {"min": float(ctx.attr("min", -3.4028234663852886e38)), "max": float(ctx.attr("max", 3.4028234663852886e38))}
    return ctx.emit("clip", [ctx.input(0)], attrs, out_names=ctx.outputs())


@converter("Clip", since=11)
def _clip_inputs(ctx, node):
    attrs = {}
    for i, key in ((1, "min"), (2, "max")):
        if ctx.has_input(i):
            v = ctx.require_const(i, key)
            attrs[key] = v.item() if ctx.type(ctx.input(0)).dtype.is_float else int(v.item())
    if not attrs:
        return ctx.emit("identity", [ctx.input(0)], out_names=ctx.outputs())
    if ctx.type(ctx.input(0)).dtype.is_float:
        attrs = {k: float(v) for k, v in attrs.items()}
    return ctx.emit("clip", [ctx.input(0)], attrs, out_names=ctx.outputs())


@converter("Gelu", since=20)
def _gelu(ctx, node):
    return ctx.emit("gelu", [ctx.input(0)], {"approximate": ctx.attr("approximate", "none")},
                    out_names=ctx.outputs())


@converter("PRelu", since=1)
def _prelu(ctx, node):
    x, slope = ctx.input(0), ctx.input(1)
    rx, rs = len(ctx.shape(x)), len(ctx.shape(slope))
    if ctx.opset < 7 or (rs == 1 and rx > 2 and ctx.shape(slope)[0] == ctx.shape(x)[1] and ctx.shape(slope)[0] != ctx.shape(x)[-1]):
        # per-channel slope given as [C]: align it with axis 1
        slope = ctx.emit("reshape", [slope], {"shape": (ctx.shape(slope)[0],) + (1,) * (rx - 2)})[0]
    zero = ctx.add_const(np.zeros((), ctx.type(x).dtype.np))
    neg = ctx.emit("lt", [x, zero])[0]
    scaled = ctx.emit("mul", [x, slope])[0]
    return ctx.emit("where", [neg, scaled, x], out_names=ctx.outputs())


@converter("Where", since=9)
def _where(ctx, node):
    return ctx.emit("where", [ctx.input(0), ctx.input(1), ctx.input(2)], out_names=ctx.outputs())


@converter("Cast", since=6)
def _cast(ctx, node):
    from kiln.frontend.onnx import onnx_dtype

    return _emit_cast(ctx, onnx_dtype(ctx.attr("to")))


@converter("CastLike", since=15)
def _cast_like(ctx, node):
    return _emit_cast(ctx, ctx.type(ctx.input(1)).dtype)


def _emit_cast(ctx, to):
    """Cast and CastLike; ``saturate`` (opset 19, default 1) clamps casts to float8 formats."""
    if ctx.type(ctx.input(0)).dtype == to:
        return ctx.emit("identity", [ctx.input(0)], out_names=ctx.outputs())
    attrs = {"to": to.value}
    if to is DType.float8_e8m0fnu and (ctx.attr("round_mode", "up") != "up" or not ctx.attr("saturate", 1)):
        ctx.unsupported(f"a cast to float8e8m0 with round_mode {ctx.attr('round_mode', 'up')!r} and saturate "
                        f"{ctx.attr('saturate', 1)} (Kiln implements the defaults: round_mode 'up', saturate 1)")
    if to.is_narrow_float and to is not DType.bfloat16 and ctx.attr("saturate", 1):
        attrs["saturate"] = 1
    return ctx.emit("cast", [ctx.input(0)], attrs, out_names=ctx.outputs())


# BitCast (opset 26): the same bits as another type of the same width. Between integer types
# (and bool -> uint8) that is what a C cast of a same-width value does; floats read as
# integers and back need a bit reinterpretation (the graph op ``bitcast``).
_BITCAST_FLOAT = (DType.float32, DType.float64)


@converter("BitCast", since=26)
def _bit_cast(ctx, node):
    from kiln.frontend.onnx import onnx_dtype

    src, to = ctx.type(ctx.input(0)).dtype, onnx_dtype(ctx.attr("to"))
    if src.itemsize != to.itemsize:
        ctx.fail(f"BitCast from {src.value} ({8 * src.itemsize} bits) to {to.value} ({8 * to.itemsize} bits): "
                 "the types must have the same bit width")
    if src == to:
        return ctx.emit("identity", [ctx.input(0)], out_names=ctx.outputs())
    integral = (lambda t: not t.is_float and not t.is_narrow_int)
    if integral(src) and integral(to):
        return ctx.emit("cast", [ctx.input(0)], {"to": to.value}, out_names=ctx.outputs())
    if not (src in _BITCAST_FLOAT and integral(to) or to in _BITCAST_FLOAT and integral(src)):
        ctx.unsupported(f"BitCast from {src.value} to {to.value} is not supported (float32/float64 to or from an "
                 "integer of the same width, and integer to integer, are)")
    return ctx.emit("bitcast", [ctx.input(0)], {"to": to.value}, out_names=ctx.outputs())


@converter("Identity", since=1)
def _identity(ctx, node):
    return [ctx.input(0)]


@converter("Dropout", since=1)
def _dropout(ctx, node):
    """Inference: the identity; the optional mask output is all True."""
    x = ctx.input(0)
    outs = [x]
    if len(node.output) > 1 and node.output[1]:
        outs.append(ctx.add_const(np.ones(ctx.shape(x), dtype=bool), "mask"))
    return outs


# Bitwise xor and not from ops Kiln has, exact for every integer type:
# a ^ b == (a | b) - (a & b), and ~x == -1 - x (two's complement) or MAX - x (unsigned).

@converter("BitwiseXor", since=18)
def _bitwise_xor(ctx, node):
    a, b = ctx.input(0), ctx.input(1)
    both, either = ctx.emit("bitand", [a, b])[0], ctx.emit("bitor", [a, b])[0]
    return ctx.emit("sub", [either, both], out_names=ctx.outputs())


@converter("BitwiseNot", since=18)
def _bitwise_not(ctx, node):
    x = ctx.input(0)
    dtype = ctx.type(x).dtype.np
    if not np.issubdtype(dtype, np.integer):
        ctx.fail(f"BitwiseNot needs an integer input; got {dtype}")
    ones = ctx.add_const(np.asarray(np.iinfo(dtype).max if np.issubdtype(dtype, np.unsignedinteger) else -1,
                                    dtype=dtype), "all_ones")
    return ctx.emit("sub", [ones, x], out_names=ctx.outputs())
