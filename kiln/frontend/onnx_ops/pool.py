"""Converters for MaxPool, MaxUnpool, AveragePool, GlobalAveragePool, GlobalMaxPool and LRN."""
from __future__ import annotations

import math

import numpy as np

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


@converter("MaxUnpool", since=9)
def _max_unpool(ctx, node):
    """Zeros with X's values written at the flat positions I names (MaxPool's Indices): one
    1-d ``scatter_elements`` into zeros (a later index wins a repeated position).

    The output has the unpooled shape (N, C, (in - 1) * stride + kernel - pad_begin - pad_end
    ...) or, given, ``output_shape``; I indexes that output, as in ONNX Runtime and PyTorch
    (``max_unpool2d(..., output_size=)``): after a MaxPool of an odd-sized input, unpooling to
    the input's shape puts every value back where MaxPool found it. ONNX's reference and its
    node case ``test_maxunpool_export_with_output_shape`` instead place the unpooled tensor at
    the corner of a larger output_shape (onnx/onnx#2398; ONNX Runtime skips that case), which
    the conformance report lists as disputed.

    Kiln's scatter is computed per output element over all updates: O(output x input)
    work, fine for small tensors, slow for a large unpool.
    """
    x, ind = ctx.input(0), ctx.input(1)
    xs = static_shape(ctx, x, "MaxUnpool input")
    kernel = tuple(int(k) for k in ctx.attr("kernel_shape") or ())
    if not kernel:
        ctx.fail("the kernel_shape attribute is required")
    nd = len(kernel)
    if len(xs) != nd + 2:
        ctx.fail(f"kernel_shape {kernel} needs an input (N, C, *spatial) of rank {nd + 2}; got shape {xs}")
    if tuple(ctx.shape(ind)) != xs:
        ctx.fail(f"indices I have shape {tuple(ctx.shape(ind))}; expected X's shape {xs}")
    strides, pads = ints_attr(ctx, "strides", nd, 1), ints_attr(ctx, "pads", 2 * nd, 0)
    unpooled = xs[:2] + tuple((n - 1) * s + k - pads[d] - pads[d + nd]
                              for d, (n, s, k) in enumerate(zip(xs[2:], strides, kernel)))
    if min(unpooled) < 1:
        ctx.fail(f"the unpooled shape {unpooled} (from input {xs}, kernel_shape {kernel}, strides {strides}, "
                 f"pads {pads}) is empty; expected every dim >= 1")
    shape = unpooled
    if ctx.has_input(2):
        shape = tuple(int(v) for v in ctx.require_const(2, "output_shape").reshape(-1))
        if len(shape) != len(xs) or shape[:2] != xs[:2] or min(shape) < 1:
            ctx.fail(f"output_shape {shape} does not fit X {xs}; expected {len(xs)} dims, N and C as X's "
                     f"({xs[0]}, {xs[1]}), every dim >= 1 (the unpooled shape is {unpooled})")
    dtype = ctx.type(x).dtype.np
    zeros = ctx.add_const(np.zeros(math.prod(shape), dtype), "unpool_zeros")
    flat_x = ctx.emit("reshape", [x], {"shape": (math.prod(xs),)})[0]
    flat_i = ctx.emit("reshape", [ind], {"shape": (math.prod(xs),)})[0]
    y = ctx.emit("scatter_elements", [zeros, flat_i, flat_x], {"axis": 0, "reduction": "none"})[0]
    return ctx.emit("reshape", [y], {"shape": shape}, out_names=ctx.outputs())


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
