"""Normalizations and Lp-norm ops: rms_norm, lp_norm, mvn, lp_pool and global_lp_pool.

As in ``norm.py``, statistics are intermediate stages (``f"{out}__ms"``, ``__norm``,
``__mean`` ...) that are never inlined: recomputing a reduction per output element would
multiply the work. Half-precision inputs compute their statistics in float32 (ONNX's
``stash_type`` default) and round once at the end.
"""
from __future__ import annotations

from kiln.errors import ShapeError
from kiln.ir.compute import compute, rsum
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const, Select, Un
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, broadcast_index, broadcast_shapes, normalize_axis, register
from kiln.ir.ops.nn import conj, static_shape, zero
from kiln.ir.ops.pool import _pool_infer, pool_axes
from kiln.ir.ops.reduce import input_index


def _c(v, dtype) -> Const:
    return Const(float(v), dtype)


def _require_float(t: TensorType, what: str):
    if not t.dtype.is_float:
        raise ShapeError(f"{what} needs a floating-point input; got {t.dtype}")


def acc_dtype(dt: DType) -> DType:
    """The accumulation type: float32 for float16 data, the data type otherwise."""
    return DType.float32 if dt is DType.float16 else dt


def as_dtype(e, dt: DType):
    return e if e.dtype == dt else Cast(e, dt)


# -- rms_norm: y = x / sqrt(mean(x^2 over axis..) + eps) * scale -----------------------------

def _rms_infer(ins, attrs):
    x = static_shape(ins[0], "rms_norm input")
    _require_float(ins[0], "rms_norm")
    axis = normalize_axis(int(attrs.get("axis", -1)), len(x), "rms_norm axis")
    s = static_shape(ins[1], "rms_norm scale")
    if len(s) > len(x) - axis or broadcast_shapes(x[axis:], s) != x[axis:]:
        raise ShapeError(f"rms_norm scale of shape {s} does not broadcast to the normalized shape {x[axis:]}")
    return [ins[0]]


def _rms_compute(ins, outs, attrs):
    x, scale, o = ins[0], ins[1], outs[0]
    axis = normalize_axis(int(attrs.get("axis", -1)), x.ndim, "rms_norm axis")
    eps = float(attrs.get("epsilon", 1e-5))
    red = x.shape[axis:]
    ft = acc_dtype(x.dtype)
    count = 1
    for n in red:
        count *= n
    lead = x.shape[:axis] or (1,)  # no rank-0 stages

    def stat(*i):
        def sq(*r):
            v = as_dtype(x[tuple(i[:axis]) + r], ft)
            return v * v
        ms = rsum(sq, red) * _c(1.0 / count, ft) + _c(eps, ft)
        return _c(1, ft) / Un("sqrt", ms, ft)

    st = compute(f"{o.name}__rstd", lead, stat, ft, tag="reduce", inline=False)
    r = st.tensor

    def body(*i):
        ri = r[tuple(i[:axis])] if axis else r[0]
        y = as_dtype(x[i], ft) * ri * as_dtype(scale[broadcast_index(scale, i)], ft)
        return as_dtype(y, o.dtype)

    return [st, compute(o.name, o.shape, body, o.dtype)]


register("rms_norm", FusionKind.REDUCTION, _rms_infer, _rms_compute)


# -- lp_norm: x / ||x||_p along one axis (0 where the norm is 0) --------------------------------

def _lp_norm_infer(ins, attrs):
    x = static_shape(ins[0], "lp_norm input")
    _require_float(ins[0], "lp_norm")
    normalize_axis(int(attrs["axis"]), len(x), "lp_norm axis")
    if int(attrs.get("p", 2)) not in (1, 2):
        raise ShapeError(f"lp_norm p must be 1 or 2; got {attrs.get('p')}")
    return [ins[0]]


def _lp_norm_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    axis = normalize_axis(int(attrs["axis"]), x.ndim, "lp_norm axis")
    p, n, dt = int(attrs.get("p", 2)), x.shape[axis], x.dtype
    red_shape = x.shape[:axis] + (1,) + x.shape[axis + 1:]

    def at(i, k):
        return tuple(i[:axis]) + (k,) + tuple(i[axis + 1:])

    def norm_body(*i):
        if p == 1:
            return rsum(lambda k: Un("abs", x[at(i, k)], dt), n)
        return Un("sqrt", rsum(lambda k: x[at(i, k)] * x[at(i, k)], n), dt)

    st = compute(f"{o.name}__norm", red_shape, norm_body, dt, tag="reduce", inline=False)
    nm = st.tensor

    def body(*i):
        v = nm[at(i, 0)]
        return Select(v.eq(zero(dt)), zero(dt), x[i] / v)

    return [st, compute(o.name, o.shape, body, o.dtype)]


register("lp_norm", FusionKind.REDUCTION, _lp_norm_infer, _lp_norm_compute)


# -- mvn: (x - mean) / (sqrt(E[x^2] - mean^2) + 1e-9) over ``axes`` -----------------------------

def _mvn_axes(shape, attrs) -> tuple:
    axes = tuple(sorted({normalize_axis(int(a), len(shape), "mvn axes") for a in attrs["axes"]}))
    if not axes:
        raise ShapeError("mvn needs at least one axis")
    return axes


def _mvn_infer(ins, attrs):
    x = static_shape(ins[0], "mvn input")
    _require_float(ins[0], "mvn")
    _mvn_axes(x, attrs)
    return [ins[0]]


def _mvn_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    axes = _mvn_axes(x.shape, attrs)
    ft = acc_dtype(x.dtype)
    extents = tuple(x.shape[a] for a in axes)
    count = 1
    for n in extents:
        count *= n
    kept = tuple(1 if k in axes else n for k, n in enumerate(x.shape))
    inv = _c(1.0 / count, ft)

    def load(i, r):
        return as_dtype(x[input_index(x.ndim, axes, True, i, r)], ft)

    mean = compute(f"{o.name}__mean", kept, lambda *i: rsum(lambda *r: load(i, r), extents) * inv,
                   ft, tag="reduce", inline=False)
    msq = compute(f"{o.name}__msq", kept,
                  lambda *i: rsum(lambda *r: load(i, r) * load(i, r), extents) * inv,
                  ft, tag="reduce", inline=False)
    m, q = mean.tensor, msq.tensor

    def body(*i):
        s = tuple(0 if k in axes else v for k, v in enumerate(i))
        std = Un("sqrt", q[s] - m[s] * m[s], ft)
        return as_dtype((as_dtype(x[i], ft) - m[s]) / (std + _c(1e-9, ft)), o.dtype)

    return [mean, msq, compute(o.name, o.shape, body, o.dtype)]


register("mvn", FusionKind.REDUCTION, _mvn_infer, _mvn_compute)


# -- lp_pool: (sum over the window of |x|^p) ^ (1/p); padding contributes zeros -----------------

def _pow_abs(v, p: float, dt):
    if p == 1:
        return Un("abs", v, dt)
    if p == 2:
        return v * v
    return Bin("pow", Un("abs", v, dt), _c(p, dt), dt)


def _root(v, p: float, dt):
    if p == 1:
        return v
    if p == 2:
        return Un("sqrt", v, dt)
    return Bin("pow", v, _c(1.0 / p, dt), dt)


def _lp_pool_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    lead, kernel, axes = pool_axes(x, o, attrs, "lp_pool")
    p, dt = float(attrs.get("p", 2)), x.dtype

    def body(*i):
        def tap(*k):
            pos = [ax.pos(i[lead + j], k[j]) for j, ax in enumerate(axes)]
            cond = conj([c for ax, q in zip(axes, pos) for c in ax.bounds_conds(q, 0, ax.n)])
            v = _pow_abs(x[tuple(i[:lead]) + tuple(pos)], p, dt)
            return v if cond is None else Select(cond, v, zero(dt))
        return _root(rsum(tap, kernel), p, dt)

    return [compute(o.name, o.shape, body, o.dtype, tag="pool")]


register("lp_pool", FusionKind.OUT_FUSABLE, _pool_infer("lp_pool"), _lp_pool_compute)


def _global_lp_infer(ins, attrs):
    x = static_shape(ins[0], "global_lp_pool input")
    if len(x) < 3:
        raise ShapeError(f"global_lp_pool expects input (N, C, *spatial) of rank >= 3; got {x}")
    _require_float(ins[0], "global_lp_pool")
    return [TensorType(x[:2] + (1,) * (len(x) - 2), ins[0].dtype)]


def _global_lp_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    p, dt = float(attrs.get("p", 2)), x.dtype

    def body(n, c, *_):
        return _root(rsum(lambda *r: _pow_abs(x[(n, c) + r], p, dt), x.shape[2:]), p, dt)

    return [compute(o.name, o.shape, body, o.dtype, tag="reduce")]


register("global_lp_pool", FusionKind.REDUCTION, _global_lp_infer, _global_lp_compute)
