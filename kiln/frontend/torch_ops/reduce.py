"""Converters for reduction aten ops: sum, mean, amax/amin, max/min (with indices), argmax/argmin,
prod, any, var and var_mean, cumsum and linalg_vector_norm. (torch decomposes the rest before
Kiln sees them: all into not-any-not, std into sqrt(var), logsumexp into max/exp/sum/log.)

``dim=None`` or ``[]`` reduces every axis, as torch does. Sums and products of integer or
bool tensors accumulate in the dtype torch chose for the result (int64), so the input is
cast to the recorded result dtype first.
"""
from __future__ import annotations

import math

import numpy as np

from kiln.frontend.onnx_ops.shape import emit_reshape
from kiln.frontend.torch_ops import aten, dims, prod
from kiln.ir.dtype import DType


def _reduce(ctx, kiln_op: str, x: str, dim, keepdim) -> str:
    axes = dims(dim, len(ctx.shape(x)))
    return ctx.emit(kiln_op, [x], {"axes": axes, "keepdims": bool(keepdim)})[0]


def _simple(kiln_op: str, cast_to_result: bool):
    def convert(ctx, a):
        x = ctx.value(a["self"])
        if cast_to_result:
            x = ctx.cast(x, ctx.out_type().dtype)
        return _reduce(ctx, kiln_op, x, a.get("dim"), a.get("keepdim", False))
    return convert


aten("sum.dim_IntList")(_simple("reduce_sum", True))
aten("mean.dim", "mean.default")(_simple("reduce_mean", True))
aten("prod.dim_int", "prod.default")(_simple("reduce_prod", True))
aten("amax.default", "max.default")(_simple("reduce_max", False))
aten("amin.default", "min.default")(_simple("reduce_min", False))


def _arg(ctx, kiln_op: str, x: str, dim, keepdim) -> str:
    """argmax/argmin over one axis; ``dim=None`` is over the flattened tensor."""
    shape = tuple(ctx.shape(x))
    if dim is None:
        flat = emit_reshape(ctx, x, (prod(shape),))[0]
        y = ctx.emit(kiln_op, [flat], {"axis": 0, "keepdims": False})[0]
        return emit_reshape(ctx, y, (1,) * len(shape) if keepdim else ())[0]
    axis = dims(dim, len(shape))
    if not axis:  # a 0-d tensor: its one element is at index 0
        return ctx.add_const(np.zeros((), np.int64), "arg")
    return ctx.emit(kiln_op, [x], {"axis": axis[0], "keepdims": bool(keepdim)})[0]


def _argmax(kiln_op: str):
    def convert(ctx, a):
        return _arg(ctx, kiln_op, ctx.value(a["self"]), a["dim"], a["keepdim"])
    return convert


aten("argmax.default")(_argmax("argmax"))
aten("argmin.default")(_argmax("argmin"))


def _max_dim(reduce_op: str, arg_op: str):
    def convert(ctx, a):
        """(values, indices), each computed only when the graph reads it."""
        x, used = ctx.value(a["self"]), ctx.used_results()
        values = _reduce(ctx, reduce_op, x, [a["dim"]], a["keepdim"]) if 0 in used else None
        indices = _arg(ctx, arg_op, x, a["dim"], a["keepdim"]) if 1 in used else None
        return [values, indices]
    return convert


aten("max.dim")(_max_dim("reduce_max", "argmax"))
aten("min.dim")(_max_dim("reduce_min", "argmin"))


@aten("any.default", "any.dim", "any.dims")
def _any(ctx, a):
    """The max of the values as 0/1 integers."""
    x = ctx.cast(ctx.cast(ctx.value(a["self"]), DType.bool), DType.int32)
    y = _reduce(ctx, "reduce_max", x, a.get("dim"), a.get("keepdim", False))
    return ctx.cast(y, DType.bool)


def _variance(ctx, x: str, dim, correction, keepdim) -> tuple[str, str]:
    """(var, mean): sum((x - mean)^2) / (N - correction), two passes as torch computes it."""
    shape = tuple(ctx.shape(x))
    axes = dims(dim, len(shape))
    mean_kept = ctx.emit("reduce_mean", [x], {"axes": axes, "keepdims": True})[0]
    diff = ctx.emit("sub", [x, mean_kept])[0]
    squares = ctx.emit("mul", [diff, diff])[0]
    total = ctx.emit("reduce_sum", [squares], {"axes": axes, "keepdims": bool(keepdim)})[0]
    count = prod(shape[k] for k in axes) - (1.0 if correction is None else float(correction))
    # a division (not a multiplication by 1/count): N - correction <= 0 gives inf/nan, as in torch
    var = ctx.emit("div", [total, ctx.scalar(count, ctx.type(x).dtype)])[0]
    mean = mean_kept if keepdim else emit_reshape(ctx, mean_kept, ctx.shape(var))[0]
    return var, mean


@aten("var.correction")
def _var(ctx, a):
    x = ctx.cast(ctx.value(a["self"]), ctx.out_type().dtype)
    return _variance(ctx, x, a["dim"], a["correction"], a["keepdim"])[0]


@aten("var_mean.correction")
def _var_mean(ctx, a):
    x = ctx.value(a["self"])
    return list(_variance(ctx, x, a["dim"], a["correction"], a["keepdim"]))


@aten("cumsum.default")
def _cumsum(ctx, a):
    x = ctx.cast(ctx.value(a["self"]), ctx.out_type().dtype)
    rank = len(ctx.shape(x))
    if rank == 0:
        return x
    axis = dims(a["dim"], rank)[0]
    return ctx.emit("cumsum", [x], {"axis": axis, "exclusive": False, "reverse": False})[0]


@aten("linalg_vector_norm.default")
def _vector_norm(ctx, a):
    """ord 2 and 1 are kiln reductions; +-inf the max/min of |x|; 0 counts nonzeros; others
    are (sum |x|^p)^(1/p)."""
    x = ctx.cast(ctx.value(a["self"]), ctx.out_type().dtype)
    p, dim, keep = float(a["ord"]), a["dim"], a["keepdim"]
    dt = ctx.type(x).dtype
    if p in (1.0, 2.0):
        return _reduce(ctx, "reduce_l1" if p == 1.0 else "reduce_l2", x, dim, keep)
    if math.isinf(p):
        return _reduce(ctx, "reduce_max" if p > 0 else "reduce_min", ctx.emit("abs", [x])[0], dim, keep)
    if p == 0.0:
        nonzero = ctx.cast(ctx.emit("ne", [x, ctx.scalar(0.0, dt)])[0], dt)
        return _reduce(ctx, "reduce_sum", nonzero, dim, keep)
    powered = ctx.emit("pow", [ctx.emit("abs", [x])[0], ctx.scalar(p, dt)])[0]
    total = _reduce(ctx, "reduce_sum", powered, dim, keep)
    return ctx.emit("pow", [total, ctx.scalar(1.0 / p, dt)])[0]
