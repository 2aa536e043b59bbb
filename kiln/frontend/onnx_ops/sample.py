"""Converters for AffineGrid, GridSample, Col2Im, CenterCropPad, RoiAlign and MaxRoiPool."""
from __future__ import annotations

import numpy as np

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.nn import ints_attr, static_shape
from kiln.ir.ops import normalize_axis

# opset 16 named the 2-d modes; opset 20 generalized them to N-d
_MODE_NAMES = {"bilinear": "linear", "bicubic": "cubic", "nearest": "nearest", "linear": "linear",
               "cubic": "cubic"}


@converter("AffineGrid", since=20)
def _affine_grid(ctx, node):
    size = [int(v) for v in np.asarray(ctx.require_const(1, "size")).reshape(-1)]
    if len(size) not in (4, 5) or min(size) < 1:
        ctx.fail(f"size must be (N, C, H, W) or (N, C, D, H, W) of positive values; got {size}")
    attrs = {"size": size, "align_corners": int(ctx.attr("align_corners", 0))}
    return ctx.emit("affine_grid", [ctx.input(0)], attrs, out_names=ctx.outputs())


@converter("GridSample", since=16)
def _grid_sample(ctx, node):
    x, grid = ctx.input(0), ctx.input(1)
    xs = static_shape(ctx, x, "GridSample input")
    mode = _MODE_NAMES.get(ctx.attr("mode", "linear" if ctx.opset >= 20 else "bilinear"))
    if mode is None:
        ctx.fail(f"mode {ctx.attr('mode')!r} is not one of {', '.join(_MODE_NAMES)}")
    padding = ctx.attr("padding_mode", "zeros")
    if padding not in ("zeros", "border", "reflection"):
        ctx.fail(f"padding_mode {padding!r} is not one of zeros, border, reflection")
    if mode == "cubic" and len(xs) != 4:
        ctx.unsupported(f"cubic mode on {len(xs) - 2}-d inputs (ONNX defines it for 2-d)")
    attrs = {"mode": mode, "padding_mode": padding, "align_corners": int(ctx.attr("align_corners", 0))}
    return ctx.emit("grid_sample", [x, grid], attrs, out_names=ctx.outputs())


@converter("Col2Im", since=18)
def _col2im(ctx, node):
    image = [int(v) for v in ctx.require_const(1, "image_shape").reshape(-1)]
    block = [int(v) for v in ctx.require_const(2, "block_shape").reshape(-1)]
    nd = len(image)
    if len(block) != nd:
        ctx.fail(f"image_shape {image} and block_shape {block} differ in length")
    attrs = {"image_shape": tuple(image), "block_shape": tuple(block),
             "strides": ints_attr(ctx, "strides", nd, 1), "dilations": ints_attr(ctx, "dilations", nd, 1),
             "pads": ints_attr(ctx, "pads", 2 * nd, 0)}
    return ctx.emit("col2im", [ctx.input(0)], attrs, out_names=ctx.outputs())


@converter("CenterCropPad", since=18)
def _center_crop_pad(ctx, node):
    """One ``pad`` op: negative pads crop (the smaller half first), positive ones pad with 0."""
    x = ctx.input(0)
    xs = static_shape(ctx, x, "CenterCropPad input")
    target = [int(v) for v in ctx.require_const(1, "shape").reshape(-1)]
    axes = ctx.attr("axes")
    axes = list(range(len(xs))) if axes is None else [normalize_axis(int(a), len(xs), "axes") for a in axes]
    if len(axes) != len(target):
        ctx.fail(f"shape {target} must give one size per axis of {axes}")
    begin, end = [0] * len(xs), [0] * len(xs)
    for a, want in zip(axes, target):
        diff = want - xs[a]
        small = abs(diff) // 2
        sign = 1 if diff > 0 else -1
        begin[a], end[a] = sign * small, sign * (abs(diff) - small)
    if not any(begin) and not any(end):
        return ctx.emit("identity", [x], out_names=ctx.outputs())
    return ctx.emit("pad", [x], {"pads": tuple(begin + end), "mode": "constant", "value": 0},
                    out_names=ctx.outputs())


def _roi_grids(ctx, rois: np.ndarray, attrs) -> np.ndarray:
    """Per-ROI sampling grid (rows, cols) for sampling_ratio 0: ceil(roi size / output size)."""
    half = attrs["coordinate_transformation_mode"] == "half_pixel"
    r = rois.astype(np.float64) * attrs["spatial_scale"] - (0.5 if half else 0.0)
    size_h, size_w = r[:, 3] - r[:, 1], r[:, 2] - r[:, 0]
    if not half:
        size_h, size_w = np.maximum(size_h, 1.0), np.maximum(size_w, 1.0)
    gh = np.ceil(size_h / attrs["output_height"]).astype(np.int64)
    gw = np.ceil(size_w / attrs["output_width"]).astype(np.int64)
    return np.stack([gh, gw], axis=1)


@converter("RoiAlign", since=10)
def _roi_align(ctx, node):
    x, rois, bidx = ctx.input(0), ctx.input(1), ctx.input(2)
    attrs = {"mode": ctx.attr("mode", "avg"), "output_height": int(ctx.attr("output_height", 1)),
             "output_width": int(ctx.attr("output_width", 1)),
             "spatial_scale": float(ctx.attr("spatial_scale", 1.0)),
             "coordinate_transformation_mode": ctx.attr("coordinate_transformation_mode",
                                                        "half_pixel" if ctx.opset >= 16 else "output_half_pixel")}
    if attrs["mode"] not in ("avg", "max"):
        ctx.fail(f"mode {attrs['mode']!r} is not avg or max")
    if attrs["coordinate_transformation_mode"] not in ("half_pixel", "output_half_pixel"):
        ctx.fail(f"coordinate_transformation_mode {attrs['coordinate_transformation_mode']!r} is not "
                 "half_pixel or output_half_pixel")
    ratio = int(ctx.attr("sampling_ratio", 0))
    ins = [x, rois, bidx]
    if ratio > 0:
        attrs.update(grid_h=ratio, grid_w=ratio)
    else:
        const_rois = ctx.const(rois)
        if const_rois is None:
            ctx.unsupported("sampling_ratio 0 with run-time ROIs: the sampling grid of each ROI "
                            "depends on its size")
        grids = np.maximum(_roi_grids(ctx, const_rois, attrs), 0)
        attrs.update(grid_h=max(int(grids[:, 0].max(initial=1)), 1), grid_w=max(int(grids[:, 1].max(initial=1)), 1))
        ins.append(ctx.add_const(grids, "roi_grid"))
    return ctx.emit("roi_align", ins, attrs, out_names=ctx.outputs())


@converter("MaxRoiPool", since=1)
def _max_roi_pool(ctx, node):
    pooled = ctx.attr("pooled_shape")
    if not pooled or len(pooled) != 2:
        ctx.fail(f"pooled_shape must hold 2 values; got {pooled}")
    attrs = {"pooled_shape": tuple(int(v) for v in pooled), "spatial_scale": float(ctx.attr("spatial_scale", 1.0))}
    return ctx.emit("max_roi_pool", [ctx.input(0), ctx.input(1)], attrs, out_names=ctx.outputs())
