"""Converters for BatchNormalization, InstanceNormalization, LayerNormalization, Softmax, LogSoftmax."""
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
        ctx.fail("training_mode=1 is not supported; Kiln compiles inference graphs only")
    if _used_extra_outputs(node):
        ctx.fail(f"outputs {_used_extra_outputs(node)} (running or saved statistics) exist only in "
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


# -- InstanceNormalization / LayerNormalization ------------------------------------------------------

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
