"""Converters for Resize (opsets 10, 11, 13, 18, 19) and Upsample (opsets 7, 9).

Scales or sizes must be constants: they resolve here to the static output shape
(``sizes``) and per-axis ``scales`` for the coordinate transform, computed in float32 as
ONNX Runtime does (sizes from scales: floor(scale * in); scales from sizes: out / in).
Resize-10 and Upsample use the legacy mapping: asymmetric coordinates and "simple"
nearest rounding (truncate when upsampling, ceil when downsampling). Opset 18's
antialias=1 changes linear and cubic downsampling only: ``resize_antialias`` builds those.
"""
from __future__ import annotations

import numpy as np

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.nn import static_shape
from kiln.frontend.onnx_ops.resize_antialias import downsamples, emit_antialiased_resize

_F32 = np.float32


def _sizes_from_scales(ctx, xs, scales) -> tuple[list[int], list[float]]:
    if len(scales) != len(xs):
        ctx.fail(f"scales {list(scales)} have {len(scales)} values; expected one per input axis ({len(xs)})")
    if min(scales) <= 0:
        ctx.fail(f"scales {list(scales)} must be positive")
    sizes = [int(np.floor(_F32(s) * _F32(n))) for s, n in zip(scales, xs)]
    return sizes, [float(_F32(s)) for s in scales]


def _scales_from_sizes(xs, sizes) -> list[float]:
    return [float(_F32(o) / _F32(n)) for o, n in zip(sizes, xs)]


def _emit_resize(ctx, xs, sizes, scales, mode, coord, nearest, extra=None, antialias=False):
    if min(sizes) < 1:
        ctx.unsupported(f"the output shape {tuple(sizes)} would be empty; input shape {xs}")
    if mode == "bilinear":
        mode = "linear"
    if mode not in ("nearest", "linear", "cubic"):
        ctx.fail(f"mode {mode!r} is not supported; expected nearest, linear or cubic")
    attrs = {"mode": mode, "coordinate_transformation_mode": coord, "nearest_mode": nearest,
             "sizes": tuple(sizes), "scales": tuple(scales)}
    attrs.update(extra or {})
    if antialias and mode == "nearest":
        ctx.fail("antialias=1 applies to the linear and cubic modes; got mode 'nearest' "
                 "(ONNX Runtime and ONNX's reference refuse it too)")
    if antialias and downsamples(scales):
        return emit_antialiased_resize(ctx, xs, sizes, scales, attrs)
    # upsampling keeps the plain filter: antialias=1 changes nothing there
    return ctx.emit("resize", [ctx.input(0)], attrs, out_names=ctx.outputs())


def _const_floats(ctx, i: int, what: str) -> list[float] | None:
    """Input ``i`` as a list, or None when absent or empty (ONNX's "not given")."""
    if not ctx.has_input(i):
        return None
    v = ctx.require_const(i, what)
    return None if v.size == 0 else [x.item() for x in v.reshape(-1)]


# -- Resize ------------------------------------------------------------------------------------------

@converter("Resize", since=10)
def _resize_10(ctx, node):
    xs = static_shape(ctx, ctx.input(0), "Resize input")
    scales = _const_floats(ctx, 1, "scales")
    if scales is None:
        ctx.fail("the scales input is required")
    sizes, scales = _sizes_from_scales(ctx, xs, scales)
    return _emit_resize(ctx, xs, sizes, scales, ctx.attr("mode", "nearest"), "asymmetric", "simple")


def _norm_axes(ctx, xs, axes) -> list[int]:
    rank = len(xs)
    if axes is None:
        return list(range(rank))
    out = []
    for a in axes:
        if not -rank <= int(a) < rank:
            ctx.fail(f"axis {a} is out of range for rank {rank}")
        out.append(int(a) % rank)
    if len(set(out)) != len(out):
        ctx.fail(f"axes {list(axes)} repeat an axis")
    return out


def _apply_axes(ctx, xs, values, axes, fill):
    """Expand per-``axes`` values to one per input axis (opset 18's ``axes`` attribute)."""
    if len(values) != len(axes):
        ctx.fail(f"{len(values)} scales/sizes for axes {axes}; expected one per axis")
    full = [fill(n) for n in xs]
    for a, v in zip(axes, values):
        full[a] = v
    return full


def _keep_aspect_ratio(xs, sizes, axes, policy):
    """not_larger / not_smaller: one scale for all resized axes, as the ONNX spec defines."""
    ratios = [_F32(o) / _F32(xs[a]) for o, a in zip(sizes, axes)]
    s = min(ratios) if policy == "not_larger" else max(ratios)
    out, scales = list(xs), [1.0] * len(xs)
    for a in axes:
        out[a] = int(np.floor(s * _F32(xs[a]) + _F32(0.5)))
        scales[a] = float(s)
    return out, scales


@converter("Resize", since=11)
def _resize_11(ctx, node):
    xs = static_shape(ctx, ctx.input(0), "Resize input")
    coord = ctx.attr("coordinate_transformation_mode", "half_pixel")
    axes = _norm_axes(ctx, xs, ctx.attr("axes") if ctx.opset >= 18 else None)
    policy = ctx.attr("keep_aspect_ratio_policy", "stretch") if ctx.opset >= 18 else "stretch"
    scales, sizes = _const_floats(ctx, 2, "scales"), _const_floats(ctx, 3, "sizes")
    if (scales is None) == (sizes is None):
        ctx.fail("exactly one of the scales and sizes inputs must be given (and non-empty)")
    if sizes is not None and policy != "stretch":
        if len(sizes) != len(axes):
            ctx.fail(f"{len(sizes)} sizes for axes {axes}; expected one per axis")
        out, scl = _keep_aspect_ratio(xs, [int(v) for v in sizes], axes, policy)
    elif sizes is not None:
        out = _apply_axes(ctx, xs, [int(v) for v in sizes], axes, lambda n: n)
        scl = _scales_from_sizes(xs, out)
    else:
        out, scl = _sizes_from_scales(ctx, xs, _apply_axes(ctx, xs, scales, axes, lambda n: 1.0))
    extra = {"cubic_coeff_a": float(ctx.attr("cubic_coeff_a", -0.75)),
             "exclude_outside": int(ctx.attr("exclude_outside", 0))}
    if coord == "tf_crop_and_resize":
        extra["roi"] = _crop_box(ctx, xs, axes)
        extra["extrapolation_value"] = float(ctx.attr("extrapolation_value", 0.0))
    antialias = bool(int(ctx.attr("antialias", 0))) if ctx.opset >= 18 else False
    return _emit_resize(ctx, xs, out, scl, ctx.attr("mode", "nearest"), coord,
                        ctx.attr("nearest_mode", "round_prefer_floor"), extra, antialias)


def _crop_box(ctx, xs, axes) -> tuple[float, ...]:
    """tf_crop_and_resize's ``roi`` for every axis: (starts..., ends...), 0 and 1 elsewhere."""
    roi = _const_floats(ctx, 1, "roi")
    if roi is None or len(roi) != 2 * len(axes):
        ctx.fail(f"tf_crop_and_resize needs roi with 2 values per resized axis ({2 * len(axes)}); got {roi}")
    rank = len(xs)
    box = [0.0] * rank + [1.0] * rank
    for k, a in enumerate(axes):
        box[a], box[a + rank] = float(roi[k]), float(roi[k + len(axes)])
    return tuple(box)


# -- Upsample ----------------------------------------------------------------------------------------

@converter("Upsample", since=7)
def _upsample(ctx, node):
    xs = static_shape(ctx, ctx.input(0), "Upsample input")
    if ctx.opset >= 9:
        scales = _const_floats(ctx, 1, "scales")
    else:
        scales = ctx.attr("scales")
    if not scales:
        ctx.fail("scales are required")
    sizes, scales = _sizes_from_scales(ctx, xs, [float(s) for s in scales])
    return _emit_resize(ctx, xs, sizes, scales, ctx.attr("mode", "nearest"), "asymmetric", "simple")
