"""Converters for BatchNormalization (inference and training mode), InstanceNormalization,
LayerNormalization, GroupNormalization, Softmax, LogSoftmax, and the losses built on them:
NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss."""
from __future__ import annotations

import numpy as np

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.nn import static_shape
from kiln.ir.symbolic import product


def _used_extra_outputs(node) -> list[str]:
    return [n for n in list(node.output)[1:] if n]


# -- BatchNormalization ---------------------------------------------------------------------------

@converter("BatchNormalization", since=1)
def _batch_norm(ctx, node):
    """Inference-mode batch norm as ``x * scale + shift`` per channel.

    scale = gamma / sqrt(var + eps) and shift = beta - mean * scale are folded with numpy
    when the statistics are constants (the usual case), or built from elementwise ops.
    """
    if int(ctx.attr("training_mode", 0)):
        return _batch_norm_training(ctx, node)
    if _used_extra_outputs(node):
        ctx.unsupported(f"outputs {_used_extra_outputs(node)} (running or saved statistics) exist only in "
                 "training; Kiln supports inference mode with the single output Y")
    x = ctx.input(0)
    xs = tuple(ctx.shape(x))
    if len(xs) < 2:
        ctx.fail(f"expected input (N, C, ...) of rank >= 2; got {xs}")
    eps = float(ctx.attr("epsilon", 1e-5))
    # opset < 9 with spatial=0: statistics per (C, D1, ...) element rather than per channel
    per_element = ctx.opset < 9 and not int(ctx.attr("spatial", 1))
    stat_shape = xs[1:] if per_element else (xs[1],) + (1,) * (len(xs) - 2)
    gamma, beta, mean, var = (ctx.input(i) for i in range(1, 5))
    arrays = [ctx.const(n) for n in (gamma, beta, mean, var)]
    dtype = ctx.type(x).dtype.np
    if all(a is not None for a in arrays):
        g, b, m, v = (a.astype(np.float64) for a in arrays)
        scale = g / np.sqrt(v + eps)
        shift = b - m * scale
        scale_n = ctx.add_const(scale.astype(dtype).reshape(stat_shape), "bn_scale")
        shift_n = ctx.add_const(shift.astype(dtype).reshape(stat_shape), "bn_shift")
    else:
        scale_n, shift_n = _scale_shift_ops(ctx, gamma, beta, mean, var, eps, dtype, stat_shape)
    return ctx.emit("batch_norm", [x, scale_n, shift_n], out_names=ctx.outputs())


def _scale_shift_ops(ctx, gamma, beta, mean, var, eps, dtype, stat_shape):
    """scale and shift from run-time statistics (cast to the input dtype first)."""
    def as_x(n):
        if ctx.type(n).dtype.np != dtype:
            n = ctx.emit("cast", [n], {"to": np.dtype(dtype).name})[0]
        return n

    gamma, beta, mean, var = (as_x(n) for n in (gamma, beta, mean, var))
    eps_n = ctx.add_const(np.asarray(eps, dtype=dtype), "bn_eps")
    std = ctx.emit("sqrt", [ctx.emit("add", [var, eps_n])[0]])[0]
    scale = ctx.emit("div", [gamma, std])[0]
    shift = ctx.emit("sub", [beta, ctx.emit("mul", [mean, scale])[0]])[0]
    return (ctx.emit("reshape", [scale], {"shape": tuple(stat_shape)})[0],
            ctx.emit("reshape", [shift], {"shape": tuple(stat_shape)})[0])


def _batch_norm_training(ctx, node):
    """training_mode=1: normalize with the batch's own statistics (mean and population
    variance over every axis but 1); the optional outputs are the running statistics,
    ``given * momentum + batch * (1 - momentum)``, as ONNX's reference computes them."""
    x = ctx.input(0)
    xs = static_shape(ctx, x, "BatchNormalization input")
    gamma, beta, mean, var = (ctx.input(i) for i in range(1, 5))
    eps, momentum = float(ctx.attr("epsilon", 1e-5)), float(ctx.attr("momentum", 0.9))
    stat_shape = (xs[1],) + (1,) * (len(xs) - 2)
    every_but_c = {"axes": (0,) + tuple(range(2, len(xs))), "keepdims": False}
    batch_mean = ctx.emit("reduce_mean", [x], every_but_c)[0]
    centered = ctx.emit("sub", [x, ctx.emit("reshape", [batch_mean], {"shape": stat_shape})[0]])[0]
    batch_var = ctx.emit("reduce_mean", [ctx.emit("mul", [centered, centered])[0]], every_but_c)[0]
    scale_n, shift_n = _scale_shift_ops(ctx, gamma, beta, batch_mean, batch_var, eps,
                                        ctx.type(x).dtype.np, stat_shape)
    outs = ctx.outputs()
    result = ctx.emit("batch_norm", [x, scale_n, shift_n], out_names=outs[:1])
    for k, (given, batch) in enumerate(((mean, batch_mean), (var, batch_var)), start=1):
        if k < len(outs) and outs[k]:
            if ctx.type(batch).dtype != ctx.type(given).dtype:
                batch = ctx.emit("cast", [batch], {"to": ctx.type(given).dtype.value})[0]
            kept = ctx.emit("mul", [given, _scalar(ctx, momentum, given)])[0]
            new = ctx.emit("mul", [batch, _scalar(ctx, 1 - momentum, given)])[0]
            result += ctx.emit("add", [kept, new], out_names=[outs[k]])
        elif k < len(outs):
            result.append("")
    return result


# -- InstanceNormalization / LayerNormalization / GroupNormalization ---------------------------------

@converter("InstanceNormalization", since=1)
def _instance_norm(ctx, node):
    static_shape(ctx, ctx.input(0), "InstanceNormalization input")
    return ctx.emit("instance_norm", [ctx.input(0), ctx.input(1), ctx.input(2)],
                    {"epsilon": float(ctx.attr("epsilon", 1e-5))}, out_names=ctx.outputs())


@converter("LayerNormalization", since=17)
def _layer_norm(ctx, node):
    """Y, and when the node names them, Mean and InvStdDev (computed by ``layer_norm_stats``)."""
    x = ctx.input(0)
    attrs = {"axis": int(ctx.attr("axis", -1)), "epsilon": float(ctx.attr("epsilon", 1e-5))}
    ins = [x, ctx.input(1)] + ([ctx.input(2)] if ctx.has_input(2) else [])
    outs = ctx.outputs()
    result = ctx.emit("layer_norm", ins, attrs, out_names=outs[:1])
    if _used_extra_outputs(node):
        names = [outs[1] if len(outs) > 1 and outs[1] else ctx.fresh("ln_mean"),
                 outs[2] if len(outs) > 2 and outs[2] else ctx.fresh("ln_rstd")]
        result += ctx.emit("layer_norm_stats", [x], attrs, out_names=names)[:len(outs) - 1]
    return result


@converter("GroupNormalization", since=18)
def _group_norm(ctx, node):
    """Normalize (N, G, C/G * spatial) over its last axis with layer_norm, then scale and shift
    per channel (opset 21) or per group (opset 18, repeated over the group's channels)."""
    x = ctx.input(0)
    xs = static_shape(ctx, x, "GroupNormalization input")
    groups, (n, c) = int(ctx.attr("num_groups", 0)), xs[:2]
    if groups < 1 or c % groups:
        ctx.fail(f"num_groups {groups} must divide the {c} channels of input {xs}")
    dtype = ctx.type(x).dtype
    wide = dtype.value == "float16" and int(ctx.attr("stash_type", 1)) == 1
    if wide:  # stash_type=1: statistics in float32
        x = ctx.emit("cast", [x], {"to": "float32"})[0]
    size = (c // groups) * int(np.prod(xs[2:], dtype=np.int64))
    flat = ctx.emit("reshape", [x], {"shape": (n, groups, size)})[0]
    np_dt = ctx.type(x).dtype.np
    unit = [ctx.add_const(np.ones(size, np_dt), "gn_one"), ctx.add_const(np.zeros(size, np_dt), "gn_zero")]
    eps = float(ctx.attr("epsilon", 1e-5))
    normed = ctx.emit("layer_norm", [flat] + unit, {"axis": 2, "epsilon": eps})[0]
    y = ctx.emit("reshape", [normed], {"shape": xs})[0]
    if wide:
        y = ctx.emit("cast", [y], {"to": dtype.value})[0]
    stat_shape = (c,) + (1,) * (len(xs) - 2)
    scale, bias = (_per_channel(ctx, ctx.input(i), groups, c, stat_shape) for i in (1, 2))
    return ctx.emit("add", [ctx.emit("mul", [y, scale])[0], bias], out_names=ctx.outputs())


def _per_channel(ctx, v: str, groups: int, channels: int, stat_shape) -> str:
    """A (C,) or, before opset 21, (G,) parameter as a (C, 1, ...) tensor."""
    if ctx.shape(v) == (groups,) and groups != channels:
        v = ctx.emit("reshape", [v], {"shape": (groups, 1)})[0]
        v = ctx.emit("expand", [v], {"shape": (groups, channels // groups)})[0]
    return ctx.emit("reshape", [v], {"shape": stat_shape})[0]


# -- Softmax / LogSoftmax ---------------------------------------------------------------------------

def _softmax(kiln_op: str):
    def convert(ctx, node):
        """Opset >= 13: over one axis (default -1). Before: the input is coerced to 2-D at
        ``axis`` (default 1) and normalized over the flattened trailing block."""
        x = ctx.input(0)
        xs = tuple(ctx.shape(x))
        rank = len(xs)
        if ctx.opset >= 13:
            return ctx.emit(kiln_op, [x], {"axis": int(ctx.attr("axis", -1))}, out_names=ctx.outputs())
        axis = int(ctx.attr("axis", 1))
        if not -rank <= axis <= rank:
            ctx.fail(f"axis {axis} is out of range for rank {rank}")
        axis = axis % rank if axis < rank else rank
        if axis == rank - 1:
            return ctx.emit(kiln_op, [x], {"axis": axis}, out_names=ctx.outputs())
        outer, inner = product(xs[:axis]), product(xs[axis:])
        flat = ctx.emit("reshape", [x], {"shape": (outer, inner)})[0]
        y = ctx.emit(kiln_op, [flat], {"axis": 1})[0]
        return ctx.emit("reshape", [y], {"shape": xs}, out_names=ctx.outputs())
    return convert


converter("Softmax", since=1)(_softmax("softmax"))
converter("LogSoftmax", since=1)(_softmax("log_softmax"))


# -- NegativeLogLikelihoodLoss / SoftmaxCrossEntropyLoss ---------------------------------------------
# Both decompose into gathers, a mask and reductions (the semantics of ONNX's reference):
#   loss[n, d...] = -x[n, t[n, d...], d...] * w[t]   (0 where t == ignore_index; w = 1 unweighted)
#   "mean" divides the sum by the sum of the weights that were applied (the count when unweighted).

def _scalar(ctx, value, like: str) -> str:
    return ctx.add_const(np.asarray(value, dtype=ctx.type(like).dtype.np), "loss_c")


def _nll(ctx, logp: str, target: str, weight: str | None, out: str) -> str:
    xs, ts = static_shape(ctx, logp, "loss input"), static_shape(ctx, target, "loss target")
    if len(xs) < 2 or ts != xs[:1] + xs[2:]:
        ctx.fail(f"expected input (N, C, d...) and target (N, d...); got {xs} and {ts}")
    reduction, ignore = ctx.attr("reduction", "mean"), ctx.attr("ignore_index")
    if reduction not in ("none", "sum", "mean"):
        ctx.fail(f"reduction {reduction!r} is not none, sum or mean")
    keep = None
    if ignore is not None:  # ignored targets read class 0, then are masked out
        keep = ctx.emit("ne", [target, _scalar(ctx, ignore, target)])[0]
        target = ctx.emit("where", [keep, target, _scalar(ctx, 0, target)])[0]
    index = ctx.emit("reshape", [target], {"shape": (xs[0], 1) + xs[2:]})[0]
    picked = ctx.emit("gather_elements", [logp, index], {"axis": 1})[0]
    loss = ctx.emit("neg", [ctx.emit("reshape", [picked], {"shape": ts})[0]])[0]
    w = ctx.emit("gather", [weight, target], {"axis": 0})[0] if weight else None
    if w:
        loss = ctx.emit("mul", [loss, w])[0]
    if keep:
        zero = _scalar(ctx, 0, logp)
        loss = ctx.emit("where", [keep, loss, zero])[0]
        w = ctx.emit("where", [keep, w or _scalar(ctx, 1, logp), zero])[0]
    if reduction == "none":
        return ctx.emit("identity", [loss], out_names=[out])[0]
    every = {"axes": tuple(range(len(ts))), "keepdims": False}
    if reduction == "sum" or w is None:
        op = "reduce_sum" if reduction == "sum" else "reduce_mean"
        return ctx.emit(op, [loss], every, out_names=[out])[0]
    total = ctx.emit("reduce_sum", [loss], every)[0]
    return ctx.emit("div", [total, ctx.emit("reduce_sum", [w], every)[0]], out_names=[out])[0]


@converter("NegativeLogLikelihoodLoss", since=12)
def _nll_loss(ctx, node):
    weight = ctx.input(2) if ctx.has_input(2) else None
    return [_nll(ctx, ctx.input(0), ctx.input(1), weight, ctx.outputs()[0])]


@converter("SoftmaxCrossEntropyLoss", since=12)
def _softmax_cross_entropy(ctx, node):
    """NLL of log_softmax over the class axis (1); the optional second output is log_softmax."""
    outs = ctx.outputs()
    log_prob_name = [outs[1]] if len(outs) > 1 and outs[1] else None
    logp = ctx.emit("log_softmax", [ctx.input(0)], {"axis": 1}, out_names=log_prob_name)[0]
    weight = ctx.input(2) if ctx.has_input(2) else None
    loss = _nll(ctx, logp, ctx.input(1), weight, outs[0])
    return [loss, logp] if log_prob_name else [loss]
