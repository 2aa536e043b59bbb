"""Quantization ops with ONNX reference semantics, as integer compute definitions.

- ``quantize_linear``: y = saturate(round_half_even(x / scale) + zero_point),
- ``dequantize_linear``: y = (x - zero_point) * scale,
- ``dynamic_quantize_linear``: uint8 quantization with a scale and zero point from the
  data's range (three outputs; scalars are shape (1,), the frontend reshapes them),
- ``matmul_integer`` / ``conv_integer``: int8/uint8 operands minus their zero points,
  accumulated in int32 (a real integer kernel, never through float),
- ``requantize``: an int32 accumulator times a float multiplier (a_scale * w_scale /
  y_scale), rounded half to even, plus the output zero point, saturated. It is an
  elementwise op, so it fuses into the integer kernel as its epilogue. As in the ONNX
  reference the product is formed in float64; attribute ``float32`` forms it in float32, as
  ONNX Runtime's kernels do (a target without float64, WebGPU, sets it).

Scales and zero points are per tensor (one element), per axis (1-D along ``axis``) or
blocked (the input's shape with ``axis`` divided into blocks of ``block_size``).
"""
from __future__ import annotations

import ml_dtypes

from kiln.errors import ShapeError
from kiln.ir.compute import Tensor, compute, rmax, rmin, rsum
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const, Select, Un
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, broadcast_index, broadcast_shapes, register
from kiln.ir.ops.nn import conj, offset, scaled, static_shape, window_attrs, window_out_size

QUANT_RANGES = {DType.uint8: (0, 255), DType.int8: (-128, 127), DType.int16: (-32768, 32767),
                DType.uint16: (0, 65535), DType.int32: (-2**31, 2**31 - 1), DType.int4: (-8, 7),
                DType.uint4: (0, 15), DType.int2: (-2, 1), DType.uint2: (0, 3)}


def quantized_type(dt: DType) -> bool:
    """The types quantize_linear writes and dequantize_linear reads: the integers of
    QUANT_RANGES, and the float8/float4 formats (scaled, saturated, not rounded to integers)."""
    return dt in QUANT_RANGES or dt.is_narrow_float and dt is not DType.bfloat16
I32, F32, F64 = DType.int32, DType.float32, DType.float64


def _as(e, dt: DType):
    return e if e.dtype == dt else Cast(e, dt)


def _f(v, dt) -> Const:
    return Const(float(v), dt)


def saturate(v, out: DType):
    """A float ``v`` clamped to integer type ``out``'s range and cast; NaN gives the lowest
    value, as ONNX Runtime's QuantizeLinear does. (A NaN-keeping min/max left NaN to the
    float-to-int cast, undefined in C -- int8 got 0 -- and cost a third of the kernel.)"""
    lo, hi = (_f(b, v.dtype) for b in QUANT_RANGES[out])
    v = Select(v.gt(lo), v, lo)
    return Cast(Select(v.lt(hi), v, hi), out)


def param_index(p: Tensor, i, axis: int, block: int) -> tuple:
    """Index of scale/zero point ``p`` for element ``i`` of the quantized tensor."""
    size = 1
    for n in p.shape:
        size *= n
    if size == 1:
        return (0,) * p.ndim
    if block:
        return tuple(v // block if d == axis else v for d, v in enumerate(i))
    return (i[axis],)


def _check_params(x, scale, axis: int, block: int, what: str):
    size = 1
    for n in scale:
        size *= n
    if size == 1:
        return
    if not 0 <= axis < len(x):
        raise ShapeError(f"{what} axis {axis} is out of range for input shape {x}")
    if block:
        want = tuple(-(-n // block) if d == axis else n for d, n in enumerate(x))
        if tuple(scale) != want:
            raise ShapeError(f"{what} blocked scale has shape {scale}; expected {want} "
                             f"(block_size {block} on axis {axis} of {x})")
    elif tuple(scale) != (x[axis],):
        raise ShapeError(f"{what} per-axis scale has shape {scale}; expected ({x[axis]},) for axis {axis} of {x}")


# -- quantize_linear / dequantize_linear --------------------------------------------------------

def _same_layout(zp_shape, scale_shape) -> bool:
    """A zero point has the scale's shape; per tensor, any one-element shape ((), (1,)) will do."""
    return tuple(zp_shape) == tuple(scale_shape) or (_size(zp_shape) == 1 and _size(scale_shape) == 1)


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _zp_index(zp, scale, pi):
    return pi if zp.ndim == scale.ndim else (0,) * zp.ndim

def _quantize_infer(ins, attrs):
    x, s = static_shape(ins[0], "quantize_linear input"), static_shape(ins[1], "quantize_linear scale")
    out = DType(attrs["dtype"])
    if not quantized_type(out) or out is DType.int32 or not ins[0].dtype.is_float:
        raise ShapeError(f"quantize_linear maps floats to 2/4/8/16-bit integers or float8/float4; "
                         f"got {ins[0].dtype} -> {out}")
    _check_params(x, s, int(attrs.get("axis", 1)), int(attrs.get("block_size", 0)), "quantize_linear")
    if len(ins) > 2 and (ins[2].dtype != out or not _same_layout(ins[2].shape, s)):
        raise ShapeError(f"quantize_linear zero point {ins[2]} must match the scale shape {s} and dtype {out}")
    return [TensorType(x, out)]


def _quantize_compute(ins, outs, attrs):
    x, scale, o = ins[0], ins[1], outs[0]
    zp = ins[2] if len(ins) > 2 else None
    axis, block = int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
    ft = DType(attrs["precision"]) if attrs.get("precision") else (
        F64 if F64 in (x.dtype, scale.dtype) else F32)

    def body(*i):
        pi = param_index(scale, i, axis, block)
        v = _as(x[i], ft) / _as(scale[pi], ft)
        if o.dtype.is_narrow_float:  # float8/float4: scaled, then a saturating cast
            if zp is not None:
                v = v + _as(zp[_zp_index(zp, scale, pi)], ft)
            limit = float(ml_dtypes.finfo(o.dtype.np).max)
            if not attrs.get("saturate", 1):
                return Cast(v, o.dtype)
            return Cast(Select(v.gt(_f(limit, ft)), _f(limit, ft),
                               Select(v.lt(_f(-limit, ft)), _f(-limit, ft), v)), o.dtype)
        v = Un("round", v, ft)
        if zp is not None:
            v = v + _as(zp[_zp_index(zp, scale, pi)], ft)
        return saturate(v, o.dtype)

    return [compute(o.name, o.shape, body, o.dtype)]


register("quantize_linear", FusionKind.BROADCAST, _quantize_infer, _quantize_compute)


def _dequantize_infer(ins, attrs):
    x, s = static_shape(ins[0], "dequantize_linear input"), static_shape(ins[1], "dequantize_linear scale")
    if not quantized_type(ins[0].dtype) or not ins[1].dtype.is_float:
        raise ShapeError(f"dequantize_linear maps 2/4/8/16/32-bit integers and float8/float4 to floats; got {ins[0].dtype} "
                         f"with a {ins[1].dtype} scale")
    _check_params(x, s, int(attrs.get("axis", 1)), int(attrs.get("block_size", 0)), "dequantize_linear")
    if len(ins) > 2 and (ins[2].dtype != ins[0].dtype or not _same_layout(ins[2].shape, s)):
        raise ShapeError(f"dequantize_linear zero point {ins[2]} must match the scale shape {s} and "
                         f"the input dtype {ins[0].dtype}")
    return [TensorType(x, DType(attrs["dtype"]))]


def _dequantize_compute(ins, outs, attrs):
    x, scale, o = ins[0], ins[1], outs[0]
    zp = ins[2] if len(ins) > 2 else None
    axis, block = int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
    # int32 data (biases) go through float64, as the reference's numpy promotion does
    ft = F64 if x.dtype is I32 or scale.dtype is F64 else F32

    def body(*i):
        pi = param_index(scale, i, axis, block)
        wide = F32 if x.dtype.is_float else I32
        d = _as(x[i], wide) if zp is None else _as(x[i], wide) - _as(zp[_zp_index(zp, scale, pi)], wide)
        return _as(_as(d, ft) * _as(scale[pi], ft), o.dtype)

    return [compute(o.name, o.shape, body, o.dtype)]


register("dequantize_linear", FusionKind.BROADCAST, _dequantize_infer, _dequantize_compute)


# -- dynamic_quantize_linear ------------------------------------------------------------------------

def _dynamic_infer(ins, attrs):
    x = static_shape(ins[0], "dynamic_quantize_linear input")
    if ins[0].dtype is not F32:
        raise ShapeError(f"dynamic_quantize_linear needs a float32 input; got {ins[0].dtype}")
    return [TensorType(x, DType.uint8), TensorType((1,), F32), TensorType((1,), DType.uint8)]


def _dynamic_compute(ins, outs, attrs):
    """scale = (max(x, 0) - min(x, 0)) / 255; zp = round(clip(-min / scale, 0, 255)).

    An all-zero input gets scale 1, as ONNX Runtime gives (the spec divides by zero there).
    """
    x, (y, so, zo) = ins[0], outs
    shape = x.shape
    lo = compute(f"{y.name}__min", (1,), lambda _: Bin("min", rmin(lambda *r: x[r], shape), _f(0, F32), F32),
                 F32, tag="reduce", inline=False)
    hi = compute(f"{y.name}__max", (1,), lambda _: Bin("max", rmax(lambda *r: x[r], shape), _f(0, F32), F32),
                 F32, tag="reduce", inline=False)
    mn, mx = lo.tensor[0], hi.tensor[0]
    scale = compute(so.name, so.shape, lambda _: Select(mx.eq(mn), _f(1, F32), (mx - mn) / _f(255, F32)), F32)
    s = so[0]
    zp_f = Bin("min", Bin("max", _f(0, F32) - mn / s, _f(0, F32), F32), _f(255, F32), F32)
    zp = compute(zo.name, zo.shape, lambda _: Cast(Un("round", zp_f, F32), DType.uint8), DType.uint8)
    z = zo[0]
    yq = compute(y.name, y.shape,
                 lambda *i: saturate(Un("round", x[i] / s, F32) + _as(z, F32), DType.uint8), DType.uint8)
    return [lo, hi, scale, zp, yq]


register("dynamic_quantize_linear", FusionKind.OPAQUE, _dynamic_infer, _dynamic_compute, num_outputs=3)


# -- integer matmul / conv --------------------------------------------------------------------------

def _int_operand(t: TensorType, what: str):
    if t.dtype not in (DType.int8, DType.uint8):
        raise ShapeError(f"{what} must be int8 or uint8; got {t.dtype}")


def _centered(v, zp, zp_ix):
    """``v - zp`` in int32."""
    return _as(v, I32) - _as(zp[zp_ix], I32)


def _matmul_integer_infer(ins, attrs):
    a, b = static_shape(ins[0], "matmul_integer A"), static_shape(ins[1], "matmul_integer B")
    _int_operand(ins[0], "matmul_integer A")
    _int_operand(ins[1], "matmul_integer B")
    if len(a) < 2 or len(b) < 2 or a[-1] != b[-2]:
        raise ShapeError(f"matmul_integer needs operands (..., M, K) and (..., K, N); got {a} and {b}")
    for zp, op, what in ((ins[2:3], a, "A"), (ins[3:4], b, "B")):
        if zp and broadcast_shapes(op, zp[0].shape) != op:
            raise ShapeError(f"matmul_integer zero point of {what} {zp[0]} does not broadcast to {op}")
    return [TensorType(broadcast_shapes(a[:-2], b[:-2]) + (a[-2], b[-1]), I32)]


def _matmul_integer_compute(ins, outs, attrs):
    """y[.., m, n] = sum_k (a[.., m, k] - a_zp) * (b[.., k, n] - b_zp), all int32.

    Zero points (always given; the frontend passes a 0 scalar for a missing one) broadcast
    against their operand: a per-row A zero point is (M, 1), a per-column B one (N,).
    """
    a, b, o = ins[0], ins[1], outs[0]
    azp, bzp = ins[2], ins[3]
    r, kdim = o.ndim, a.shape[-1]

    def body(*i):
        ba = tuple(0 if n == 1 else i[r - 2 - (a.ndim - 2) + d] for d, n in enumerate(a.shape[:-2]))
        bb = tuple(0 if n == 1 else i[r - 2 - (b.ndim - 2) + d] for d, n in enumerate(b.shape[:-2]))

        def term(k):
            ia, ib = ba + (i[-2], k), bb + (k, i[-1])
            return (_centered(a[ia], azp, broadcast_index(azp, ia))
                    * _centered(b[ib], bzp, broadcast_index(bzp, ib)))
        return rsum(term, kdim)

    return [compute(o.name, o.shape, body, I32, tag="matmul", hints={"tile": (r - 2, r - 1)})]


register("matmul_integer", FusionKind.OUT_FUSABLE, _matmul_integer_infer, _matmul_integer_compute)


def _conv_integer_infer(ins, attrs):
    xs, ws = static_shape(ins[0], "conv_integer input"), static_shape(ins[1], "conv_integer weights")
    _int_operand(ins[0], "conv_integer input")
    _int_operand(ins[1], "conv_integer weights")
    group = int(attrs.get("group", 1))
    if len(xs) < 3 or len(ws) != len(xs) or xs[1] != ws[1] * group or ws[0] % group:
        raise ShapeError(f"conv_integer input {xs} and weights {ws} do not agree (group {group})")
    nd = len(xs) - 2
    strides, pb, pe, dil = window_attrs(attrs, nd, "conv_integer")
    spatial = tuple(window_out_size(n, k, s, d, b, e) for n, k, s, d, b, e in zip(xs[2:], ws[2:], strides, dil, pb, pe))
    if min(spatial) < 1:
        raise ShapeError(f"conv_integer kernel {ws[2:]} does not fit input {xs[2:]} with pads {pb + pe}")
    return [TensorType((xs[0], ws[0]) + spatial, I32)]


def _conv_integer_compute(ins, outs, attrs):
    """y = sum (x - x_zp) * (w - w_zp) over (ic, kernel); padding reads as x_zp (adds 0).

    ``x - x_zp`` is materialized once in int32 with its padding (stage ``__xc``), so the
    inner loop reads it without bounds tests.
    """
    x, w, o = ins[0], ins[1], outs[0]
    xzp, wzp = ins[2], ins[3]  # scalars, or one weight zero point per output channel
    nd, group = x.ndim - 2, int(attrs.get("group", 1))
    strides, pb, pe, dil = window_attrs(attrs, nd, "conv_integer")
    padded = x.shape[:2] + tuple(n + b + e for n, b, e in zip(x.shape[2:], pb, pe))

    def centered_x(n, c, *sp):
        src = tuple(offset(v, -b) for v, b in zip(sp, pb))
        conds = [c_ for v, b, m in zip(sp, pb, x.shape[2:]) for c_ in ((v.ge(b),) if b else ()) + (v.lt(b + m),)]
        val = _centered(x[(n, c) + src], xzp, (0,) * xzp.ndim)
        return val if not any(pb) and not any(pe) else Select(conj(conds), val, Const(0, I32))

    xc = compute(f"{o.name}__xc", padded, centered_x, I32, tag="pad", inline=False)
    src = xc.tensor
    icg, ocg, kernel = w.shape[1], w.shape[0] // group, w.shape[2:]

    def body(n, oc, *sp):
        def term(ic, *k):
            ch = ic if group == 1 else (oc // ocg) * icg + ic
            pos = tuple(scaled(sp[j], strides[j]) + scaled(k[j], dil[j]) for j in range(nd))
            wz = (0,) * wzp.ndim if wzp.shape in ((), (1,)) else (oc,)
            return src[(n, ch) + pos] * _centered(w[(oc, ic) + tuple(k)], wzp, wz)
        return rsum(term, (icg,) + tuple(kernel))

    return [xc, compute(o.name, o.shape, body, I32, tag="conv", hints={"tile": (1, o.ndim - 1)})]


register("conv_integer", FusionKind.OUT_FUSABLE, _conv_integer_infer, _conv_integer_compute)


# -- requantize: int32 accumulator -> int8/uint8 ------------------------------------------------------

def _requantize_infer(ins, attrs):
    acc, mult, zp = ins
    if acc.dtype is not I32 or not mult.dtype.is_float or zp.dtype not in (DType.int8, DType.uint8):
        raise ShapeError(f"requantize takes an int32 accumulator, a float multiplier and an int8/uint8 "
                         f"zero point; got {acc.dtype}, {mult.dtype}, {zp.dtype}")
    shape = static_shape(acc, "requantize accumulator")
    if broadcast_shapes(shape, mult.shape, zp.shape) != shape:
        raise ShapeError(f"requantize multiplier {mult} and zero point {zp} do not broadcast to {shape}")
    return [TensorType(shape, zp.dtype)]


def _requantize_compute(ins, outs, attrs):
    acc, mult, zp = ins
    o = outs[0]

    ft = F32 if attrs.get("float32") else F64

    # rounded before the zero point is added, as ONNX Runtime does: round(v) + zp. With the
    # zero point added first, a value half way between two integers went to the other even
    # neighbour when the zero point was odd, and in float32 the sum could cross the half
    def body(*i):
        v = _as(acc[i], ft) * _as(mult[broadcast_index(mult, i)], ft)
        return saturate(Un("round", v, ft) + _as(zp[broadcast_index(zp, i)], ft), o.dtype)

    return [compute(o.name, o.shape, body, o.dtype)]


register("requantize", FusionKind.BROADCAST, _requantize_infer, _requantize_compute)
