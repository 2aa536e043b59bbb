"""Normalization ops: batch_norm (inference), instance_norm, layer_norm, softmax, log_softmax.

The reductions these ops need are intermediate stages of their own, named
``f"{out}__mean"``, ``f"{out}__rstd"``, ``f"{out}__max"``, ``f"{out}__sum"``, tagged
``"reduce"`` and never inlined (recomputing a reduction per output element would multiply
the work). Variances are computed in two passes, from the mean, as ONNX Runtime does.
"""
from __future__ import annotations

from kiln.errors import ShapeError
from kiln.ir.compute import compute, rmax, rsum
from kiln.ir.expr import Cast, Const, Un
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, broadcast_index, broadcast_shapes, normalize_axis, register
from kiln.ir.ops.nn import static_shape, widen_sum


def _c(v, dtype) -> Const:
    return Const(float(v), dtype)


def _rsqrt(e, dtype):
    return _c(1, dtype) / Un("sqrt", e, dtype)


def _require_float(t: TensorType, what: str):
    if not t.dtype.is_float:
        raise ShapeError(f"{what} needs a floating-point input; got {t.dtype}")


# -- batch_norm: y = x * scale + shift, per channel ---------------------------------------------

def _batch_norm_infer(ins, attrs):
    """Inputs x, scale, shift; scale and shift broadcast to x (the frontend shapes them (C, 1, ...))."""
    x = tuple(ins[0].shape)  # symbolic dims allowed
    _require_float(ins[0], "batch_norm")
    for t, what in ((ins[1], "scale"), (ins[2], "shift")):
        s = static_shape(t, f"batch_norm {what}")
        if len(s) > len(x) or broadcast_shapes(x, s) != x:
            raise ShapeError(f"batch_norm {what} of shape {s} does not broadcast to the input {x}")
    return [ins[0]]


def _batch_norm_compute(ins, outs, attrs):
    x, scale, shift = ins
    o = outs[0]
    return [compute(o.name, o.shape,
                    lambda *i: x[i] * scale[broadcast_index(scale, i)] + shift[broadcast_index(shift, i)],
                    o.dtype)]


register("batch_norm", FusionKind.BROADCAST, _batch_norm_infer, _batch_norm_compute)


# -- normalization over trailing axes (shared by instance_norm and layer_norm) -------------------

def _moment_stages(o, x, axis: int, eps: float, keepdims: bool = False):
    """Mean and reciprocal standard deviation of ``x`` over axes ``axis..``, as two stages.

    The stage shape is ``x.shape[:axis]`` (or with trailing 1s when ``keepdims``).
    Returns ``(mean_stage, rstd_stage, index_fn)`` where ``index_fn(i)`` maps a full
    index of ``x`` to the stages' index.
    """
    lead, red = x.shape[:axis], x.shape[axis:]
    keepdims = keepdims or axis == 0  # no rank-0 stages
    ones = (1,) * len(red) if keepdims else ()
    count = 1
    for n in red:
        count = count * n
    # 1/count as a literal, or computed at run time when a normalized dim is symbolic
    inv = _c(1.0 / count, x.dtype) if isinstance(count, int) else _c(1.0, x.dtype) / Cast(count, x.dtype)

    def stat_index(i):
        return tuple(i[:axis]) + (0,) * len(ones)

    mean = compute(f"{o.name}__mean", lead + ones,
                   lambda *i: rsum(lambda *r: x[tuple(i[:axis]) + r], red) * inv,
                   x.dtype, tag="reduce", inline=False)
    m = mean.tensor

    def var_body(*i):
        def sq(*r):
            d = x[tuple(i[:axis]) + r] - m[stat_index(i)]
            return d * d
        return _rsqrt(rsum(sq, red) * inv + _c(eps, x.dtype), x.dtype)

    rstd = compute(f"{o.name}__rstd", lead + ones, var_body, x.dtype, tag="reduce", inline=False)
    return mean, rstd, stat_index


def _instance_norm_infer(ins, attrs):
    x = static_shape(ins[0], "instance_norm input")
    _require_float(ins[0], "instance_norm")
    if len(x) < 3:
        raise ShapeError(f"instance_norm expects input (N, C, *spatial) of rank >= 3; got {x}")
    for t, what in ((ins[1], "scale"), (ins[2], "bias")):
        if static_shape(t, f"instance_norm {what}") != (x[1],):
            raise ShapeError(f"instance_norm {what} has shape {tuple(t.shape)}; expected ({x[1]},) "
                             "(one per channel)")
    return [ins[0]]


def _instance_norm_compute(ins, outs, attrs):
    x, scale, bias = ins
    o = outs[0]
    mean, rstd, sidx = _moment_stages(o, x, 2, float(attrs.get("epsilon", 1e-5)))
    m, r = mean.tensor, rstd.tensor

    def body(*i):
        return (x[i] - m[sidx(i)]) * r[sidx(i)] * scale[i[1]] + bias[i[1]]

    return [mean, rstd, compute(o.name, o.shape, body, o.dtype)]


register("instance_norm", FusionKind.REDUCTION, _instance_norm_infer, _instance_norm_compute)


def _layer_norm_axis(x, attrs) -> int:
    return normalize_axis(int(attrs.get("axis", -1)), len(x), "layer_norm axis")


def _layer_norm_infer(ins, attrs):
    x = tuple(ins[0].shape)  # symbolic leading dims allowed
    _require_float(ins[0], "layer_norm")
    axis = _layer_norm_axis(x, attrs)
    for t, what in zip(ins[1:], ("scale", "bias")):
        s = static_shape(t, f"layer_norm {what}")
        if len(s) > len(x) - axis or broadcast_shapes(x[axis:], s) != x[axis:]:
            raise ShapeError(f"layer_norm {what} of shape {s} does not broadcast to the normalized "
                             f"shape {x[axis:]}")
    return [ins[0]]


def _layer_norm_compute(ins, outs, attrs):
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    o = outs[0]
    axis = _layer_norm_axis(x.shape, attrs)
    mean, rstd, sidx = _moment_stages(o, x, axis, float(attrs.get("epsilon", 1e-5)))
    m, r = mean.tensor, rstd.tensor

    def body(*i):
        y = (x[i] - m[sidx(i)]) * r[sidx(i)] * scale[broadcast_index(scale, i)]
        return y if bias is None else y + bias[broadcast_index(bias, i)]

    return [mean, rstd, compute(o.name, o.shape, body, o.dtype)]


register("layer_norm", FusionKind.REDUCTION, _layer_norm_infer, _layer_norm_compute)


def _layer_norm_stats_infer(ins, attrs):
    """ONNX LayerNormalization's optional outputs Mean and InvStdDev: shape x[:axis] + 1s."""
    x = tuple(ins[0].shape)
    _require_float(ins[0], "layer_norm_stats")
    axis = _layer_norm_axis(x, attrs)
    t = TensorType(x[:axis] + (1,) * (len(x) - axis), ins[0].dtype)
    return [t, t]


def _layer_norm_stats_compute(ins, outs, attrs):
    x = ins[0]
    axis = _layer_norm_axis(x.shape, attrs)
    mean, rstd, _ = _moment_stages(outs[0], x, axis, float(attrs.get("epsilon", 1e-5)), keepdims=True)
    m, r = mean.tensor, rstd.tensor
    return [mean, rstd,
            compute(outs[0].name, outs[0].shape, lambda *i: m[i], outs[0].dtype),
            compute(outs[1].name, outs[1].shape, lambda *i: r[i], outs[1].dtype)]


register("layer_norm_stats", FusionKind.REDUCTION, _layer_norm_stats_infer, _layer_norm_stats_compute,
         num_outputs=2)


# -- softmax and log_softmax over one axis -----------------------------------------------------

def _softmax_infer(ins, attrs):
    x = tuple(ins[0].shape)  # symbolic dims allowed, the axis too
    _require_float(ins[0], "softmax")
    normalize_axis(int(attrs.get("axis", -1)), len(x), "softmax axis")
    return [ins[0]]


def _make_softmax(log: bool):
    def compute_fn(ins, outs, attrs):
        """Stable: m = max(x), s = sum(exp(x - m)), y = exp(x - m) * (1 / s)  (or x - m - log s).

        x - m <= 0: the exp is ``exp_nonpos`` (no overflow path; see kiln.ir.expr.UNARY_OPS)."""
        x, o = ins[0], outs[0]
        axis = normalize_axis(int(attrs.get("axis", -1)), x.ndim, "softmax axis")
        n = x.shape[axis]
        red_shape = x.shape[:axis] + (1,) + x.shape[axis + 1:]  # keepdims: never rank 0
        dt = x.dtype

        def at(i, k):  # index of x from a reduced index and a position on the axis
            return tuple(i[:axis]) + (k,) + tuple(i[axis + 1:])

        def reduced(i):  # index of the reduced stages from an index of x
            return tuple(i[:axis]) + (0,) + tuple(i[axis + 1:])

        mx = compute(f"{o.name}__max", red_shape, lambda *i: rmax(lambda k: x[at(i, k)], n),
                     dt, tag="reduce", inline=False)
        m = mx.tensor
        sm = compute(f"{o.name}__sum", red_shape,
                     lambda *i: rsum(lambda k: widen_sum(Un("exp_nonpos", x[at(i, k)] - m[i], dt)), n),
                     dt, tag="reduce", inline=False)
        s = sm.tensor
        if log:
            body = lambda *i: x[i] - m[reduced(i)] - Un("log", s[reduced(i)], dt)  # noqa: E731
        elif dt.itemsize >= 4:  # times 1 / s (s >= 1: no overflow), computed once per row: a
            # division per element cost 5 % of a [12, 128, 128] softmax on a Zen 4 (ONNX Runtime
            # multiplies too). fp16 and bf16 keep the division: 1 / s rounded to 8 or 11 bits
            # moves results by an ulp of theirs (ONNX's fp16 attention cases notice).
            body = lambda *i: Un("exp_nonpos", x[i] - m[reduced(i)], dt) * (Const(1.0, dt) / s[reduced(i)])  # noqa: E731
        else:
            body = lambda *i: Un("exp_nonpos", x[i] - m[reduced(i)], dt) / s[reduced(i)]  # noqa: E731
        return [mx, sm, compute(o.name, o.shape, body, o.dtype)]
    return compute_fn


register("softmax", FusionKind.REDUCTION, _softmax_infer, _make_softmax(False))
register("log_softmax", FusionKind.REDUCTION, _softmax_infer, _make_softmax(True))
