"""Heavy neural-network ops: convolution, transposed convolution and matrix multiplication.

All three are ``OUT_FUSABLE``: the fusion pass may append elementwise epilogues (bias,
activation, residual add) to their output stage. Layouts are ONNX's: activations are
``(N, C, *spatial)``, conv weights ``(OC, C/group, *kernel)``, transposed-conv weights
``(C, OC/group, *kernel)``.

Padding of a convolution is a stage of its own (tag ``"pad"``, not inlined), so the conv
stage reads every input element without a bounds test and its inner loop stays branch-free.
The window helpers at the bottom are shared with the pooling ops (``pool.py``).
"""
from __future__ import annotations

from typing import Mapping, Sequence

from kiln.errors import ShapeError
from kiln.ir.compute import Stage, Tensor, compute, rsum
from kiln.ir.dtype import DType
from kiln.ir.expr import Const, Expr, Select, as_expr
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, broadcast_shapes, register
from kiln.ir.symbolic import dims_equal


# -- shared helpers -------------------------------------------------------------------------

def widen_sum(e: Expr) -> Expr:
    """float16 terms of a plain sum accumulate in float32, as numpy's pairwise sum does;
    bfloat16 and float8 ones accumulate in their own type, as numpy sums ml_dtypes arrays."""
    from kiln.ir.expr import Cast

    return Cast(e, DType.float32) if e.dtype is DType.float16 else e


def widen(e: Expr) -> Expr:
    """float16 (and bfloat16, float8) terms of a sum or product accumulate in float32 (rounded once at the end), as
    numpy and ONNX Runtime do: a float16 accumulator loses a bit every few terms."""
    from kiln.ir.expr import Cast

    return Cast(e, DType.float32) if e.dtype is DType.float16 or e.dtype.is_narrow_float else e


def static_shape(t: TensorType, what: str) -> tuple[int, ...]:
    """The shape of ``t`` as ints; raises ShapeError naming ``what`` for a symbolic shape."""
    if not t.is_static:
        raise ShapeError(f"{what} has symbolic shape {tuple(t.shape)}; expected static dims "
                         "(give --input-shape for the model inputs)")
    return tuple(int(d) for d in t.shape)


def batch_shape(t: TensorType, what: str) -> tuple:
    """``(N, C, *spatial)`` where only N may be symbolic (a dynamic batch); the rest static."""
    if not all(isinstance(d, int) for d in tuple(t.shape)[1:]):
        raise ShapeError(f"{what} has shape {tuple(t.shape)}; only the batch dim may be symbolic here")
    return tuple(t.shape)


def window_attrs(attrs: Mapping[str, object], nd: int, what: str):
    """``(strides, pads_begin, pads_end, dilations)`` of an ``nd``-d window op, validated."""
    strides = tuple(int(s) for s in attrs.get("strides") or (1,) * nd)
    dilations = tuple(int(d) for d in attrs.get("dilations") or (1,) * nd)
    pads = tuple(int(p) for p in attrs.get("pads") or (0,) * (2 * nd))
    if len(strides) != nd or len(dilations) != nd or len(pads) != 2 * nd:
        raise ShapeError(f"{what} over {nd} spatial dims expects {nd} strides, {nd} dilations and "
                         f"{2 * nd} pads; got strides {strides}, dilations {dilations}, pads {pads}")
    if min(strides) < 1 or min(dilations) < 1:
        raise ShapeError(f"{what} strides {strides} and dilations {dilations} must be >= 1")
    return strides, pads[:nd], pads[nd:], dilations


def window_out_size(n: int, k: int, s: int, d: int, pb: int, pe: int, ceil_mode: bool = False) -> int:
    """Output length of a sliding window (ONNX Conv/Pool rule, with ceil_mode as ONNX Runtime).

    In ceil mode the last window must start inside the input or its leading padding.
    """
    span = n + pb + pe - d * (k - 1) - 1
    if span < 0:
        return 0
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= n + pb:
        out -= 1
    return out


def scaled(v: Expr, c: int) -> Expr:
    """``v * c`` without the ``* 1`` (index arithmetic stays readable in printed IR)."""
    return v if c == 1 else v * c


def offset(v: Expr, c: int) -> Expr:
    return v if c == 0 else v + c


def conj(conds: Sequence[Expr]) -> Expr | None:
    """The conjunction of ``conds``, or None when there are none."""
    out = None
    for c in conds:
        out = c if out is None else out.land(c)
    return out


def read_or_zero(x, lead: tuple, at, tail: tuple):
    """``x[lead + at + tail]``, or 0 where the spatial position ``at`` (H, W) is outside ``x``."""
    h, w = (x.shape[len(lead)], x.shape[len(lead) + 1])
    inside = conj([at[0].ge(0), at[0].lt(h), at[1].ge(0), at[1].lt(w)])
    return Select(inside, x[lead + tuple(at) + tail], Const(0.0, x.dtype))


def zero(dtype: DType) -> Const:
    return Const(0.0 if dtype.is_float else 0, dtype)


def pad_stage(name: str, x: Tensor, begin: Sequence[int], end: Sequence[int], value=0) -> Stage:
    """``x`` padded with ``value`` on its trailing ``len(begin)`` axes (a materialized stage)."""
    lead = x.ndim - len(begin)
    shape = x.shape[:lead] + tuple(n + b + e for n, b, e in zip(x.shape[lead:], begin, end))

    def body(*i):
        src, conds = list(i[:lead]), []
        for ax, n, b, e in zip(i[lead:], x.shape[lead:], begin, end):
            src.append(offset(ax, -b))
            if b:
                conds.append(ax.ge(b))
            if e:
                conds.append(ax.lt(b + n))
        cond = conj(conds)
        v = x[tuple(src)]
        return v if cond is None else Select(cond, v, as_expr(value, x.dtype))

    return compute(name, shape, body, x.dtype, tag="pad", inline=False)


def _check_same_dtype(ins: Sequence[TensorType], what: str):
    dts = {t.dtype for t in ins}
    if len(dts) > 1:
        raise ShapeError(f"{what} operands have dtypes {', '.join(str(t.dtype) for t in ins)}; expected one dtype")


def _check_bias(ins: Sequence[TensorType], channels: int, what: str):
    if len(ins) > 2:
        b = static_shape(ins[2], f"{what} bias")
        if b != (channels,):
            raise ShapeError(f"{what} bias has shape {b}; expected ({channels},) (one per output channel)")


# -- conv -----------------------------------------------------------------------------------

def _conv_infer(ins, attrs):
    xs = batch_shape(ins[0], "conv input")
    ws = static_shape(ins[1], "conv weights")
    if len(xs) < 3 or len(ws) != len(xs):
        raise ShapeError(f"conv expects input (N, C, *spatial) of rank >= 3 and weights of the same "
                         f"rank; got input {xs} and weights {ws}")
    _check_same_dtype(ins, "conv")
    nd, group = len(xs) - 2, int(attrs.get("group", 1))
    strides, pb, pe, dil = window_attrs(attrs, nd, "conv")
    if group < 1 or ws[0] % group:
        raise ShapeError(f"conv has {ws[0]} output channels, not divisible by group={group}")
    if xs[1] != ws[1] * group:
        raise ShapeError(f"conv input has {xs[1]} channels; weights {ws} with group={group} "
                         f"expect {ws[1] * group} input channels")
    _check_bias(ins, ws[0], "conv")
    spatial = tuple(window_out_size(n, k, s, d, b, e)
                    for n, k, s, d, b, e in zip(xs[2:], ws[2:], strides, dil, pb, pe))
    if min(spatial) < 1:
        raise ShapeError(f"conv kernel {ws[2:]} (dilations {dil}) does not fit input {xs[2:]} "
                         f"with pads {pb + pe}; output would be {spatial}")
    return [TensorType((xs[0], ws[0]) + spatial, ins[0].dtype)]


def _conv_compute(ins, outs, attrs):
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    o = outs[0]
    nd, group = x.ndim - 2, int(attrs.get("group", 1))
    strides, pb, pe, dil = window_attrs(attrs, nd, "conv")
    stages = []
    src = x
    if any(pb) or any(pe):
        pad = pad_stage(f"{o.name}__pad", x, pb, pe)
        stages.append(pad)
        src = pad.tensor
    icg, ocg, kernel = w.shape[1], w.shape[0] // group, w.shape[2:]

    def body(n, oc, *sp):
        def term(ic, *k):
            ch = ic if group == 1 else (oc // ocg) * icg + ic
            pos = tuple(scaled(sp[i], strides[i]) + scaled(k[i], dil[i]) for i in range(nd))
            return widen(src[(n, ch) + pos]) * widen(w[(oc, ic) + tuple(k)])

        acc = rsum(term, (icg,) + tuple(kernel))  # reduction order: (ic, k0, k1, ...)
        return acc if bias is None else acc + widen(bias[oc])

    stages.append(compute(o.name, o.shape, body, o.dtype, tag="conv", hints={"tile": (1, o.ndim - 1)}))
    return stages


register("conv", FusionKind.OUT_FUSABLE, _conv_infer, _conv_compute)


def _depthwise_conv_compute(ins, outs, attrs):
    """A 2-D depthwise ``conv`` (one input channel per group) in NCHW, for CPUs that run
    convolutions in NCHWc but leave a lone depthwise layer between NCHW tensors plain
    (``passes/isolated_convs.py``): the register tile is output rows x columns of one
    channel plane (columns contiguous), and the padding is a bounds test on each read
    instead of a padded copy (loop partitioning takes the tests out of the interior). The
    multiply-adds per output are ``conv``'s, in the same order."""
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    o = outs[0]
    strides, pb, _, dil = window_attrs(attrs, 2, "depthwise_conv")

    def body(n, c, oh, ow):
        def tap(a, b):
            at = [scaled(oh, strides[0]) + scaled(a, dil[0]) - pb[0], scaled(ow, strides[1]) + scaled(b, dil[1]) - pb[1]]
            return widen(read_or_zero(x, (n, c), at, ())) * widen(w[(c, 0, a, b)])

        acc = rsum(tap, tuple(w.shape[2:]))
        return acc if bias is None else acc + widen(bias[c])

    return [compute(o.name, o.shape, body, o.dtype, tag="conv", hints={"tile": (2, 3)})]


def _depthwise_conv_infer(ins, attrs):
    x, w = tuple(ins[0].shape), tuple(ins[1].shape)
    if len(x) != 4 or len(w) != 4 or w[1] != 1 or int(attrs.get("group", 1)) != x[1] or w[0] != x[1]:
        raise ShapeError(f"depthwise_conv takes x (N, C, H, W) and weights (C, 1, KH, KW) with group=C; "
                         f"got x {x}, weights {w}, group={attrs.get('group', 1)}")
    return _conv_infer(ins, attrs)


register("depthwise_conv", FusionKind.OUT_FUSABLE, _depthwise_conv_infer, _depthwise_conv_compute)


# -- conv_transpose ---------------------------------------------------------------------------

def _conv_transpose_infer(ins, attrs):
    xs = static_shape(ins[0], "conv_transpose input")
    ws = static_shape(ins[1], "conv_transpose weights")
    if len(xs) < 3 or len(ws) != len(xs):
        raise ShapeError(f"conv_transpose expects input (N, C, *spatial) of rank >= 3 and weights of "
                         f"the same rank; got input {xs} and weights {ws}")
    _check_same_dtype(ins, "conv_transpose")
    nd, group = len(xs) - 2, int(attrs.get("group", 1))
    strides, pb, pe, dil = window_attrs(attrs, nd, "conv_transpose")
    out_pad = tuple(int(p) for p in attrs.get("output_padding") or (0,) * nd)
    if xs[1] != ws[0] or group < 1 or ws[0] % group:
        raise ShapeError(f"conv_transpose input has {xs[1]} channels; weights {ws} expect {ws[0]} "
                         f"input channels, divisible by group={group}")
    _check_bias(ins, ws[1] * group, "conv_transpose")
    spatial = tuple(s * (n - 1) + op + (k - 1) * d + 1 - b - e
                    for n, k, s, d, b, e, op in zip(xs[2:], ws[2:], strides, dil, pb, pe, out_pad))
    if min(spatial) < 1:
        raise ShapeError(f"conv_transpose output spatial shape would be {spatial}; pads {pb + pe} are too large")
    return [TensorType((xs[0], ws[1] * group) + spatial, ins[0].dtype)]


def _conv_transpose_compute(ins, outs, attrs):
    """y[n, oc, o] = sum_{ic, k} x[n, g*icg + ic, (o + pb - k*d) / s] * w[g*icg + ic, oc % ocg, k].

    Only taps where ``o + pb - k*d`` is a non-negative multiple of the stride that lands
    inside the input contribute; a Select guards the loads of the others.
    """
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    o = outs[0]
    nd, group = x.ndim - 2, int(attrs.get("group", 1))
    strides, pb, _, dil = window_attrs(attrs, nd, "conv_transpose")
    icg, ocg, kernel = w.shape[0] // group, w.shape[1], w.shape[2:]

    def body(n, oc, *sp):
        def term(ic, *k):
            ch = ic if group == 1 else (oc // ocg) * icg + ic
            ocl = oc if group == 1 else oc % ocg
            pos, conds = [], []
            for i in range(nd):
                t = offset(sp[i], pb[i]) - scaled(k[i], dil[i])
                s = strides[i]
                q = t if s == 1 else t // s
                if s != 1:
                    conds.append((t % s).eq(0))
                conds += [t.ge(0), q.lt(x.shape[2 + i])]
                pos.append(q)
            val = widen(x[(n, ch) + tuple(pos)]) * widen(w[(ch, ocl) + tuple(k)])
            return Select(conj(conds), val, zero(val.dtype))

        acc = rsum(term, (icg,) + tuple(kernel))
        return acc if bias is None else acc + widen(bias[oc])

    return [compute(o.name, o.shape, body, o.dtype, tag="conv_transpose", hints={"tile": (1, o.ndim - 1)})]


register("conv_transpose", FusionKind.OUT_FUSABLE, _conv_transpose_infer, _conv_transpose_compute)


# -- matmul ---------------------------------------------------------------------------------

def _matmul_infer(ins, attrs):
    """Shape-polymorphic: batch, M and N (and K) may be symbolic dims."""
    a, b = tuple(ins[0].shape), tuple(ins[1].shape)
    if len(a) < 2 or len(b) < 2:
        raise ShapeError(f"matmul operands must have rank >= 2; got {a} and {b} "
                         "(the frontend reshapes 1-D operands)")
    _check_same_dtype(ins, "matmul")
    if not dims_equal(a[-1], b[-2]):
        raise ShapeError(f"matmul inner dimensions differ: A {a} has K={a[-1]}, B {b} has K={b[-2]}; "
                         "expected equal")
    batch = broadcast_shapes(a[:-2], b[:-2])
    return [TensorType(tuple(batch) + (a[-2], b[-1]), ins[0].dtype)]


def _batch_index(t: Tensor, batch: Sequence[Expr]) -> tuple:
    """Indices into the batch dims of ``t`` (all but the last two) under broadcasting."""
    nb = t.ndim - 2
    out = []
    for k, n in enumerate(t.shape[:nb]):
        out.append(0 if n == 1 else batch[len(batch) - nb + k])
    return tuple(out)


def _matmul_compute(ins, outs, attrs):
    a, b = ins
    o = outs[0]
    r, kdim = o.ndim, a.shape[-1]

    def body(*i):
        ba, bb = _batch_index(a, i[:-2]), _batch_index(b, i[:-2])
        return rsum(lambda k: widen(a[ba + (i[-2], k)]) * widen(b[bb + (k, i[-1])]), kdim)

    return [compute(o.name, o.shape, body, o.dtype, tag="matmul", hints={"tile": (r - 2, r - 1)})]


register("matmul", FusionKind.OUT_FUSABLE, _matmul_infer, _matmul_compute)

