"""Reductions: reduce_{sum,mean,max,min,prod,l1,l2,sum_square,log_sum,log_sum_exp},
argmax/argmin, and cumsum/cumprod (prefix scans written as masked reductions).

Attributes are normalized by the frontend: ``axes`` is a sorted tuple of non-negative
axes and ``keepdims`` a bool. Empty ``axes`` means "reduce nothing": only the per-element
parts of the op apply (ONNX ``noop_with_empty_axes``: ReduceL2 of x is then |x|).
"""
from __future__ import annotations

from kiln.errors import ShapeError
from kiln.ir.compute import compute, rmax, rmin, rprod, rsum
from kiln.ir.dtype import INDEX, DType
from kiln.ir.expr import Bin, Cast, Const, Select, Un
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, register
from kiln.ir.ops.shape import static_shape, zero

from kiln.ir.ops.nn import widen_sum

_REDUCE = {"sum": rsum, "prod": rprod, "max": rmax, "min": rmin}


# -- index bookkeeping -------------------------------------------------------------------------

def reduced_shape(shape, axes, keepdims: bool) -> tuple:
    if keepdims:
        return tuple(1 if k in axes else n for k, n in enumerate(shape))
    return tuple(n for k, n in enumerate(shape) if k not in axes)


def input_index(rank: int, axes, keepdims: bool, out_idx, red_idx) -> tuple:
    """The input index for output index ``out_idx`` and reduction variables ``red_idx``."""
    ix, o, r = [], 0, 0
    for d in range(rank):
        if d in axes:
            ix.append(red_idx[r])
            r += 1
            o += 1 if keepdims else 0  # a kept size-1 output axis is skipped
        else:
            ix.append(out_idx[o])
            o += 1
    return tuple(ix)


def _check_axes(shape, axes, op: str) -> tuple:
    axes = tuple(int(a) for a in axes)
    if list(axes) != sorted(set(axes)) or any(not 0 <= a < len(shape) for a in axes):
        raise ShapeError(f"{op} axes {axes} must be sorted, distinct and in 0..{len(shape) - 1} "
                         f"for input shape {tuple(shape)}")
    return axes


def _reduce_infer(op: str):
    def infer(ins, attrs):
        shape = static_shape(ins[0], op)
        axes = _check_axes(shape, attrs["axes"], op)
        return [TensorType(reduced_shape(shape, axes, bool(attrs.get("keepdims", True))), ins[0].dtype)]
    return infer


# -- the reduce_* family --------------------------------------------------------------------------
# Each op is pre(x) reduced with `kind`, then post(acc, count).

def _float_fn(name):
    """A unary math function; integer inputs go through float64 and back (as ONNX Runtime)."""
    def f(v):
        if v.dtype.is_float:
            return Un(name, v, v.dtype)
        return Cast(Un(name, Cast(v, DType.float64), DType.float64), v.dtype)
    return f


def _mean(acc, count):
    c = Const(float(count) if acc.dtype.is_float else int(count), acc.dtype)
    return Bin("div", acc, c, acc.dtype)


_ident = lambda v: v  # noqa: E731
_square = lambda v: v * v  # noqa: E731
_abs = lambda v: Un("abs", v, v.dtype)  # noqa: E731

# op -> (reduction kind, pre, post)
REDUCERS = {
    "reduce_sum": ("sum", _ident, None),
    "reduce_mean": ("sum", _ident, _mean),
    "reduce_max": ("max", _ident, None),
    "reduce_min": ("min", _ident, None),
    "reduce_prod": ("prod", _ident, None),
    "reduce_l1": ("sum", _abs, None),
    "reduce_l2": ("sum", _square, lambda acc, n: _float_fn("sqrt")(acc)),
    "reduce_sum_square": ("sum", _square, None),
    "reduce_log_sum": ("sum", _ident, lambda acc, n: _float_fn("log")(acc)),
}


def _make_reduce(op: str):
    kind, pre, post = REDUCERS[op]

    def compute_fn(ins, outs, attrs):
        x, o = ins[0], outs[0]
        axes, keep = tuple(attrs["axes"]), bool(attrs.get("keepdims", True))
        extents = tuple(x.shape[a] for a in axes)
        count = 1
        for n in extents:
            count *= n

        def body(*i):
            if not axes:  # noop_with_empty_axes: only the per-element parts
                acc = pre(x[i])
            else:
                acc = _REDUCE[kind](lambda *r: widen_sum(pre(x[input_index(x.ndim, axes, keep, i, r)])), extents)
            return post(acc, count) if post else acc

        return [compute(o.name, o.shape, body, o.dtype, tag="reduce", hints={"reduce_axes": axes})]

    return compute_fn


for _op in REDUCERS:
    register(_op, FusionKind.REDUCTION, _reduce_infer(_op), _make_reduce(_op))


def _log_sum_exp_compute(ins, outs, attrs):
    """log(sum(exp(x - m))) + m with m = max(x): a max stage, then the stable sum."""
    x, o = ins[0], outs[0]
    axes, keep = tuple(attrs["axes"]), bool(attrs.get("keepdims", True))
    if not axes:
        return [compute(o.name, o.shape, lambda *i: x[i], o.dtype)]  # log(exp(x)) == x
    extents = tuple(x.shape[a] for a in axes)
    hints = {"reduce_axes": axes}
    load = lambda i, r: x[input_index(x.ndim, axes, keep, i, r)]  # noqa: E731
    mx = compute(f"{o.name}__max", o.shape, lambda *i: rmax(lambda *r: load(i, r), extents),
                 o.dtype, tag="reduce", hints=hints, inline=False)
    m = mx.tensor
    ft = o.dtype if o.dtype.is_float else DType.float64  # integers: float64, truncated at the end
    as_ft = lambda v: v if v.dtype == ft else Cast(v, ft)  # noqa: E731

    def body(*i):
        mi = as_ft(m[i])
        total = rsum(lambda *r: Un("exp_nonpos", as_ft(load(i, r)) - mi, ft), extents)
        return Un("log", total, ft) + mi

    return [mx, compute(o.name, o.shape, body, o.dtype, tag="reduce", hints=hints)]


register("reduce_log_sum_exp", FusionKind.REDUCTION, _reduce_infer("reduce_log_sum_exp"),
         _log_sum_exp_compute)


# -- argmax / argmin -----------------------------------------------------------------------------

def _arg_infer(op: str):
    def infer(ins, attrs):
        shape = static_shape(ins[0], op)
        axis = int(attrs["axis"])
        if not 0 <= axis < len(shape) or shape[axis] == 0:
            raise ShapeError(f"{op} axis {axis} must name a non-empty axis of input shape {shape}")
        return [TensorType(reduced_shape(shape, (axis,), bool(attrs.get("keepdims", True))), INDEX)]
    return infer


def _make_arg(op: str):
    extreme = rmax if op == "argmax" else rmin

    def compute_fn(ins, outs, attrs):
        """Stage 1: the extreme value; stage 2: the first (or last) index holding it."""
        x, o = ins[0], outs[0]
        axis, keep = int(attrs["axis"]), bool(attrs.get("keepdims", True))
        n, last = x.shape[axis], bool(attrs.get("select_last_index", False))
        load = lambda i, r: x[input_index(x.ndim, (axis,), keep, i, (r,))]  # noqa: E731
        hints = {"reduce_axes": (axis,)}
        best = compute(f"{o.name}__max", o.shape, lambda *i: extreme(lambda r: load(i, r), n),
                       x.dtype, tag="reduce", hints=hints, inline=False)
        b = best.tensor
        if last:
            fn = lambda *i: rmax(lambda r: Select(load(i, r).eq(b[i]), r, Const(-1, INDEX)), n)  # noqa: E731
        else:
            fn = lambda *i: rmin(lambda r: Select(load(i, r).eq(b[i]), r, Const(n, INDEX)), n)  # noqa: E731
        return [best, compute(o.name, o.shape, fn, INDEX, tag="reduce", hints=hints)]

    return compute_fn


for _op in ("argmax", "argmin"):
    register(_op, FusionKind.REDUCTION, _arg_infer(_op), _make_arg(_op))


# -- cumsum -----------------------------------------------------------------------------------------

def _cumsum_infer(ins, attrs):
    shape = static_shape(ins[0], "cumsum")
    if not 0 <= int(attrs["axis"]) < len(shape):
        raise ShapeError(f"cumsum axis {attrs['axis']} is out of range for input shape {shape}")
    return [ins[0]]


def _make_scan(kind: str):
    def compute_fn(ins, outs, attrs):
        return _scan_compute(kind, ins, outs, attrs)
    return compute_fn


def _scan_compute(kind, ins, outs, attrs):
    """out[.., i, ..] = sum (or product) of x[.., r, ..] over r <= i (r < i exclusive; >= / >
    reversed): a masked reduction whose excluded terms are the identity (0 or 1)."""
    x, o = ins[0], outs[0]
    axis, n = int(attrs["axis"]), x.shape[int(attrs["axis"])]
    exclusive, reverse = bool(attrs.get("exclusive", False)), bool(attrs.get("reverse", False))

    def included(r, i):
        if reverse:
            return r.gt(i) if exclusive else r.ge(i)
        return r.lt(i) if exclusive else r.le(i)

    identity = zero(o.dtype) if kind == "sum" else Const(1.0 if o.dtype.is_float else 1, o.dtype)

    def body(*i):
        return _REDUCE[kind](lambda r: Select(included(r, i[axis]), x[i[:axis] + (r,) + i[axis + 1:]],
                                              identity), n)

    return [compute(o.name, o.shape, body, o.dtype, tag="reduce", hints={"scan_axis": axis})]


register("cumsum", FusionKind.REDUCTION, _cumsum_infer, _make_scan("sum"))
register("cumprod", FusionKind.REDUCTION, _cumsum_infer, _make_scan("prod"))
