"""Resize with antialias=1 (opset 18+): linear and cubic filters stretched when downsampling.

When an axis shrinks by ``scale < 1``, ONNX stretches the interpolation filter by
``1 / scale``: the tent (linear) or Keys cubic kernel ``f`` is evaluated at
``(j - x) * scale`` for every input index ``j`` within ``support / scale`` of the source
coordinate ``x``, and the weights are divided by their sum, so more input pixels contribute
to each output pixel. Upsampling axes keep the plain filter (scale is taken as 1 there).

Shapes and scales are static, so the weights of one axis form a constant dense matrix
``W [out, in]`` (computed here in float64, stored in the input's dtype) and resizing that
axis is one ``matmul``. The filter is separable: the node is one matmul per axis whose size
or scale changes, in axis order, as ONNX's reference resizes one axis at a time.

Edges, as ONNX's reference handles them: a tap left or right of the input reads the edge
pixel (its weight adds to the edge column); with ``exclude_outside=1`` such taps are dropped
and the remaining weights renormalized. ``tf_crop_and_resize`` outputs whose source lies
outside the input are ``extrapolation_value``: a zero row of ``W`` plus a constant added
after the matmul.

Source coordinates follow the table in ``kiln/ir/ops/resize.py`` (the plain resize op),
evaluated here in float64 on the same float32 scales. Each weight depends on ``j - x``
alone; ONNX's reference also picks its tap window from ``x`` plus a padding offset, which
float rounding can move by one tap when ``x`` is within an ulp of an integer (seen with
half_pixel_symmetric): there Kiln agrees with ONNX Runtime.
"""
from __future__ import annotations

import math

import numpy as np

from kiln.ir.ops.resize import COORD_MODES

_F32 = np.float32
# how far (in input pixels, before stretching) each filter reaches from its centre
_SUPPORT = {"linear": 1.0, "cubic": 2.0}


def downsamples(scales) -> bool:
    """Whether any axis shrinks, the only case where antialiasing changes the result."""
    return any(_F32(s) < 1 for s in scales)


def _is_identity(n_in: int, n_out: int, scale: float, roi=(0.0, 1.0)) -> bool:
    return n_in == n_out and _F32(scale) == 1 and tuple(roi) == (0.0, 1.0)


def _filter(mode: str, cubic_a: float):
    """The unstretched kernel ``f(t)``, ``t`` a distance in input pixels (an array)."""
    if mode == "linear":
        return lambda t: np.clip(1.0 - np.abs(t), 0.0, None)
    a = cubic_a

    def keys_cubic(t):
        t = np.abs(t)
        near = ((a + 2) * t - (a + 3)) * t * t + 1  # |t| <= 1
        far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a  # 1 < |t| < 2
        return np.where(t <= 1, near, np.where(t < 2, far, 0.0))
    return keys_cubic


def source_coords(coord: str, scale: float, n_in: int, n_out: int, roi=(0.0, 1.0)) -> np.ndarray:
    """The input coordinate (float64) of each output index along one axis."""
    x = np.arange(n_out, dtype=np.float64)
    scale = float(_F32(scale))
    if coord in ("align_corners", "tf_crop_and_resize"):
        # ONNX's reference divides by the unfloored output length in * scale - 1, which is
        # n_out whenever the size was given (or the scale divides evenly)
        length = n_in * scale
        length = n_out if abs(length - n_out) < 1e-4 else length
        start, end = roi if coord == "tf_crop_and_resize" else (0.0, 1.0)
        if length == 1:
            return np.full(n_out, (end - start) * (n_in - 1) / 2 + start * (n_in - 1)
                           if coord == "tf_crop_and_resize" else 0.0)
        return start * (n_in - 1) + x * (end - start) * (n_in - 1) / (length - 1)
    if coord == "asymmetric":
        return x / scale
    if coord == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    if coord == "pytorch_half_pixel" and n_out == 1:
        return np.zeros(1)
    if coord == "half_pixel_symmetric":
        adjustment = n_out / (scale * n_in)
        return n_in / 2 * (1 - adjustment) + (x + 0.5) / scale - 0.5
    return (x + 0.5) / scale - 0.5  # half_pixel, pytorch_half_pixel


def axis_weights(n_in: int, n_out: int, scale: float, mode: str, coord: str, cubic_a: float = -0.75,
                 exclude_outside: bool = False, roi=(0.0, 1.0)) -> tuple[np.ndarray, np.ndarray | None]:
    """``(W [n_out, n_in], outside)``: the antialiased resize of one axis is ``W @ x``;
    ``outside`` marks the outputs that are ``extrapolation_value`` (tf_crop_and_resize only,
    else None)."""
    x = source_coords(coord, scale, n_in, n_out, roi)
    stretch = min(float(_F32(scale)), 1.0)  # the filter only widens when downsampling
    reach = _SUPPORT[mode] / stretch
    # every tap with a non-zero weight lies strictly within ``reach`` of x
    first = np.floor(x - reach).astype(np.int64)
    taps = first[:, None] + np.arange(int(math.ceil(2 * reach)) + 2)[None, :]  # [n_out, k]
    w = _filter(mode, cubic_a)((taps - x[:, None]) * stretch)
    w /= w.sum(axis=1, keepdims=True)
    if exclude_outside:
        w = np.where((taps >= 0) & (taps < n_in), w, 0.0)
        total = w.sum(axis=1, keepdims=True)
        w /= np.where(total == 0, 1.0, total)
    weights = np.zeros((n_out, n_in))
    rows = np.broadcast_to(np.arange(n_out)[:, None], taps.shape)
    np.add.at(weights, (rows, np.clip(taps, 0, n_in - 1)), w)  # edge taps read the edge pixel
    outside = None
    if coord == "tf_crop_and_resize":
        outside = (x < 0) | (x > n_in - 1)
        weights[outside] = 0.0
    return weights, outside


def emit_antialiased_resize(ctx, xs, sizes, scales, attrs: dict) -> list[str]:
    """The node as one matmul with a constant weight matrix per resized axis.

    ``attrs`` are the plain resize op's attributes (mode, coordinate_transformation_mode,
    cubic_coeff_a, exclude_outside, and roi/extrapolation_value for tf_crop_and_resize)."""
    x = ctx.input(0)
    dtype = ctx.type(x).dtype
    if not dtype.is_float:
        ctx.unsupported(f"antialiased resize of a {dtype} input (floating-point inputs are supported)")
    mode, coord = attrs["mode"], attrs["coordinate_transformation_mode"]
    if coord not in COORD_MODES:
        ctx.fail(f"coordinate_transformation_mode {coord!r} is not one of {', '.join(COORD_MODES)}")
    rank = len(xs)
    roi = attrs.get("roi", (0.0,) * rank + (1.0,) * rank)
    cur = list(xs)
    for axis in range(rank):
        axis_roi = (roi[axis], roi[axis + rank])
        if _is_identity(xs[axis], sizes[axis], scales[axis], axis_roi):
            continue
        w, outside = axis_weights(xs[axis], sizes[axis], scales[axis], mode, coord,
                                  float(attrs.get("cubic_coeff_a", -0.75)),
                                  bool(attrs.get("exclude_outside", 0)), axis_roi)
        x = _resize_axis(ctx, x, cur, axis, w.astype(dtype.np))
        cur[axis] = sizes[axis]
        if outside is not None and outside.any():
            fill = np.where(outside, float(attrs.get("extrapolation_value", 0.0)), 0.0).astype(dtype.np)
            shape = [1] * rank
            shape[axis] = sizes[axis]
            x = ctx.emit("add", [x, ctx.add_const(fill.reshape(shape), "resize_extrapolation")])[0]
    return ctx.emit("reshape", [x], {"shape": tuple(sizes)}, out_names=ctx.outputs())


def _resize_axis(ctx, x: str, shape: list[int], axis: int, w: np.ndarray) -> str:
    """``x`` (of ``shape``) with ``axis`` contracted against ``w [out, in]``, as ``shape``
    with that axis resized.

    The axes before and after ``axis`` flatten to P and S without moving data, so one
    matmul does it: ``x [P, in] @ w.T`` for the last axis, else ``w @ x [P, in, S]``."""
    before, after = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
    n_in, n_out = w.shape[1], w.shape[0]
    if after == 1:
        flat = ctx.emit("reshape", [x], {"shape": (before, n_in)})[0]
        y = ctx.emit("matmul", [flat, ctx.add_const(np.ascontiguousarray(w.T), "resize_weights")])[0]
    else:
        flat = ctx.emit("reshape", [x], {"shape": (before, n_in, after) if before > 1 else (n_in, after)})[0]
        y = ctx.emit("matmul", [ctx.add_const(w, "resize_weights"), flat])[0]
    out_shape = list(shape)
    out_shape[axis] = n_out
    return ctx.emit("reshape", [y], {"shape": tuple(out_shape)})[0]
