"""Converters for RMSNormalization, LpNormalization, MeanVarianceNormalization, LpPool and
GlobalLpPool."""
from __future__ import annotations

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.nn import static_shape
from kiln.frontend.onnx_ops.pool import _pool_attrs


@converter("RMSNormalization", since=23)
def _rms_norm(ctx, node):
    x = ctx.input(0)
    static_shape(ctx, x, "RMSNormalization input")
    if int(ctx.attr("stash_type", 1)) != 1:
        ctx.unsupported("stash_type other than 1 (float32 statistics) is not implemented")
    attrs = {"axis": int(ctx.attr("axis", -1)), "epsilon": float(ctx.attr("epsilon", 1e-5))}
    return ctx.emit("rms_norm", [x, ctx.input(1)], attrs, out_names=ctx.outputs())


@converter("LpNormalization", since=1)
def _lp_norm(ctx, node):
    x = ctx.input(0)
    static_shape(ctx, x, "LpNormalization input")
    p = int(ctx.attr("p", 2))
    if p not in (1, 2):
        ctx.fail(f"p must be 1 or 2; got {p}")
    return ctx.emit("lp_norm", [x], {"axis": int(ctx.attr("axis", -1)), "p": p}, out_names=ctx.outputs())


@converter("MeanVarianceNormalization", since=9)
def _mvn(ctx, node):
    x = ctx.input(0)
    static_shape(ctx, x, "MeanVarianceNormalization input")
    axes = tuple(int(a) for a in (ctx.attr("axes") or (0, 2, 3)))
    return ctx.emit("mvn", [x], {"axes": axes}, out_names=ctx.outputs())


@converter("LpPool", since=1)
def _lp_pool(ctx, node):
    attrs = _pool_attrs(ctx, node)
    attrs["p"] = float(ctx.attr("p", 2))
    if attrs["p"] <= 0:
        ctx.fail(f"p must be positive; got {attrs['p']}")
    return ctx.emit("lp_pool", [ctx.input(0)], attrs, out_names=ctx.outputs())


@converter("GlobalLpPool", since=1)
def _global_lp_pool(ctx, node):
    p = float(ctx.attr("p", 2))
    if p <= 0:
        ctx.fail(f"p must be positive; got {p}")
    return ctx.emit("global_lp_pool", [ctx.input(0)], {"p": p}, out_names=ctx.outputs())
