"""Converters for ScatterElements, Scatter (its opset 9-10 name), ScatterND and TensorScatter."""
from __future__ import annotations

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.nn import static_shape
from kiln.ir.ops import normalize_axis

_REDUCTIONS = ("none", "add", "mul", "max", "min")


def _reduction(ctx) -> str:
    r = ctx.attr("reduction", "none") or "none"
    if r not in _REDUCTIONS:
        ctx.fail(f"reduction {r!r} is not one of {', '.join(_REDUCTIONS)}")
    return r


@converter("ScatterElements", since=11)
@converter("Scatter", since=9)
def _scatter_elements(ctx, node):
    data = ctx.input(0)
    rank = len(static_shape(ctx, data, f"{node.op_type} data"))
    attrs = {"axis": normalize_axis(int(ctx.attr("axis", 0)), rank, "axis"), "reduction": _reduction(ctx)}
    return ctx.emit("scatter_elements", [data, ctx.input(1), ctx.input(2)], attrs, out_names=ctx.outputs())


@converter("ScatterND", since=11)
def _scatter_nd(ctx, node):
    data = ctx.input(0)
    static_shape(ctx, data, "ScatterND data")
    return ctx.emit("scatter_nd", [data, ctx.input(1), ctx.input(2)], {"reduction": _reduction(ctx)},
                    out_names=ctx.outputs())


@converter("TensorScatter", since=24)
def _tensor_scatter(ctx, node):
    past = ctx.input(0)
    rank = len(static_shape(ctx, past, "TensorScatter past_cache"))
    mode = ctx.attr("mode", "linear") or "linear"
    if mode not in ("linear", "circular"):
        ctx.fail(f"mode {mode!r} is not 'linear' or 'circular'")
    attrs = {"axis": normalize_axis(int(ctx.attr("axis", -2)), rank, "axis"), "mode": mode}
    ins = [past, ctx.input(1)] + ([ctx.input(2)] if len(node.input) > 2 and node.input[2] else [])
    return ctx.emit("tensor_scatter", ins, attrs, out_names=ctx.outputs())
