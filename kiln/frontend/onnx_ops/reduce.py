"""Converters for reductions: Reduce*, ArgMax, ArgMin, CumSum and CumProd.

``axes`` is an attribute up to opset 12 (ReduceSum) or 17 (the others) and an optional
input after. Absent or empty axes reduce everything, unless ``noop_with_empty_axes`` is
set: then only the per-element part of the op applies (kiln ops take ``axes=()``).
"""
from __future__ import annotations

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.shape import axes_arg, ints, static_shape
from kiln.ir.ops import normalize_axis

# ONNX op -> (kiln op, first opset taking axes as an input)
_REDUCE = {
    "ReduceSum": ("reduce_sum", 13),
    "ReduceMean": ("reduce_mean", 18),
    "ReduceMax": ("reduce_max", 18),
    "ReduceMin": ("reduce_min", 18),
    "ReduceProd": ("reduce_prod", 18),
    "ReduceL1": ("reduce_l1", 18),
    "ReduceL2": ("reduce_l2", 18),
    "ReduceSumSquare": ("reduce_sum_square", 18),
    "ReduceLogSum": ("reduce_log_sum", 18),
    "ReduceLogSumExp": ("reduce_log_sum_exp", 18),
}


def _reduce(kiln_op: str, axes_input_since: int):
    def convert(ctx, node):
        x = ctx.input(0)
        rank = len(static_shape(ctx, x))
        axes = axes_arg(ctx, rank, 1, axes_input_since)
        noop = ctx.opset >= axes_input_since and bool(ctx.attr("noop_with_empty_axes", 0))
        if not axes:
            axes = [] if noop else list(range(rank))
        if len(set(axes)) != len(axes):
            ctx.fail(f"axes {axes} repeat an axis")
        attrs = {"axes": tuple(sorted(axes)), "keepdims": bool(ctx.attr("keepdims", 1))}
        return ctx.emit(kiln_op, [x], attrs, out_names=ctx.outputs())
    return convert


for _onnx, (_kiln, _since) in _REDUCE.items():
    converter(_onnx, since=1)(_reduce(_kiln, _since))


def _arg(kiln_op: str):
    def convert(ctx, node):
        x = ctx.input(0)
        attrs = {
            "axis": normalize_axis(int(ctx.attr("axis", 0)), len(static_shape(ctx, x))),
            "keepdims": bool(ctx.attr("keepdims", 1)),
            "select_last_index": bool(ctx.attr("select_last_index", 0)),
        }
        return ctx.emit(kiln_op, [x], attrs, out_names=ctx.outputs())
    return convert


converter("ArgMax", since=1)(_arg("argmax"))
converter("ArgMin", since=1)(_arg("argmin"))


def _scan(kiln_op: str):
    def convert(ctx, node):
        x = ctx.input(0)
        axis = normalize_axis(ints(ctx.require_const(1, "axis"))[0], len(static_shape(ctx, x)))
        attrs = {"axis": axis, "exclusive": bool(ctx.attr("exclusive", 0)),
                 "reverse": bool(ctx.attr("reverse", 0))}
        return ctx.emit(kiln_op, [x], attrs, out_names=ctx.outputs())
    return convert


converter("CumSum", since=11)(_scan("cumsum"))
converter("CumProd", since=26)(_scan("cumprod"))
