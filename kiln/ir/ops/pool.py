"""Pooling ops: max_pool (and its indices), avg_pool (N-d windows), global_avg_pool,
global_max_pool, lrn.

Windowed pools reduce over the kernel window inside the output stage (tag ``"pool"``).
Reads that may fall into padding are guarded by a Select inside the reduction; the test is
emitted only on the sides of the axes where some window actually leaves the input, so the
common unpadded pool has a branch-free body. The average divisor is a closed-form integer
expression of the output index (no per-element counting loop).
"""
from __future__ import annotations

from kiln.errors import ShapeError
from kiln.ir.compute import compute, reduce_init, rmax, rmin, rsum
from kiln.ir.dtype import INDEX
from kiln.ir.expr import Bin, Cast, Const, Expr, Select, idx
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, register
from kiln.ir.ops.nn import batch_shape, conj, offset, scaled, static_shape, window_attrs, window_out_size, zero


# -- windowed pools -----------------------------------------------------------------------------

def _pool_params(shape, attrs, what):
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    nd = len(kernel)
    if len(shape) < nd + 1 or min(kernel) < 1:
        raise ShapeError(f"{what} with kernel_shape {kernel} needs an input of rank >= {nd + 1} "
                         f"(N, C, *spatial) and kernel sizes >= 1; got input {tuple(shape)}")
    strides, pb, pe, dil = window_attrs(attrs, nd, what)
    return kernel, strides, pb, pe, dil, bool(attrs.get("ceil_mode", 0))


def _pool_infer(what):
    def infer(ins, attrs):
        x = batch_shape(ins[0], f"{what} input")
        kernel, strides, pb, pe, dil, ceil = _pool_params(x, attrs, what)
        lead = len(x) - len(kernel)
        spatial = tuple(window_out_size(n, k, s, d, b, e, ceil)
                        for n, k, s, d, b, e in zip(x[lead:], kernel, strides, dil, pb, pe))
        if min(spatial) < 1:
            raise ShapeError(f"{what} kernel {kernel} (dilations {dil}) does not fit input {x[lead:]} "
                             f"with pads {pb + pe}; output would be {spatial}")
        if what == "avg_pool" and not ins[0].dtype.is_float:
            raise ShapeError(f"avg_pool needs a floating-point input; got {ins[0].dtype}")
        return [TensorType(x[:lead] + spatial, ins[0].dtype)]
    return infer


class _Axis:
    """One pooled axis: where its windows start and whether they can leave ``[lo, hi)``."""

    def __init__(self, n, out, k, s, d, pb, pe):
        self.n, self.k, self.s, self.d, self.pb = n, k, s, d, pb
        self.first = -pb                          # start of the first window
        self.last = (out - 1) * s - pb + (k - 1) * d  # last position any window reads
        self.pe = pe

    def pos(self, o: Expr, k: Expr) -> Expr:
        return offset(scaled(o, self.s), -self.pb) + scaled(k, self.d)

    def bounds_conds(self, p: Expr, lo: int, hi: int) -> list[Expr]:
        """Conditions for ``lo <= p < hi`` on the sides where a window can leave the range."""
        conds = []
        if self.first < lo:
            conds.append(p.ge(lo))
        if self.last >= hi:
            conds.append(p.lt(hi))
        return conds

    def count(self, o: Expr, lo: int, hi: int) -> Expr | int:
        """Number of window taps ``k`` with ``lo <= start + k*d < hi`` (an int when constant)."""
        if self.first >= lo and self.last < hi:
            return self.k
        start = offset(scaled(o, self.s), -self.pb)
        d = self.d
        kmin = Bin("max", idx(0), (idx(lo + d - 1) - start) // d if d > 1 else idx(lo) - start, idx(0).dtype)
        kmax = Bin("min", idx(self.k - 1), (idx(hi - 1) - start) // d if d > 1 else idx(hi - 1) - start,
                   idx(0).dtype)
        return Bin("max", idx(0), kmax - kmin + 1, idx(0).dtype)


def pool_axes(x, o, attrs, what, trail: int = 0):
    """(lead, kernel, axes): the pooled axes are the ``len(kernel)`` dims before the last
    ``trail`` ones (1 for the channel block of NCHWc), ``lead`` dims before them."""
    kernel, strides, pb, pe, dil, _ = _pool_params(x.shape, attrs, what)
    lead = x.ndim - trail - len(kernel)
    axes = [_Axis(n, out, k, s, d, b, e) for n, out, k, s, d, b, e in
            zip(x.shape[lead:lead + len(kernel)], o.shape[lead:lead + len(kernel)], kernel, strides, dil, pb, pe)]
    return lead, kernel, axes


def _taps(i, lead, axes, k):
    """Input positions of window tap ``k`` for output index ``i``, and their bounds test."""
    pos = [ax.pos(i[lead + j], k[j]) for j, ax in enumerate(axes)]
    return pos, conj([c for ax, p in zip(axes, pos) for c in ax.bounds_conds(p, 0, ax.n)])


def max_pool_body(x, lead, kernel, axes):
    """Window maximum; taps outside the input are skipped (dims after the pooled axes, an
    NCHWc channel block, index the input as they are)."""
    lowest = Const(reduce_init("max", x.dtype), x.dtype)
    nd = len(kernel)

    def body(*i):
        def tap(*k):
            pos, cond = _taps(i, lead, axes, k)
            v = x[tuple(i[:lead]) + tuple(pos) + tuple(i[lead + nd:])]
            return v if cond is None else Select(cond, v, lowest)
        return rmax(tap, kernel)
    return body


def _max_pool_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    if attrs.get("channels_last"):
        return _max_pool_channels_last(x, o, attrs)
    lead, kernel, axes = pool_axes(x, o, attrs, "max_pool")
    if attrs.get("pad_rows") and x.ndim == 4 and len(kernel) == 2:
        return _max_pool_padded_rows(x, o, kernel, axes)
    return [compute(o.name, o.shape, max_pool_body(x, lead, kernel, axes), o.dtype, tag="pool")]


def _max_pool_padded_rows(x, o, kernel, axes):
    """The CPU form of a 2-D max pool (attribute ``pad_rows``, set by
    ``kiln/passes/integer_ops.py`` for integer pools): the input padded with the type's
    lowest value in a stage of its own, and the pool reading it with no bounds test, its
    window taps outside a vector of output columns (``tile``). Testing the bounds per tap
    inside a 3-tap vector loop cost 0.55 ms on ResNet-18's 64 x 112 x 112 uint8 pool.
    ``pad_at`` asks the schedule to compute the padded rows inside the pool's row loop; on
    ResNet's stride-2 pool the default schedule still leaves the padding a pass of its own
    (0.10 ms on that pool, the copy included): computing it per row is a follow-up."""
    lowest = Const(reduce_init("max", x.dtype), x.dtype)
    ext = tuple(ax.last + ax.pb + 1 for ax in axes)  # padded rows/columns any window reads

    def padded(n, c, qh, qw):
        pos = [offset(q, -ax.pb) for q, ax in zip((qh, qw), axes)]
        cond = conj([cc for ax, p in zip(axes, pos) for cc in ax.bounds_conds(p, 0, ax.n)])
        v = x[n, c, pos[0], pos[1]]
        return v if cond is None else Select(cond, v, lowest)

    xp = compute(f"{o.name}__xp", tuple(x.shape[:2]) + ext, padded, x.dtype, tag="pad", inline=False)

    def body(n, c, oh, ow):
        def tap(kh, kw):
            return xp.tensor[n, c, scaled(oh, axes[0].s) + scaled(kh, axes[0].d),
                             scaled(ow, axes[1].s) + scaled(kw, axes[1].d)]
        return rmax(tap, kernel)

    pool = compute(o.name, o.shape, body, o.dtype, tag="pool", hints={"tile": (2, 3), "tile_rows": 1, "pad_at": 2})
    return [xp, pool]


# -- channels last ----------------------------------------------------------------------------------

NHWC_TO_NCHW, NCHW_TO_NHWC = (0, 3, 1, 2), (0, 2, 3, 1)


def _max_pool_infer(ins, attrs):
    """max_pool's shapes; with attribute ``channels_last`` (a 2-D pool of an (N, H, W, C)
    input, set by ``kiln/passes/integer_layout.py``) the same pool over the NHWC layout."""
    if not attrs.get("channels_last"):
        return _pool_infer("max_pool")(ins, attrs)
    x = ins[0]
    if len(x.shape) != 4 or len(attrs["kernel_shape"]) != 2:
        raise ShapeError(f"max_pool with channels_last pools 2-D windows of an (N, H, W, C) input; "
                         f"got input {tuple(x.shape)} and kernel_shape {tuple(attrs['kernel_shape'])}")
    nchw = TensorType(tuple(x.shape[p] for p in NHWC_TO_NCHW), x.dtype)
    out = _pool_infer("max_pool")([nchw], attrs)[0]
    return [TensorType(tuple(out.shape[p] for p in NCHW_TO_NHWC), out.dtype)]


class _NchwView:
    """An NHWC tensor indexed as (n, c, h, w), so the NCHW pool body reads it unchanged."""

    def __init__(self, t):
        self.t, self.dtype, self.ndim = t, t.dtype, 4
        self.shape = tuple(t.shape[p] for p in NHWC_TO_NCHW)

    def __getitem__(self, i):
        n, c, h, w = i
        return self.t[n, h, w, c]


def _max_pool_channels_last(x, o, attrs):
    """An NHWC max pool: the channels are innermost and contiguous, so the window taps run
    outside a vector of channels (``tile`` over (columns, channels)) and the bounds tests,
    which depend on the pixel only, stay out of the vector loop -- no padded copy needed."""
    view = _NchwView(x)
    oshape = tuple(o.shape[p] for p in NHWC_TO_NCHW)
    kernel, strides, pb, pe, dil, _ = _pool_params(view.shape, attrs, "max_pool")
    axes = [_Axis(n, out, k, s_, d, b, e) for n, out, k, s_, d, b, e in
            zip(view.shape[2:], oshape[2:], kernel, strides, dil, pb, pe)]
    body = max_pool_body(view, 2, kernel, axes)
    return [compute(o.name, o.shape, lambda n, oh, ow, c: body(n, c, oh, ow), o.dtype, tag="pool",
                    hints={"tile": (2, 3), "tile_rows": 1})]


def _max_pool_indices_infer(ins, attrs):
    if int(attrs.get("storage_order", 0)) and len(attrs["kernel_shape"]) != 2:
        raise ShapeError("max_pool_indices with storage_order=1 (column-major) needs a 2-D pool")
    return [TensorType(_pool_infer("max_pool")(ins, attrs)[0].shape, INDEX)]


def _max_pool_indices_compute(ins, outs, attrs):
    """MaxPool's Indices: the flat input index of the first (scan-order) tap holding the
    window's maximum; spatial dims row-major, or (h + w * H) for storage_order=1."""
    x, o = ins[0], outs[0]
    lead, kernel, axes = pool_axes(x, o, attrs, "max_pool")
    best = compute(f"{o.name}__max", o.shape, max_pool_body(x, lead, kernel, axes), x.dtype, tag="pool",
                   inline=False)
    b, spatial = best.tensor, x.shape[lead:]
    column = int(attrs.get("storage_order", 0)) == 1
    past_end = idx(_prod(x.shape))  # no tap holds the max (never: every window has one)

    def flat(i, pos):
        base = idx(0)
        for v, n in zip(i[:lead], x.shape[:lead]):
            base = base * n + v
        inner = pos[0] + pos[1] * spatial[0] if column else _row_major(pos, spatial)
        return base * _prod(spatial) + inner

    def body(*i):
        def tap(*k):
            pos, cond = _taps(i, lead, axes, k)
            hit = x[tuple(i[:lead]) + tuple(pos)].eq(b[i])
            return Select(hit if cond is None else cond.land(hit), flat(i, pos), past_end)
        return rmin(tap, kernel)

    return [best, compute(o.name, o.shape, body, INDEX, tag="pool")]


def _row_major(pos, shape):
    out = idx(0)
    for p, n in zip(pos, shape):
        out = out * n + p
    return out


def _prod(shape) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


def window_taps(axes, i, lead: int, include_pad: bool):
    """Taps of the window at output index ``i``: (the static part, the product of the
    per-axis counts that vary with the position or None). Padding counts when
    ``include_pad``; taps past the pads never do."""
    const, dyn = 1, None
    for j, ax in enumerate(axes):
        lo, hi = (-ax.pb, ax.n + ax.pe) if include_pad else (0, ax.n)
        c = ax.count(i[lead + j], lo, hi)
        if isinstance(c, int):
            const *= c
        else:
            dyn = c if dyn is None else dyn * c
    return const, dyn


def avg_pool_body(x, attrs, lead: int, kernel, axes):
    """Sum of the in-bounds taps divided by the tap count (the pooled axes as ``pool_axes``
    found them; dims after them, an NCHWc channel block, index the input as they are).

    ``count_include_pad`` counts taps inside the padded input ``[-pb, n + pe)``; otherwise
    only taps inside the input. Taps past the end padding (ceil mode) never count.
    """
    include_pad = bool(attrs.get("count_include_pad", 0))
    dt, nd = x.dtype, len(kernel)

    def body(*i):
        def tap(*k):
            pos, cond = _taps(i, lead, axes, k)
            v = x[tuple(i[:lead]) + tuple(pos) + tuple(i[lead + nd:])]
            return v if cond is None else Select(cond, v, zero(dt))

        const, dyn = window_taps(axes, i, lead, include_pad)
        total = rsum(tap, kernel)
        if dyn is None:
            return total * Const(1.0 / const, dt)
        if const != 1:
            dyn = dyn * const
        return total / Cast(Bin("max", dyn, idx(1), dyn.dtype), dt)

    return body


def _avg_pool_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    lead, kernel, axes = pool_axes(x, o, attrs, "avg_pool")
    return [compute(o.name, o.shape, avg_pool_body(x, attrs, lead, kernel, axes), o.dtype, tag="pool")]


register("max_pool", FusionKind.OUT_FUSABLE, _max_pool_infer, _max_pool_compute)
register("max_pool_indices", FusionKind.OPAQUE, _max_pool_indices_infer, _max_pool_indices_compute)
register("avg_pool", FusionKind.OUT_FUSABLE, _pool_infer("avg_pool"), _avg_pool_compute)


# -- global pools -------------------------------------------------------------------------------

def _global_infer(what):
    def infer(ins, attrs):
        x = batch_shape(ins[0], f"{what} input")
        if len(x) < 3:
            raise ShapeError(f"{what} expects input (N, C, *spatial) of rank >= 3; got {x}")
        if what == "global_avg_pool" and not ins[0].dtype.is_float:
            raise ShapeError(f"global_avg_pool needs a floating-point input; got {ins[0].dtype}")
        return [TensorType(x[:2] + (1,) * (len(x) - 2), ins[0].dtype)]
    return infer


def _make_global(avg: bool):
    def compute_fn(ins, outs, attrs):
        x, o = ins[0], outs[0]
        spatial = x.shape[2:]
        count = 1
        for n in spatial:
            count *= n

        def body(n, c, *_):
            def tap(*r):
                return x[(n, c) + r]
            if avg:
                return rsum(tap, spatial) * Const(1.0 / count, x.dtype)
            return rmax(tap, spatial)

        return [compute(o.name, o.shape, body, o.dtype, tag="reduce")]
    return compute_fn


register("global_avg_pool", FusionKind.REDUCTION, _global_infer("global_avg_pool"), _make_global(True))
register("global_max_pool", FusionKind.REDUCTION, _global_infer("global_max_pool"), _make_global(False))


# -- local response normalization ----------------------------------------------------------------

def _lrn_infer(ins, attrs):
    x = static_shape(ins[0], "lrn input")
    if len(x) < 2 or not ins[0].dtype.is_float:
        raise ShapeError(f"lrn expects a floating-point input (N, C, ...); got {ins[0].dtype}{list(x)}")
    if int(attrs["size"]) < 1:
        raise ShapeError(f"lrn size must be >= 1; got {attrs['size']}")
    return [ins[0]]


def _lrn_compute(ins, outs, attrs):
    """ONNX LRN: y = x / (bias + alpha / size * sum_{c' in window(c)} x[c']^2) ** beta.

    The window over channels is ``[c - floor((size-1)/2), c + ceil((size-1)/2)]`` clipped to
    the channel range; the squared sums are an intermediate stage ``__sqsum``.
    """
    x, o = ins[0], outs[0]
    size = int(attrs["size"])
    alpha, beta, bias = float(attrs.get("alpha", 1e-4)), float(attrs.get("beta", 0.75)), float(attrs.get("bias", 1.0))
    lo = (size - 1) // 2
    channels = x.shape[1]
    dt = x.dtype

    def sq_body(n, c, *rest):
        def tap(j):
            ch = c + (j - lo)
            v = x[(n, ch) + rest]
            return Select(ch.ge(0).land(ch.lt(channels)), v * v, zero(dt))
        return rsum(tap, size)

    sq = compute(f"{o.name}__sqsum", x.shape, sq_body, dt, tag="reduce", inline=False)
    s = sq.tensor

    def body(*i):
        base = Const(bias, dt) + Const(alpha / size, dt) * s[i]
        return x[i] / Bin("pow", base, Const(beta, dt), dt)

    return [sq, compute(o.name, o.shape, body, o.dtype)]


register("lrn", FusionKind.REDUCTION, _lrn_infer, _lrn_compute)
