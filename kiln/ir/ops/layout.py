"""Blocked channel layout for CPU convolutions: NCHW{b}c (as TVM's conv2d_NCHWc).

An activation (N, C, H, W) is stored as (N, C/b, H, W, b): the b channels of a block
are contiguous, so a convolution vectorizes over output channels (one vector of b lanes)
and register-tiles over output columns, broadcasting one input value per FMA. Weights are
packed at compile time to (OC/b, C/b, KH, KW, b_in, b_out) -- depthwise: (C/b, KH, KW, b)
-- so the inner loop reads them contiguously. ``passes/layout.py`` decides where to use it.
"""
from __future__ import annotations

from kiln.errors import ShapeError
from kiln.ir.compute import compute, rsum
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, register, transpose_hint
from kiln.ir.ops.nn import pad_stage, read_or_zero, scaled, window_attrs, window_out_size


def _block(attrs) -> int:
    return int(attrs["block"])


# -- layout transforms ------------------------------------------------------------------------

def _to_blocked_infer(ins, attrs):
    n, c, *sp = tuple(ins[0].shape)
    b = _block(attrs)
    if not isinstance(c, int) or c % b:
        raise ShapeError(f"to_nchwc: {c} channels are not a multiple of the block {b}")
    return [TensorType((n, c // b, *sp, b), ins[0].dtype)]


def _to_blocked_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    b = _block(attrs)
    # the input's last axis (W) is the output's second-to-last
    hints = transpose_hint(o.ndim - 2, o.shape[-2], o.ndim) if o.ndim > 3 else {}
    return [compute(o.name, o.shape, lambda n, cb, *r: x[(n, cb * b + r[-1]) + tuple(r[:-1])], o.dtype,
                    hints=hints)]


def _from_blocked_infer(ins, attrs):
    n, cb, *sp, b = tuple(ins[0].shape)
    return [TensorType((n, cb * b, *sp), ins[0].dtype)]


def _from_blocked_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    b = _block(attrs)
    # the input's last axis (the block) is c % b: runs of b along the output's channels
    return [compute(o.name, o.shape, lambda n, c, *sp: x[(n, c // b) + tuple(sp) + (c % b,)], o.dtype,
                    hints=transpose_hint(1, b, o.ndim))]


register("to_nchwc", FusionKind.INJECTIVE, _to_blocked_infer, _to_blocked_compute)
register("from_nchwc", FusionKind.INJECTIVE, _from_blocked_infer, _from_blocked_compute)


# -- convolution in NCHWc ---------------------------------------------------------------------

def _conv_nchwc_infer(ins, attrs):
    """x (N, C/bi, H, W, bi); w packed (OC/b, C/bi, KH, KW, bi, b) or depthwise (C/b, KH, KW, b);
    bias (OC/b, 1, 1, b). The output is (N, OC/b, OH, OW, b)."""
    n, cb, h, w_, b = tuple(ins[0].shape)
    ws = tuple(ins[1].shape)
    strides, pb, pe, dil = window_attrs(attrs, 2, "conv_nchwc")
    kernel = ws[1:3] if attrs.get("depthwise") else ws[2:4]
    ocb = cb if attrs.get("depthwise") else ws[0]
    spatial = tuple(window_out_size(s, k, st, d, p0, p1)
                    for s, k, st, d, p0, p1 in zip((h, w_), kernel, strides, dil, pb, pe))
    if min(spatial) < 1:
        raise ShapeError(f"conv_nchwc kernel {kernel} does not fit input {(h, w_)} with pads {pb + pe}")
    return [TensorType((n, ocb) + spatial + (ws[-1],), ins[0].dtype)]  # the output block


def _planar_pad(name: str, x, pb, pe):
    """x (N, 1, H, W, C) padded on H and W into (N, 1, C, H', W')."""
    n, cb, h, w, c = x.shape
    shape = (n, cb, c, h + pb[0] + pe[0], w + pb[1] + pe[1])
    return compute(name, shape, lambda i, j, k, r, q: read_or_zero(x, (i, j), (r - pb[0], q - pb[1]), (k,)),
                   x.dtype, tag="pad", inline=False)


def _conv_nchwc_compute(ins, outs, attrs):
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    o = outs[0]
    strides, pb, pe, dil = window_attrs(attrs, 2, "conv_nchwc")
    depthwise = bool(attrs.get("depthwise"))
    stages, src = [], x
    # A depthwise conv reads its padding through a bounds test instead: with 9 multiply-adds
    # per output its padded copy cost more than the tests (MobileNetV2, one core: 4.23-4.43
    # -> 4.03-4.25 ms; the 112 -> 56 stride-2 layer 0.16 -> 0.10 ms, ONNX Runtime 0.11,
    # where the rows computed inside its loops were 3 per output row, 2 of them new).
    padded = any(pb) or any(pe)
    bounds_tested = depthwise and padded
    # An input whose block is all of a few channels (an RGB stem) is padded channel by
    # channel, (N, 1, C, H, W): the copy then runs along W, which its source (the image,
    # read through the NCHWc conversion) has contiguous; the conv broadcasts each input
    # value anyway, so the layout it reads costs nothing (one core: MobileNetV2's stem
    # 0.27 -> 0.15 ms, ONNX Runtime 0.17; ResNet-18's 1.11 -> 1.02 ms; results identical).
    planar = not depthwise and w.shape[1] == 1 and w.shape[4] < 4 and padded
    if padded and not bounds_tested:
        if planar:
            pad = _planar_pad(f"{o.name}__pad", x, pb, pe)
        else:
            # pad H and W, which sit before the channel block: pad_stage pads trailing axes,
            # so pad (H, W, b) with nothing on the block axis.
            pad = pad_stage(f"{o.name}__pad", x, tuple(pb) + (0,), tuple(pe) + (0,))
        stages.append(pad)
        src = pad.tensor

    def pos(sp, k):
        return tuple(scaled(sp[i], strides[i]) + scaled(k[i], dil[i]) for i in range(2))

    if depthwise:
        kh, kw = w.shape[1], w.shape[2]

        def tap(n, cb, oh, ow, c, a, b_):
            if not bounds_tested:
                return src[(n, cb) + pos((oh, ow), (a, b_)) + (c,)]
            return read_or_zero(x, (n, cb), [p - begin for p, begin in zip(pos((oh, ow), (a, b_)), pb)], (c,))

        def body(n, cb, oh, ow, c):
            acc = rsum(lambda a, b_: tap(n, cb, oh, ow, c, a, b_) * w[cb, a, b_, c], (kh, kw))
            return acc if bias is None else acc + bias[cb, 0, 0, c]
    else:
        icb, kh, kw, bi = w.shape[1], w.shape[2], w.shape[3], w.shape[4]

        def body(n, ocb, oh, ow, oc):
            def term(ib, a, b_, ic):
                at = pos((oh, ow), (a, b_))
                value = src[(n, ib, ic) + at] if planar else src[(n, ib) + at + (ic,)]
                return value * w[ocb, ib, a, b_, ic, oc]
            acc = rsum(term, (icb, kh, kw, bi))
            return acc if bias is None else acc + bias[ocb, 0, 0, oc]

    # Register tile: output columns (ow) x the channel block (one vector of lanes).
    # A dense conv's tile may span several output-channel blocks (axis 1): one broadcast input
    # value then feeds two vectors of accumulators.
    hints = {"tile": (3, 4)} if depthwise else {"tile": (3, 4), "col_block_axis": 1}
    stages.append(compute(o.name, o.shape, body, o.dtype, tag="conv", hints=hints))
    return stages


register("conv_nchwc", FusionKind.OUT_FUSABLE, _conv_nchwc_infer, _conv_nchwc_compute)


# -- pooling in NCHWc --------------------------------------------------------------------------

def _pool_nchwc_infer(what: str):
    def infer(ins, attrs):
        n, cb, h, w_, b = tuple(ins[0].shape)
        kernel = tuple(int(k) for k in attrs["kernel_shape"])
        strides, pb, pe, dil = window_attrs(attrs, 2, what)
        ceil = bool(attrs.get("ceil_mode", 0))
        spatial = tuple(window_out_size(s, k, st, d, p0, p1, ceil)
                        for s, k, st, d, p0, p1 in zip((h, w_), kernel, strides, dil, pb, pe))
        if min(spatial) < 1:
            raise ShapeError(f"{what} kernel {kernel} does not fit input {(h, w_)}")
        if what == "avg_pool_nchwc" and not ins[0].dtype.is_float:
            raise ShapeError(f"avg_pool_nchwc needs a floating-point input; got {ins[0].dtype}")
        return [TensorType((n, cb) + spatial + (b,), ins[0].dtype)]
    return infer


def _max_pool_nchwc_compute(ins, outs, attrs):
    """Window maximum over H and W (pool.max_pool_body); the channel block rides along as the
    innermost axis, one vector per output pixel (the conv's tile: output columns x block)."""
    from kiln.ir.ops.pool import max_pool_body, pool_axes

    x, o = ins[0], outs[0]
    lead, kernel, axes = pool_axes(x, o, attrs, "max_pool_nchwc", trail=1)
    return [compute(o.name, o.shape, max_pool_body(x, lead, kernel, axes), o.dtype, tag="pool",
                    hints={"tile": (3, 4)})]


def _avg_pool_nchwc_compute(ins, outs, attrs):
    """Window mean over H and W, counted as ONNX AveragePool counts (pool.avg_pool_body); the
    channel block rides along as the innermost axis, one vector per output pixel."""
    from kiln.ir.ops.pool import avg_pool_body, pool_axes

    x, o = ins[0], outs[0]
    lead, kernel, axes = pool_axes(x, o, attrs, "avg_pool_nchwc", trail=1)
    return [compute(o.name, o.shape, avg_pool_body(x, attrs, lead, kernel, axes), o.dtype, tag="pool",
                    hints={"tile": (3, 4)})]


register("max_pool_nchwc", FusionKind.OUT_FUSABLE, _pool_nchwc_infer("max_pool_nchwc"), _max_pool_nchwc_compute)
register("avg_pool_nchwc", FusionKind.OUT_FUSABLE, _pool_nchwc_infer("avg_pool_nchwc"), _avg_pool_nchwc_compute)
