"""Sampling ops: grid_sample (N-d; nearest, linear, cubic; zeros/border/reflection padding),
affine_grid, col2im, roi_align and max_roi_pool.

grid_sample is one stage: for each output point, the grid gives a normalized coordinate per
spatial dim (in reverse dim order, x first); it is denormalized, folded back into range
(border/reflection), then the taps of the interpolation kernel are read with the padding
mode applied to each tap. Zero-padded taps are guarded by a Select so that no load leaves
the input. The arithmetic follows the ONNX reference (and PyTorch's grid_sampler).
"""
from __future__ import annotations

import itertools

from kiln.errors import ShapeError
from kiln.ir.compute import compute, rmax, rsum
from kiln.ir.dtype import INDEX, DType
from kiln.ir.expr import Bin, Cast, Const, Select, Un, idx
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, register
from kiln.ir.ops.nn import conj, static_shape, zero

MODES = ("nearest", "linear", "cubic")
PADDINGS = ("zeros", "border", "reflection")
CUBIC_A = -0.75


def _as(e, dt: DType):
    return e if e.dtype == dt else Cast(e, dt)


def _f(v, dt) -> Const:
    return Const(float(v), dt)


def _grid_infer(ins, attrs):
    x = static_shape(ins[0], "grid_sample input")
    g = static_shape(ins[1], "grid_sample grid")
    nd = len(x) - 2
    if nd < 1 or len(g) != nd + 2 or g[0] != x[0] or g[-1] != nd:
        raise ShapeError(f"grid_sample needs input (N, C, *spatial) and grid (N, *out_spatial, {nd}); "
                         f"got input {x} and grid {g}")
    if attrs["mode"] not in MODES or attrs["padding_mode"] not in PADDINGS:
        raise ShapeError(f"grid_sample mode {attrs['mode']!r} / padding_mode {attrs['padding_mode']!r} "
                         f"must be one of {MODES} / {PADDINGS}")
    if attrs["mode"] == "cubic" and nd != 2:
        raise ShapeError(f"grid_sample cubic mode is defined for 2-d inputs; got {nd} spatial dims")
    if not ins[0].dtype.is_float or ins[1].dtype != ins[0].dtype:
        raise ShapeError(f"grid_sample needs floating-point input and grid of one dtype; got "
                         f"{ins[0].dtype} and {ins[1].dtype}")
    return [TensorType(x[:2] + g[1:-1], ins[0].dtype)]


def _is_odd(n, dt):
    """``n`` (a non-negative whole float) is odd."""
    return (n - _f(2, dt) * Un("floor", n * _f(0.5, dt), dt)).ne(_f(0, dt))


def reflect(x, lo: float, hi: float, dt):
    """Fold ``x`` into [lo, hi] by reflecting at the borders (repeatedly), as the reference."""
    rng = hi - lo
    if rng <= 0:
        return _f(lo, dt)

    below_n = Un("floor", (_f(lo, dt) - x) / _f(rng, dt), dt)
    below_r = (_f(lo, dt) - x) - below_n * _f(rng, dt)
    below = Select(_is_odd(below_n, dt), _f(hi, dt) - below_r, _f(lo, dt) + below_r)
    above_n = Un("floor", (x - _f(hi, dt)) / _f(rng, dt), dt)
    above_r = (x - _f(hi, dt)) - above_n * _f(rng, dt)
    above = Select(_is_odd(above_n, dt), _f(lo, dt) + above_r, _f(hi, dt) - above_r)
    return Select(x.lt(_f(lo, dt)), below, Select(x.gt(_f(hi, dt)), above, x))


def _cubic_coeffs(t, dt):
    a = CUBIC_A
    t1, u, u1 = t + _f(1, dt), _f(1, dt) - t, _f(2, dt) - t
    c0 = ((_f(a, dt) * t1 - _f(5 * a, dt)) * t1 + _f(8 * a, dt)) * t1 - _f(4 * a, dt)
    c1 = ((_f(a + 2, dt) * t - _f(a + 3, dt)) * t * t) + _f(1, dt)
    c2 = ((_f(a + 2, dt) * u - _f(a + 3, dt)) * u * u) + _f(1, dt)
    c3 = ((_f(a, dt) * u1 - _f(5 * a, dt)) * u1 + _f(8 * a, dt)) * u1 - _f(4 * a, dt)
    return [c0, c1, c2, c3]


class _Dim:
    """One spatial dim of the input: its size and the range that counts as inside."""

    def __init__(self, size: int, align: bool):
        self.n = size
        self.lo, self.hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
        self.align = align

    def denormalize(self, g, dt):
        if self.align:
            return (g + _f(1, dt)) * _f((self.n - 1) / 2.0, dt)
        return ((g + _f(1, dt)) * _f(self.n, dt) - _f(1, dt)) * _f(0.5, dt)

    def fold(self, x, padding: str, dt):
        """The continuous coordinate brought into range (border/reflection)."""
        if padding == "border":
            return Bin("min", Bin("max", x, _f(0, dt), dt), _f(self.n - 1, dt), dt)
        if padding == "reflection":
            return reflect(x, self.lo, self.hi, dt)
        return x

    def tap(self, i, padding: str, dt):
        """(index, in-range condition or None) of integer tap ``i`` (an INDEX expr)."""
        last = idx(self.n - 1)
        if padding == "zeros":
            return i, i.ge(0).land(i.lt(self.n))
        if padding == "reflection":
            i = Cast(reflect(Cast(i, dt), self.lo, self.hi, dt), INDEX)
        return Bin("min", Bin("max", i, idx(0), INDEX), last, INDEX), None


def _grid_compute(ins, outs, attrs):
    x, grid, o = ins[0], ins[1], outs[0]
    mode, padding = attrs["mode"], attrs["padding_mode"]
    nd = x.ndim - 2
    dims = [_Dim(n, bool(attrs.get("align_corners", 0))) for n in x.shape[2:]]
    dt = DType.float32 if x.dtype is DType.float16 else x.dtype

    def coord(n, sp, d):
        g = grid[(n,) + tuple(sp) + (nd - 1 - d,)]
        v = dims[d].denormalize(g if g.dtype == dt else Cast(g, dt), dt)
        if mode == "nearest":
            v = Un("round", v, dt)  # half to even, as PyTorch and the reference
        if mode == "cubic":
            # PyTorch and ONNX Runtime pad each cubic tap, not the coordinate (the ONNX
            # reference folds both; they differ for border padding)
            return v
        return dims[d].fold(v, padding, dt)

    def xy_body(n, *rest):
        sp, dv = rest[:-1], rest[-1]
        v = coord(n, sp, nd - 1)
        for d in reversed(range(nd - 1)):
            v = Select(dv.eq(d), coord(n, sp, d), v)
        return v

    # The folded coordinates, once per grid point: every tap reads them (and reflection
    # repeats its argument), so recomputing them inline would multiply the expression.
    xy = compute(f"{o.name}__xy", grid.shape, xy_body, dt, inline=False)
    xyt = xy.tensor

    def body(n, c, *sp):
        xs = [xyt[(n,) + tuple(sp) + (d,)] for d in range(nd)]
        if mode == "nearest":
            taps = [[(dims[d].tap(Cast(xs[d], INDEX), padding, dt), _f(1, dt))] for d in range(nd)]
        else:
            taps = []
            for d in range(nd):
                base = Un("floor", xs[d], dt)
                t = xs[d] - base
                i0 = Cast(base, INDEX)
                if mode == "linear":
                    offs, ws = (0, 1), [_f(1, dt) - t, t]
                else:
                    offs, ws = (-1, 0, 1, 2), _cubic_coeffs(t, dt)
                taps.append([(dims[d].tap(i0 + k if k else i0, padding, dt), w) for k, w in zip(offs, ws)])
        total = None
        for combo in itertools.product(*taps):
            ix = tuple(t[0][0] for t in combo)
            cond = conj([t[0][1] for t in combo if t[0][1] is not None])
            v = x[(n, c) + ix]
            v = v if v.dtype == dt else Cast(v, dt)
            if cond is not None:
                v = Select(cond, v, zero(dt))
            w = None
            if mode != "nearest":
                for t in combo:
                    w = t[1] if w is None else w * t[1]
            term = v if w is None else w * v
            total = term if total is None else total + term
        return total if o.dtype == dt else Cast(total, o.dtype)

    return [xy, compute(o.name, o.shape, body, o.dtype, tag="gather")]


register("grid_sample", FusionKind.INJECTIVE, _grid_infer, _grid_compute)


# -- affine_grid: the sampling grid of an affine transform, grid_sample's companion ------------------
# ONNX AffineGrid (opset 20): for each output point the normalized base coordinate of each
# spatial dim (x first) -- pixel centres over [-1, 1], or the corners with align_corners --
# mapped by theta (N, nd, nd + 1). ``size`` (N, C, *spatial) is an attribute here.

def _affine_grid_infer(ins, attrs):
    theta = static_shape(ins[0], "affine_grid theta")
    size = tuple(int(v) for v in attrs["size"])
    nd = len(size) - 2
    if nd not in (2, 3) or theta != (size[0], nd, nd + 1):
        raise ShapeError(f"affine_grid needs size (N, C, H, W) or (N, C, D, H, W) and theta (N, {max(nd, 2)}, "
                         f"{max(nd, 2) + 1}); got size {size} and theta {theta}")
    if not ins[0].dtype.is_float:
        raise ShapeError(f"affine_grid theta must be floating point; got {ins[0].dtype}")
    return [TensorType((size[0],) + size[2:] + (nd,), ins[0].dtype)]


def _affine_grid_compute(ins, outs, attrs):
    theta, o = ins[0], outs[0]
    dt, size = o.dtype, tuple(int(v) for v in attrs["size"])
    nd, align = len(size) - 2, bool(attrs.get("align_corners", 0))
    spatial = size[2:]

    def base(i, n):  # the normalized coordinate of index i on an axis of n points
        f = _as(i, dt)
        if align:  # one point: ONNX leaves it undefined (2 / 0); ONNX Runtime gives 1, as here
            return _f(1.0, dt) if n == 1 else f * _f(2.0 / (n - 1), dt) - _f(1.0, dt)
        return (f * _f(2.0, dt) + _f(1.0, dt)) / _f(n, dt) - _f(1.0, dt)

    def body(n, *rest):
        *pos, comp = rest
        coords = [base(pos[nd - 1 - d], spatial[nd - 1 - d]) for d in range(nd)]  # x, y(, z)
        acc = theta[(n, comp, idx(nd))]
        for d, c in enumerate(coords):
            acc = acc + theta[(n, comp, idx(d))] * c
        return acc

    return [compute(o.name, o.shape, body, dt)]


register("affine_grid", FusionKind.INJECTIVE, _affine_grid_infer, _affine_grid_compute)


# -- col2im: sum sliding blocks back into an image -----------------------------------------------

def _col2im_params(x, attrs):
    image, block = tuple(attrs["image_shape"]), tuple(attrs["block_shape"])
    nd = len(image)
    strides = tuple(attrs.get("strides") or (1,) * nd)
    dil = tuple(attrs.get("dilations") or (1,) * nd)
    pads = tuple(attrs.get("pads") or (0,) * (2 * nd))
    blocks = tuple((n + pads[k] + pads[k + nd] - dil[k] * (b - 1) - 1) // strides[k] + 1
                   for k, (n, b) in enumerate(zip(image, block)))
    return image, block, strides, dil, pads, blocks


def _col2im_infer(ins, attrs):
    x = static_shape(ins[0], "col2im input")
    image, block, strides, dil, pads, blocks = _col2im_params(x, attrs)
    kprod = 1
    for b in block:
        kprod *= b
    nblocks = 1
    for b in blocks:
        nblocks *= b
    if len(x) != 3 or len(block) != len(image) or x[1] % kprod or x[2] != nblocks or min(blocks) < 1:
        raise ShapeError(f"col2im input {x} does not hold (C * {kprod}) columns of {nblocks} blocks for "
                         f"image {image}, block {block}, strides {strides}, dilations {dil}, pads {pads}")
    return [TensorType((x[0], x[1] // kprod) + image, ins[0].dtype)]


def _col2im_compute(ins, outs, attrs):
    """out[n, c, p] = sum over kernel offsets k of x[n, c*K + k, block(p, k)], where the block
    index ``(p + pad - k*d) / s`` must be a whole number inside the block grid."""
    x, o = ins[0], outs[0]
    image, block, strides, dil, pads, blocks = _col2im_params(x.shape, attrs)
    nd = len(image)
    kprod = x.shape[1] // o.shape[1]

    def lin(parts, extents):
        out = None
        for v, n in zip(parts, extents):
            out = v if out is None else out * n + v
        return out

    def body(n, c, *p):
        def tap(*k):
            pos, conds = [], []
            for j in range(nd):
                t = p[j] + pads[j] - k[j] * dil[j]
                q = t if strides[j] == 1 else t // strides[j]
                if strides[j] != 1:
                    conds.append((t % strides[j]).eq(0))
                conds += [t.ge(0), q.lt(blocks[j])]
                pos.append(q)
            v = x[n, c * kprod + lin(k, block), lin(pos, blocks)]
            return Select(conj(conds), v, zero(o.dtype))
        return rsum(tap, block)

    return [compute(o.name, o.shape, body, o.dtype, tag="reduce")]


register("col2im", FusionKind.REDUCTION, _col2im_infer, _col2im_compute)


# -- roi_align ------------------------------------------------------------------------------------

def _roi_infer(ins, attrs):
    x = static_shape(ins[0], "roi_align input")
    rois = static_shape(ins[1], "roi_align rois")
    bi = static_shape(ins[2], "roi_align batch_indices")
    if len(x) != 4 or rois[1:] != (4,) or bi != rois[:1] or not ins[0].dtype.is_float:
        raise ShapeError(f"roi_align needs a float input (N, C, H, W), rois (R, 4) and batch_indices (R,); "
                         f"got {x}, {rois}, {bi}")
    if attrs["mode"] not in ("avg", "max"):
        raise ShapeError(f"roi_align mode {attrs['mode']!r} is not avg or max")
    return [TensorType((rois[0], x[1], int(attrs["output_height"]), int(attrs["output_width"])), ins[0].dtype)]


def _roi_compute(ins, outs, attrs):
    """Bilinear samples on a (gh x gw) grid per output bin, averaged or maxed (the reference's
    arithmetic, in float64; attribute ``float32`` computes in float32, as ONNX Runtime does for
    float inputs -- a target without float64, WebGPU, sets it). With ``sampling_ratio`` 0 the
    grid differs per ROI: the frontend passes the per-ROI sizes (constant ROIs only) and the
    loop masks the extra samples."""
    from kiln.ir.ops.indexing import wrap_index

    x, rois, bidx, o = ins[0], ins[1], ins[2], outs[0]
    grid = ins[3] if len(ins) > 3 else None
    ph_n, pw_n = o.shape[2], o.shape[3]
    h, w = x.shape[2], x.shape[3]
    gh, gw = int(attrs["grid_h"]), int(attrs["grid_w"])
    half = attrs.get("coordinate_transformation_mode", "half_pixel") == "half_pixel"
    scale, avg = float(attrs.get("spatial_scale", 1.0)), attrs["mode"] == "avg"
    dt = DType.float32 if attrs.get("float32") else DType.float64
    f = lambda v: _f(v, dt)  # noqa: E731

    def body(n, c, ph, pw):
        b = wrap_index(bidx[n], x.shape[0])
        corner = [_as(rois[n, k], dt) * f(scale) - f(0.5 if half else 0.0) for k in range(4)]
        size_w, size_h = corner[2] - corner[0], corner[3] - corner[1]
        if not half:
            size_w, size_h = Bin("max", size_w, f(1), dt), Bin("max", size_h, f(1), dt)
        bin_h, bin_w = size_h / f(ph_n), size_w / f(pw_n)
        g_h = f(gh) if grid is None else Cast(grid[n, 0], dt)
        g_w = f(gw) if grid is None else Cast(grid[n, 1], dt)

        def axis(start, bin_, p, i, g, n_):
            v = start + Cast(p, dt) * bin_ + (Cast(i, dt) + f(0.5)) * bin_ / g
            out = v.lt(f(-1)).lor(v.gt(f(n_)))
            v = Bin("max", v, f(0), dt)
            lo = Cast(v, INDEX)
            edge = lo.ge(n_ - 1)
            lo = Select(edge, idx(n_ - 1), lo)
            v = Select(edge, Cast(lo, dt), v)
            hi = Select(edge, lo, lo + 1)
            frac = v - Cast(lo, dt)
            return out, lo, hi, frac

        def sample(iy, ix):
            oy, yl, yh, ly = axis(corner[1], bin_h, ph, iy, g_h, h)
            ox, xl, xh, lx = axis(corner[0], bin_w, pw, ix, g_w, w)
            hy, hx = f(1) - ly, f(1) - lx
            taps = [(hy * hx, yl, xl), (hy * lx, yl, xh), (ly * hx, yh, xl), (ly * lx, yh, xh)]
            terms = [wt * _as(x[b, c, yy, xx], dt) for wt, yy, xx in taps]
            if avg:
                val = terms[0] + terms[1] + terms[2] + terms[3]
            else:
                val = Bin("max", Bin("max", terms[0], terms[1], dt), Bin("max", terms[2], terms[3], dt), dt)
            val = Select(oy.lor(ox), f(0), val)  # a sample outside the map contributes 0
            if grid is not None:
                inside = Cast(iy, dt).lt(g_h).land(Cast(ix, dt).lt(g_w))
                val = Select(inside, val, f(0) if avg else f(float("-inf")))
            return val

        if avg:
            count = Bin("max", g_h * g_w, f(1), dt)
            res = rsum(sample, (gh, gw)) / count
        else:
            res = rmax(sample, (gh, gw))
        return Cast(res, o.dtype)

    return [compute(o.name, o.shape, body, o.dtype, tag="gather")]


register("roi_align", FusionKind.INJECTIVE, _roi_infer, _roi_compute)


# -- max_roi_pool ---------------------------------------------------------------------------------

def _max_roi_infer(ins, attrs):
    x = static_shape(ins[0], "max_roi_pool input")
    rois = static_shape(ins[1], "max_roi_pool rois")
    if len(x) != 4 or rois[1:] != (5,) or not ins[0].dtype.is_float or ins[1].dtype != ins[0].dtype:
        raise ShapeError(f"max_roi_pool needs a float input (N, C, H, W) and rois (R, 5) of its dtype; "
                         f"got {ins[0]} and {ins[1]}")
    ph, pw = (int(v) for v in attrs["pooled_shape"])
    return [TensorType((rois[0], x[1], ph, pw), ins[0].dtype)]


def _round_away(v, dt):
    """C's round(): halves away from zero."""
    return Select(v.ge(_f(0, dt)), Un("floor", v + _f(0.5, dt), dt), Un("ceil", v - _f(0.5, dt), dt))


def _max_roi_compute(ins, outs, attrs):
    """Each ROI (batch, x1, y1, x2, y2), scaled and rounded, is split into pooled_shape bins
    (floor/ceil edges, clipped to the map); a bin's max is taken over the whole map with a
    mask, since its extent depends on the ROI. An empty bin is 0 (as ONNX Runtime)."""
    from kiln.ir.ops.indexing import wrap_index

    x, rois, o = ins[0], ins[1], outs[0]
    ph_n, pw_n = o.shape[2], o.shape[3]
    h, w = x.shape[2], x.shape[3]
    scale, dt = float(attrs.get("spatial_scale", 1.0)), x.dtype

    def body(n, c, ph, pw):
        b = wrap_index(Cast(rois[n, 0], INDEX), x.shape[0])
        start_w, start_h, end_w, end_h = (Cast(_round_away(rois[n, k] * _f(scale, dt), dt), INDEX)
                                          for k in range(1, 5))

        def edges(start, end, p, pooled, size):
            length = Bin("max", end - start + 1, idx(1), INDEX)
            bin_ = Cast(length, dt) / _f(pooled, dt)
            lo = Cast(Un("floor", Cast(p, dt) * bin_, dt), INDEX) + start
            hi = Cast(Un("ceil", Cast(p + 1, dt) * bin_, dt), INDEX) + start
            clip = lambda v: Bin("min", Bin("max", v, idx(0), INDEX), idx(size), INDEX)  # noqa: E731
            return clip(lo), clip(hi)

        hs, he = edges(start_h, end_h, ph, ph_n, h)
        ws, we = edges(start_w, end_w, pw, pw_n, w)
        inside = lambda r, q: r.ge(hs).land(r.lt(he)).land(q.ge(ws)).land(q.lt(we))  # noqa: E731
        best = rmax(lambda r, q: Select(inside(r, q), x[b, c, r, q], _f(float("-inf"), dt)), (h, w))
        return Select(he.le(hs).lor(we.le(ws)), _f(0, dt), best)

    return [compute(o.name, o.shape, body, o.dtype, tag="pool")]


register("max_roi_pool", FusionKind.REDUCTION, _max_roi_infer, _max_roi_compute)
