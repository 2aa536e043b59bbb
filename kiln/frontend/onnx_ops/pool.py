"""Converters for MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool and LRN."""
from __future__ import annotations

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.nn import batch_shape, ints_attr, resolve_pads, static_shape


def _pool_attrs(ctx, node) -> dict:
    """kernel_shape, strides, dilations, explicit pads and ceil_mode of a windowed pool."""
    x = ctx.input(0)
    xs = batch_shape(ctx, x, f"{node.op_type} input")
    kernel = ctx.attr("kernel_shape")
    if not kernel:
        ctx.fail("the kernel_shape attribute is required")
    kernel = tuple(int(k) for k in kernel)
    nd = len(kernel)
    if len(xs) != nd + 2:
        ctx.fail(f"kernel_shape {kernel} needs an input (N, C, *spatial) of rank {nd + 2}; got {xs}")
    strides, dil = ints_attr(ctx, "strides", nd, 1), ints_attr(ctx, "dilations", nd, 1)
    return {"kernel_shape": kernel, "strides": strides, "dilations": dil,
            "pads": resolve_pads(ctx, xs[2:], kernel, strides, dil),
            "ceil_mode": int(ctx.attr("ceil_mode", 0))}


@converter("MaxPool", since=1)
def _max_pool(ctx, node):
    attrs = _pool_attrs(ctx, node)
    outs = ctx.outputs()
    y = ctx.emit("max_pool", [ctx.input(0)], attrs, out_names=outs[:1])
    if len(outs) > 1 and outs[1]:  # Indices: flat positions of the maxima in the input
        order = int(ctx.attr("storage_order", 0))
        if order and len(attrs["kernel_shape"]) != 2:
            ctx.unsupported("storage_order=1 (column-major Indices) is supported for 2-D pools only")
        y += ctx.emit("max_pool_indices", [ctx.input(0)], {**attrs, "storage_order": order}, out_names=outs[1:2])
    return y


@converter("AveragePool", since=1)
def _avg_pool(ctx, node):
    attrs = _pool_attrs(ctx, node)
    attrs["count_include_pad"] = int(ctx.attr("count_include_pad", 0))
    return ctx.emit("avg_pool", [ctx.input(0)], attrs, out_names=ctx.outputs())


@converter("GlobalAveragePool", since=1)
def _global_avg_pool(ctx, node):
    return ctx.emit("global_avg_pool", [ctx.input(0)], out_names=ctx.outputs())


@converter("GlobalMaxPool", since=1)
def _global_max_pool(ctx, node):
    return ctx.emit("global_max_pool", [ctx.input(0)], out_names=ctx.outputs())


@converter("LRN", since=1)
def _lrn(ctx, node):
    size = ctx.attr("size")
    if size is None:
        ctx.fail("the size attribute is required")
    attrs = {"size": int(size), "alpha": float(ctx.attr("alpha", 1e-4)),
             "beta": float(ctx.attr("beta", 0.75)), "bias": float(ctx.attr("bias", 1.0))}
    return ctx.emit("lrn", [ctx.input(0)], attrs, out_names=ctx.outputs())
