"""resize: nearest, N-d linear and 2-D-style cubic interpolation with a static output shape.

The frontend resolves ONNX's scales/sizes (and Upsample's scales) into two attributes:
``sizes`` (the output shape) and ``scales`` (one float per axis, used by the coordinate
transform). Each output coordinate maps back to an input coordinate in float32 arithmetic,
in the same operation order as ONNX Runtime, so nearest-neighbour picks agree exactly:

    half_pixel            (x + 0.5) / scale - 0.5
    half_pixel_symmetric  offset + (x + 0.5) / scale - 0.5
    pytorch_half_pixel    (x + 0.5) / scale - 0.5   if out > 1 else 0
    tf_half_pixel_for_nn  (x + 0.5) / scale
    align_corners         x * (in - 1) / (in * scale - 1)  if in * scale != 1 else 0
    tf_crop_and_resize    start * (in - 1) + x * (end - start) * (in - 1) / (in * scale - 1),
                          with the crop box (start, end) from ``roi``; outside the input the
                          output is ``extrapolation_value``
    asymmetric            x / scale

Axes with scale 1 are read directly, without a coordinate transform or interpolation terms.
"""
from __future__ import annotations

import numpy as np

from kiln.errors import ShapeError
from kiln.ir.compute import compute
from kiln.ir.dtype import INDEX
from kiln.ir.expr import Bin, Cast, Const, Expr, Select, Un, idx
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, register
from kiln.ir.ops.nn import conj, static_shape

MODES = ("nearest", "linear", "cubic")
COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "tf_half_pixel_for_nn",
               "align_corners", "asymmetric", "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


def _resize_infer(ins, attrs):
    x = static_shape(ins[0], "resize input")
    sizes = tuple(int(s) for s in attrs["sizes"])
    scales = tuple(float(s) for s in attrs["scales"])
    if len(sizes) != len(x) or len(scales) != len(x) or min(sizes, default=1) < 1:
        raise ShapeError(f"resize of input {x} got sizes {sizes} and scales {scales}; expected one "
                         "positive size and one scale per axis")
    for key, allowed in (("mode", MODES), ("coordinate_transformation_mode", COORD_MODES),
                         ("nearest_mode", NEAREST_MODES)):
        if key in attrs and attrs[key] not in allowed:
            raise ShapeError(f"resize {key} {attrs[key]!r} is not supported; expected one of {allowed}")
    if attrs.get("mode", "nearest") != "nearest" and not ins[0].dtype.is_float:
        raise ShapeError(f"resize mode {attrs['mode']!r} needs a floating-point input; got {ins[0].dtype}")
    return [TensorType(sizes, ins[0].dtype)]


def _f32(v) -> float:
    return float(np.float32(v))


def _orig_coord(x: Expr, mode: str, scale: float, n_in: int, n_out: int, dt, roi=(0.0, 1.0)) -> Expr:
    """The input coordinate (float) that output index ``x`` maps to on one axis."""
    c = lambda v: Const(_f32(v), dt)  # noqa: E731
    xf = Cast(x, dt)
    if mode == "tf_crop_and_resize":  # the crop box ``roi`` = (start, end), in [0, 1] units
        start, end = roi
        length = n_in * _f32(scale)
        length = n_out if abs(length - n_out) < 1e-4 else length
        if length == 1:
            return c((end - start) * (n_in - 1) / 2 + start * (n_in - 1))
        return c(start * (n_in - 1)) + xf * c((end - start) * (n_in - 1) / (length - 1))
    if mode == "asymmetric":
        return xf / c(scale)
    if mode == "align_corners":
        # ONNX's reference divides by (in * scale - 1), the unfloored output length, which is
        # n_out whenever the size was given (or the scale divides evenly)
        length = n_in * _f32(scale)
        length = n_out if abs(length - n_out) < 1e-4 else length
        return c(0) if length == 1 else xf * c(n_in - 1) / c(length - 1)
    if mode == "pytorch_half_pixel" and n_out == 1:
        return c(0)
    if mode == "tf_half_pixel_for_nn":
        return (xf + c(0.5)) / c(scale)
    centered = (xf + c(0.5)) / c(scale) - c(0.5)
    if mode == "half_pixel_symmetric":
        f32 = np.float32
        adjustment = f32(n_out) / (f32(scale) * f32(n_in))
        off = f32(n_in) / f32(2) * (f32(1) - adjustment)
        return c(off) + (xf + c(0.5)) / c(scale) - c(0.5)
    return centered


def _is_identity(mode: str, scale: float, n_in: int, n_out: int, roi=(0.0, 1.0)) -> bool:
    """A scale of 1 maps each index to itself (ONNX Runtime skips the transform there too)."""
    return n_in == n_out and _f32(scale) == 1.0 and (mode != "tf_crop_and_resize" or tuple(roi) == (0.0, 1.0))


def _clamp_index(e: Expr, n: int) -> Expr:
    return Bin("min", Bin("max", e, idx(0), INDEX), idx(n - 1), INDEX)


def _nearest_index(orig: Expr, nearest: str, downsample: bool, n_in: int, dt) -> Expr:
    half = Const(0.5, dt)
    if nearest == "round_prefer_floor":
        r = Un("ceil", orig - half, dt)
    elif nearest == "round_prefer_ceil":
        r = Un("floor", orig + half, dt)
    elif nearest == "floor":
        r = Un("floor", orig, dt)
    elif nearest == "ceil" or (nearest == "simple" and downsample):
        r = Un("ceil", orig, dt)
    else:  # simple upsampling: truncation toward zero, as ONNX Runtime's legacy Upsample
        r = orig
    return _clamp_index(Cast(r, INDEX), n_in)


def _axis_plans(x, o, attrs):
    """Per axis: None (identity) or the float expression builder of its source coordinate."""
    mode = attrs.get("coordinate_transformation_mode", "half_pixel")
    scales = [float(s) for s in attrs["scales"]]
    rank = len(scales)
    roi = [float(v) for v in attrs.get("roi") or [0.0] * rank + [1.0] * rank]
    plans = []
    for k, (n_in, n_out, s) in enumerate(zip(x.shape, o.shape, scales)):
        box = (roi[k], roi[k + rank])
        if _is_identity(mode, s, n_in, n_out, box):
            plans.append(None)
        else:
            plans.append((mode, s, n_in, n_out, box))
    return plans


def _nearest_body(x, o, attrs):
    nearest = attrs.get("nearest_mode", "round_prefer_floor")
    plans = _axis_plans(x, o, attrs)

    def body(*i):
        src = []
        for ax, plan in zip(i, plans):
            if plan is None:
                src.append(ax)
                continue
            mode, s, n_in, n_out, box = plan
            orig = _orig_coord(ax, mode, s, n_in, n_out, x.dtype, box)
            src.append(_nearest_index(orig, nearest, s < 1, n_in, x.dtype))
        return x[tuple(src)]
    return body


def _linear_body(x, o, attrs):
    """Multilinear: clamp the source coordinate to [0, n-1]; blend the two neighbours."""
    plans = _axis_plans(x, o, attrs)
    dt = x.dtype

    def body(*i):
        # per axis: list of (index expr, weight expr or None)
        taps = []
        for ax, plan in zip(i, plans):
            if plan is None:
                taps.append([(ax, None)])
                continue
            mode, s, n_in, n_out, box = plan
            orig = _orig_coord(ax, mode, s, n_in, n_out, dt, box)
            xc = Bin("min", Bin("max", orig, Const(0.0, dt), dt), Const(float(n_in - 1), dt), dt)
            i0 = Cast(xc, INDEX)  # xc >= 0: truncation is floor
            i1 = Bin("min", i0 + 1, idx(n_in - 1), INDEX)
            frac = xc - Cast(i0, dt)
            taps.append([(i0, Const(1.0, dt) - frac), (i1, frac)])
        return _blend(x, taps)
    return body


def _blend(x, taps) -> Expr:
    """Sum over every combination of per-axis taps of (product of weights) * x[indices]."""
    combos = [((), None)]
    for axis_taps in taps:
        nxt = []
        for ix, w in combos:
            for t, tw in axis_taps:
                weight = w if tw is None else (tw if w is None else w * tw)
                nxt.append((ix + (t,), weight))
        combos = nxt
    total = None
    for ix, w in combos:
        term = x[ix] if w is None else w * x[ix]
        total = term if total is None else total + term
    return total


def _cubic_coeffs(r: Expr, a: float, dt):
    """Keys cubic convolution weights of the 4 neighbours at offsets -1, 0, 1, 2."""
    c = lambda v: Const(float(v), dt)  # noqa: E731

    def far(t):  # |t| in [1, 2)
        return ((c(a) * t - c(5 * a)) * t + c(8 * a)) * t - c(4 * a)

    def near(t):  # |t| in [0, 1)
        return (c(a + 2) * t - c(a + 3)) * t * t + c(1)

    one_m = c(1) - r
    return [far(r + c(1)), near(r), near(one_m), far(c(2) - r)]


def _cubic_body(x, o, attrs):
    """Bicubic (any number of axes); edge neighbours clamp, or drop with ``exclude_outside``."""
    plans = _axis_plans(x, o, attrs)
    a = float(attrs.get("cubic_coeff_a", -0.75))
    exclude = bool(attrs.get("exclude_outside", 0))
    dt = x.dtype

    def body(*i):
        taps = []
        for ax, plan in zip(i, plans):
            if plan is None:
                taps.append([(ax, None)])
                continue
            mode, s, n_in, n_out, box = plan
            orig = _orig_coord(ax, mode, s, n_in, n_out, dt, box)
            base = Cast(Un("floor", orig, dt), INDEX)
            r = orig - Cast(base, dt)
            ws = _cubic_coeffs(r, a, dt)
            pos = [base + (k - 1) for k in range(4)]
            if exclude:
                inside = [conj([p.ge(0), p.lt(n_in)]) for p in pos]
                ws = [Select(cond, w, Const(0.0, dt)) for cond, w in zip(inside, ws)]
                norm = ws[0] + ws[1] + ws[2] + ws[3]
                ws = [w / norm for w in ws]
            taps.append([(_clamp_index(p, n_in), w) for p, w in zip(pos, ws)])
        return _blend(x, taps)
    return body


def _with_extrapolation(body, x, o, attrs):
    """tf_crop_and_resize: an output whose source lies outside the input on any axis is
    ``extrapolation_value`` (as TensorFlow's CropAndResize)."""
    plans = _axis_plans(x, o, attrs)
    value = Const(float(attrs.get("extrapolation_value", 0.0)), x.dtype)

    def wrapped(*i):
        outside = []
        for ax, plan in zip(i, plans):
            if plan is not None:
                orig = _orig_coord(ax, *plan[:4], x.dtype, plan[4])
                outside += [orig.lt(Const(0.0, x.dtype)), orig.gt(Const(float(plan[2] - 1), x.dtype))]
        if not outside:
            return body(*i)
        cond = outside[0]
        for c in outside[1:]:
            cond = cond.lor(c)
        return Select(cond, value, body(*i))
    return wrapped


def _resize_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    mode = attrs.get("mode", "nearest")
    make = {"nearest": _nearest_body, "linear": _linear_body, "cubic": _cubic_body}[mode]
    body = make(x, o, attrs)
    if attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        body = _with_extrapolation(body, x, o, attrs)
    return [compute(o.name, o.shape, body, o.dtype)]


register("resize", FusionKind.INJECTIVE, _resize_infer, _resize_compute)
