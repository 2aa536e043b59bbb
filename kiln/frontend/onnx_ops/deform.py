"""Converter for DeformConv (opset 19): a 2-d deformable convolution from ops Kiln has.

Each kernel tap of each output position samples the input at its regular position plus a
learned offset, bilinearly with zeros outside (ONNX's reference samples through GridSample
with align_corners, as torchvision's deform_conv2d does). So, per offset group:

1. the sampling points: a constant grid of the taps' regular positions ([K, oH, oW, 2],
   K = kH * kW, in GridSample's (x, y) order) plus the offsets, scaled to [-1, 1];
2. ``grid_sample`` of the group's channels at those points: [N, Cg, K * oH, oW] -- the
   deformed im2col columns -- times the mask;
3. the convolution itself: per group of ``group``, the weights [ocg, Cg * K] times the
   columns [N, Cg * K, oH * oW] (one ``matmul``), plus the bias.
"""
from __future__ import annotations

import numpy as np

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.nn import ints_attr, static_shape
from kiln.frontend.onnx_ops.shape import take_range


def _concat(ctx, parts: list[str], axis: int) -> str:
    return parts[0] if len(parts) == 1 else ctx.emit("concat", parts, {"axis": axis})[0]


@converter("DeformConv", since=19)
def _deform_conv(ctx, node):
    x, w, offset = ctx.input(0), ctx.input(1), ctx.input(2)
    xs, ws = static_shape(ctx, x, "DeformConv input"), static_shape(ctx, w, "DeformConv weights")
    if len(xs) != 4:
        ctx.unsupported(f"DeformConv on {len(xs) - 2}-d inputs (2-d is supported)")
    n, c, h, wd = xs
    oc, cpg, kh, kw = ws
    group, ogroups = int(ctx.attr("group", 1)), int(ctx.attr("offset_group", 1))
    strides, dil = ints_attr(ctx, "strides", 2, 1), ints_attr(ctx, "dilations", 2, 1)
    pads = ints_attr(ctx, "pads", 4, 0)
    oh = (h + pads[0] + pads[2] - (kh - 1) * dil[0] - 1) // strides[0] + 1
    ow = (wd + pads[1] + pads[3] - (kw - 1) * dil[1] - 1) // strides[1] + 1
    k = kh * kw
    if cpg * group != c or oc % group or c % ogroups:
        ctx.fail(f"weights {ws} with group {group} and offset_group {ogroups} do not fit {c} input channels")
    if tuple(ctx.shape(offset)) != (n, ogroups * k * 2, oh, ow):
        ctx.fail(f"offset has shape {tuple(ctx.shape(offset))}; expected {(n, ogroups * k * 2, oh, ow)}")
    if h < 2 or wd < 2:
        ctx.unsupported("DeformConv on an input of height or width 1 (the sampling grid divides by size - 1)")
    mask = ctx.input(4) if ctx.has_input(4) else None
    if mask is not None and tuple(ctx.shape(mask)) != (n, ogroups * k, oh, ow):
        ctx.fail(f"mask has shape {tuple(ctx.shape(mask))}; expected {(n, ogroups * k, oh, ow)}")
    dtype = ctx.type(x).dtype.np

    # the taps' regular positions, (x, y) order: [K, oH, oW, 2]
    ty, tx = np.meshgrid(np.arange(kh) * dil[0], np.arange(kw) * dil[1], indexing="ij")
    py = np.arange(oh) * strides[0] - pads[0]
    px = np.arange(ow) * strides[1] - pads[1]
    full = (k, oh, ow)
    base = np.stack([np.broadcast_to(tx.reshape(k, 1, 1) + px.reshape(1, 1, ow), full),
                     np.broadcast_to(ty.reshape(k, 1, 1) + py.reshape(1, oh, 1), full)], axis=-1)
    scale = np.array([2.0 / (wd - 1), 2.0 / (h - 1)])  # pixel -> [-1, 1] with align_corners
    norm_base = ctx.add_const((base * scale - 1.0).astype(dtype), "deform_base")
    norm_scale = ctx.add_const(scale.astype(dtype), "deform_scale")

    # offsets [N, og*K*2, oH, oW] -> [N, og, K, oH, oW, 2] in (x, y) order, scaled
    off = ctx.emit("reshape", [offset], {"shape": (n, ogroups, k, 2, oh, ow)})[0]
    off = ctx.emit("transpose", [off], {"perm": (0, 1, 2, 4, 5, 3)})[0]
    off = ctx.emit("gather", [off, ctx.add_const(np.array([1, 0], np.int64), "deform_xy")], {"axis": 5})[0]
    grid = ctx.emit("add", [ctx.emit("mul", [off, norm_scale])[0], norm_base])[0]

    cols = []
    cg = c // ogroups
    for g in range(ogroups):
        grid_g = take_range(ctx, grid, 1, g, g + 1)
        grid_g = ctx.emit("reshape", [grid_g], {"shape": (n, k * oh, ow, 2)})[0]
        sampled = ctx.emit("grid_sample", [take_range(ctx, x, 1, g * cg, (g + 1) * cg), grid_g],
                           {"mode": "linear", "padding_mode": "zeros", "align_corners": 1})[0]
        sampled = ctx.emit("reshape", [sampled], {"shape": (n, cg, k, oh, ow)})[0]
        if mask is not None:
            m = take_range(ctx, mask, 1, g * k, (g + 1) * k)
            m = ctx.emit("reshape", [m], {"shape": (n, 1, k, oh, ow)})[0]
            sampled = ctx.emit("mul", [sampled, m])[0]
        cols.append(sampled)
    columns = _concat(ctx, cols, 1)  # [N, C, K, oH, oW]

    outs = []
    ocg = oc // group
    for gi in range(group):
        part = take_range(ctx, columns, 1, gi * cpg, (gi + 1) * cpg)
        part = ctx.emit("reshape", [part], {"shape": (n, cpg * k, oh * ow)})[0]
        wg = take_range(ctx, w, 0, gi * ocg, (gi + 1) * ocg)
        wg = ctx.emit("reshape", [wg], {"shape": (ocg, cpg * k)})[0]
        outs.append(ctx.emit("matmul", [wg, part])[0])  # [N, ocg, oH*oW]
    y = _concat(ctx, outs, 1)
    if ctx.has_input(3):
        y = ctx.emit("add", [y, ctx.emit("reshape", [ctx.input(3)], {"shape": (oc, 1)})[0]])[0]
    return ctx.emit("reshape", [y], {"shape": (n, oc, oh, ow)}, out_names=ctx.outputs())
