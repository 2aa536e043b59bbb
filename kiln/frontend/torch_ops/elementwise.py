"""Converters for elementwise aten ops: math, activations, arithmetic, comparisons, logic,
where, clamps, dtype conversion and (inference) dropout.

Dtypes follow torch: the result dtype torch recorded for the node (``ctx.out_type()``) is
what operands are cast to, so ``int_tensor / 2`` casts to float32 before dividing and
Python scalars become rank-0 constants of that dtype. Comparisons cast both sides to
their promoted dtype (``torch.result_type``) and return bool.
"""
from __future__ import annotations

import math

from kiln.frontend.torch_ops import aten, torch_dtype
from kiln.ir.dtype import DType

_UNARY = {
    "neg": "neg", "exp": "exp", "log": "log", "sqrt": "sqrt", "abs": "abs", "tanh": "tanh",
    "erf": "erf", "sigmoid": "sigmoid", "floor": "floor", "ceil": "ceil", "round": "round",
    "sin": "sin", "cos": "cos", "tan": "tan", "asin": "asin", "acos": "acos", "atan": "atan",
    "sinh": "sinh", "cosh": "cosh", "asinh": "asinh", "acosh": "acosh", "atanh": "atanh",
    "sign": "sign", "reciprocal": "reciprocal", "relu": "relu",
}


def _out_dtype(ctx) -> DType:
    return ctx.out_type().dtype


def _unary(kiln_op: str):
    def convert(ctx, a):
        x = ctx.tensor(a["self"], _out_dtype(ctx))  # integer inputs of float math are promoted
        return ctx.emit(kiln_op, [x])[0]
    return convert


for _name, _op in _UNARY.items():
    aten(f"{_name}.default")(_unary(_op))


def _predicate(kiln_op: str):
    def convert(ctx, a):
        return ctx.emit(kiln_op, [ctx.value(a["self"])])[0]
    return convert


aten("isnan.default")(_predicate("isnan"))
aten("isinf.default")(_predicate("isinf"))


@aten("rsqrt.default")
def _rsqrt(ctx, a):
    x = ctx.tensor(a["self"], _out_dtype(ctx))
    return ctx.emit("reciprocal", [ctx.emit("sqrt", [x])[0]])[0]


def _log_base(base: float):
    """log(x) / log(base), as a multiplication by the constant 1 / log(base)."""
    def convert(ctx, a):
        dt = _out_dtype(ctx)
        y = ctx.emit("log", [ctx.tensor(a["self"], dt)])[0]
        return ctx.emit("mul", [y, ctx.scalar(1.0 / math.log(base), dt)])[0]
    return convert


aten("log2.default")(_log_base(2.0))
aten("log10.default")(_log_base(10.0))


@aten("log1p.default")
def _log1p(ctx, a):
    """log(u) * x / (u - 1) with u = 1 + x (x itself where u rounds to 1): log1p's accuracy
    for tiny x without a log1p primitive (Goldberg's correction; exact under IEEE rules)."""
    dt = _out_dtype(ctx)
    x = ctx.tensor(a["self"], dt)
    u = ctx.emit("add", [x, ctx.scalar(1.0, dt)])[0]
    d = ctx.emit("sub", [u, ctx.scalar(1.0, dt)])[0]
    ratio = ctx.emit("div", [ctx.emit("mul", [ctx.emit("log", [u])[0], x])[0], d])[0]
    tiny = ctx.emit("eq", [d, ctx.scalar(0.0, dt)])[0]
    return ctx.emit("where", [tiny, x, ratio])[0]


@aten("expm1.default")
def _expm1(ctx, a):
    """(u - 1) * x / log(u) with u = exp(x) (Kahan's correction), x where u rounds to 1."""
    dt = _out_dtype(ctx)
    x = ctx.tensor(a["self"], dt)
    u = ctx.emit("exp", [x])[0]
    um1 = ctx.emit("sub", [u, ctx.scalar(1.0, dt)])[0]
    ratio = ctx.emit("div", [ctx.emit("mul", [um1, x])[0], ctx.emit("log", [u])[0]])[0]
    near_zero = ctx.emit("eq", [u, ctx.scalar(1.0, dt)])[0]
    y = ctx.emit("where", [near_zero, x, ratio])[0]
    # exp underflows to 0 for very negative x (log(0) would make the ratio nan): -1 there
    zero = ctx.emit("eq", [u, ctx.scalar(0.0, dt)])[0]
    return ctx.emit("where", [zero, ctx.scalar(-1.0, dt), y])[0]


@aten("trunc.default")
def _trunc(ctx, a):
    x = ctx.tensor(a["self"], _out_dtype(ctx))
    if not ctx.type(x).dtype.is_float:
        return x
    neg = ctx.emit("lt", [x, ctx.scalar(0.0, ctx.type(x).dtype)])[0]
    return ctx.emit("where", [neg, ctx.emit("ceil", [x])[0], ctx.emit("floor", [x])[0]])[0]


# -- parametric activations ---------------------------------------------------------------------

@aten("gelu.default")
def _gelu(ctx, a):
    return ctx.emit("gelu", [ctx.value(a["self"])], {"approximate": a["approximate"] or "none"})[0]


@aten("leaky_relu.default")
def _leaky_relu(ctx, a):
    return ctx.emit("leaky_relu", [ctx.value(a["self"])], {"alpha": float(a["negative_slope"])})[0]


@aten("elu.default")
def _elu(ctx, a):
    """elu(alpha, scale): scale 1 is ELU, other scales are SELU's form (scale * elu)."""
    if float(a["input_scale"]) != 1.0:
        ctx.unsupported(f"input_scale={a['input_scale']} (only 1 is implemented)")
    x, alpha, scale = ctx.value(a["self"]), float(a["alpha"]), float(a["scale"])
    if scale == 1.0:
        return ctx.emit("elu", [x], {"alpha": alpha})[0]
    return ctx.emit("selu", [x], {"alpha": alpha, "gamma": scale})[0]


@aten("hardtanh.default")
def _hardtanh(ctx, a):
    return ctx.emit("clip", [ctx.value(a["self"])],
                    {"min": float(a["min_val"]), "max": float(a["max_val"])})[0]


# -- clamps ---------------------------------------------------------------------------------------------

def _bound(v, dtype: DType):
    return float(v) if dtype.is_float else int(v)


@aten("clamp.default")
def _clamp(ctx, a):
    dt = _out_dtype(ctx)
    x = ctx.tensor(a["self"], dt)
    lo, hi = a.get("min"), a.get("max")
    attrs = {k: _bound(v, dt) for k, v in (("min", lo), ("max", hi)) if v is not None}
    if not attrs:
        return x
    return ctx.emit("clip", [x], attrs)[0]


@aten("clamp.Tensor")
def _clamp_tensor(ctx, a):
    dt = _out_dtype(ctx)
    y = ctx.tensor(a["self"], dt)
    if a.get("min") is not None:
        y = ctx.emit("max", [y, ctx.tensor(a["min"], dt)])[0]
    if a.get("max") is not None:
        y = ctx.emit("min", [y, ctx.tensor(a["max"], dt)])[0]
    return y


# -- binary arithmetic ------------------------------------------------------------------------------------

def _is_identity_scalar(kiln_op: str, v) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return (kiln_op in ("add", "sub") and v == 0) or (kiln_op in ("mul", "div") and v == 1)


def _arith(kiln_op: str):
    """``self op alpha * other`` in the result dtype."""
    def convert(ctx, a):
        dt = _out_dtype(ctx)
        x = ctx.tensor(a["self"], dt)
        if _is_identity_scalar(kiln_op, a["other"]) and ctx.type(x) == ctx.out_type():
            return x  # x * 1.0 and x + 0 (which traced code is full of) are x itself
        y = ctx.tensor(a["other"], dt)
        alpha = a.get("alpha", 1)
        if alpha is not None and alpha != 1:
            y = ctx.emit("mul", [y, ctx.scalar(alpha, dt)])[0]
        if dt is DType.bool and kiln_op in ("add", "mul"):
            return ctx.emit("or" if kiln_op == "add" else "and", [x, y])[0]
        return ctx.emit(kiln_op, [x, y])[0]
    return convert


aten("add.Tensor", "add.Scalar")(_arith("add"))
aten("sub.Tensor", "sub.Scalar")(_arith("sub"))
aten("mul.Tensor", "mul.Scalar")(_arith("mul"))
aten("div.Tensor", "div.Scalar")(_arith("div"))
aten("maximum.default")(_arith("max"))
aten("minimum.default")(_arith("min"))
aten("fmod.Tensor", "fmod.Scalar")(_arith("fmod"))


@aten("div.Tensor_mode", "div.Scalar_mode")
def _div_mode(ctx, a):
    mode, dt = a["rounding_mode"], _out_dtype(ctx)
    x, y = ctx.tensor(a["self"], dt), ctx.tensor(a["other"], dt)
    if mode is None or (mode == "trunc" and not dt.is_float):  # integer div truncates, as C
        return ctx.emit("div", [x, y])[0]
    if not dt.is_float:  # floor: x - mod(x, y) is an exact multiple of y (mod takes y's sign)
        return ctx.emit("div", [ctx.emit("sub", [x, ctx.emit("mod", [x, y])[0]])[0], y])[0]
    q = ctx.emit("div", [x, y])[0]
    if mode == "floor":
        return ctx.emit("floor", [q])[0]
    neg = ctx.emit("lt", [q, ctx.scalar(0.0, dt)])[0]  # trunc
    return ctx.emit("where", [neg, ctx.emit("ceil", [q])[0], ctx.emit("floor", [q])[0]])[0]


@aten("remainder.Tensor", "remainder.Scalar")
def _remainder(ctx, a):
    """Python's modulo (the sign of the divisor): ``mod`` for integers, a - floor(a/b)*b for floats."""
    dt = _out_dtype(ctx)
    x, y = ctx.tensor(a["self"], dt), ctx.tensor(a["other"], dt)
    if not dt.is_float:
        return ctx.emit("mod", [x, y])[0]
    q = ctx.emit("floor", [ctx.emit("div", [x, y])[0]])[0]
    return ctx.emit("sub", [x, ctx.emit("mul", [q, y])[0]])[0]


@aten("pow.Tensor_Scalar")
def _pow_scalar(ctx, a):
    """Common exponents become cheaper exact ops: x*x, sqrt, reciprocal."""
    dt, e = _out_dtype(ctx), a["exponent"]
    x = ctx.tensor(a["self"], dt)
    if e == 1:
        return x
    if e == 2:
        return ctx.emit("mul", [x, x])[0]
    if e == 0.5 and dt.is_float:
        return ctx.emit("sqrt", [x])[0]
    if e == -1 and dt.is_float:
        return ctx.emit("reciprocal", [x])[0]
    return ctx.emit("pow", [x, ctx.scalar(e, dt)])[0]


@aten("pow.Tensor_Tensor", "pow.Scalar")
def _pow(ctx, a):
    dt = _out_dtype(ctx)
    return ctx.emit("pow", [ctx.tensor(a["self"], dt), ctx.tensor(a["exponent"], dt)])[0]


# -- comparisons and logic ----------------------------------------------------------------------------

def _promoted(ctx, *args) -> DType:
    """torch's promoted dtype of tensor/scalar operands (0-d tensors count as scalars)."""
    import torch

    def stand_in(v):
        if isinstance(v, (bool, int, float)):
            return v
        val = ctx.meta(v)
        return torch.empty((1,) * val.dim(), dtype=val.dtype) if val.dim() else torch.empty((), dtype=val.dtype)

    return torch_dtype(torch.result_type(stand_in(args[0]), stand_in(args[1])))


def _compare(kiln_op: str):
    def convert(ctx, a):
        dt = _promoted(ctx, a["self"], a["other"])
        return ctx.emit(kiln_op, [ctx.tensor(a["self"], dt), ctx.tensor(a["other"], dt)])[0]
    return convert


for _name, _op in (("eq", "eq"), ("ne", "ne"), ("lt", "lt"), ("le", "le"), ("gt", "gt"), ("ge", "ge")):
    aten(f"{_name}.Tensor", f"{_name}.Scalar")(_compare(_op))


def _logical(kiln_op: str):
    def convert(ctx, a):
        return ctx.emit(kiln_op, [ctx.tensor(a["self"], DType.bool), ctx.tensor(a["other"], DType.bool)])[0]
    return convert


aten("logical_and.default")(_logical("and"))
aten("logical_or.default")(_logical("or"))
aten("logical_xor.default")(_logical("xor"))


@aten("logical_not.default")
def _logical_not(ctx, a):
    return ctx.emit("not", [ctx.tensor(a["self"], DType.bool)])[0]


@aten("bitwise_not.default")
def _bitwise_not(ctx, a):
    x = ctx.value(a["self"])
    if ctx.type(x).dtype is not DType.bool:
        ctx.unsupported("bitwise_not of integers (only bool tensors are implemented)")
    return ctx.emit("not", [x])[0]


def _bitwise(bool_op: str, int_op: str | None):
    def convert(ctx, a):
        dt = _out_dtype(ctx)
        x, y = ctx.tensor(a["self"], dt), ctx.tensor(a["other"], dt)
        if dt is DType.bool:
            return ctx.emit(bool_op, [x, y])[0]
        if int_op is None:
            ctx.unsupported(f"bitwise {bool_op} of integers")
        return ctx.emit(int_op, [x, y])[0]
    return convert


aten("bitwise_and.Tensor", "bitwise_and.Scalar")(_bitwise("and", "bitand"))
aten("bitwise_or.Tensor", "bitwise_or.Scalar")(_bitwise("or", "bitor"))
aten("bitwise_xor.Tensor", "bitwise_xor.Scalar")(_bitwise("xor", None))


@aten("where.self")
def _where(ctx, a):
    dt = _out_dtype(ctx)
    cond = ctx.tensor(a["condition"], DType.bool)
    return ctx.emit("where", [cond, ctx.tensor(a["self"], dt), ctx.tensor(a["other"], dt)])[0]


# -- copies and dtype conversion -----------------------------------------------------------------------

@aten("_to_copy.default")
def _to_copy(ctx, a):
    """A dtype change is a cast; layout, device and memory format mean nothing here."""
    return ctx.cast(ctx.value(a["self"]), _out_dtype(ctx))


@aten("clone.default", "alias.default", "lift_fresh_copy.default")
def _same(ctx, a):
    return ctx.value(a["self"])


@aten("native_dropout.default")
def _dropout(ctx, a):
    """Inference dropout is the identity; the mask result is not computed."""
    if a["train"] and float(a["p"]) > 0:
        ctx.unsupported("dropout in training mode (train=True): call module.eval(), or pass "
                        "training=self.training to F.dropout")
    return [ctx.value(a["input"]), None]
