"""Integer matmul / convolution with int32 outputs and packed weights: ``qmatmul_i32`` and
``qconv_i32``, the fast forms of ``matmul_integer`` / ``conv_integer`` (ONNX MatMulInteger,
ConvInteger) when the weights are constants.

Dynamic quantization (``onnxruntime.quantization.quantize_dynamic``) writes
``DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W, x_zp, W_zp) -> Cast -> Mul(scales)``:
the activation zero point is computed at run time, so it cannot be folded into a bias as
``qmatmul`` does. These ops take it as an input instead:

    y[.., m, n] = sum_k xu[.., m, k] * w[n, k]  -  (x_zp + act_offset) * wsum[n]

which equals ``sum_k (x - x_zp) * (W - W_zp)`` exactly in int32, with
- ``w = W - W_zp`` as int8 (the ``integer_ops`` pass checks it fits), packed (N, K) /
  (OC, KH, KW*C) as ``qmatmul``/``qconv`` pack it, and ``wsum[n] = sum_k w[n, k]``;
- ``xu`` the activations in uint8 (int8 ones moved by ``act_offset`` = 128), so the inner
  loop is the same u8 x s8 dot product (``vpdpbusd`` / ``sdot``) as ``qmatmul``'s;
- padding of ``qconv_i32`` filled with the run-time zero point, which contributes
  ``(x_zp - x_zp) * w = 0`` as ConvInteger's padding does.
"""
from __future__ import annotations

from kiln.errors import ShapeError
from kiln.ir.dtype import DType
from kiln.ir.expr import Cast, Const
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, register
from kiln.ir.ops.nn import static_shape
from kiln.ir.ops.qlinear import QTYPES, conv_dot_out_shape, conv_dot_stages, logical_weights, matmul_dot_stages

I32, U8 = DType.int32, DType.uint8


def _check(ins, n: int, what: str) -> int:
    """Common checks of (activations, weights, wsum, zero point); returns act_offset."""
    x, w, wsum, zp = ins
    if x.dtype not in QTYPES or w.dtype is not DType.int8:
        raise ShapeError(f"{what} takes int8/uint8 activations and int8 weights; got {x.dtype}, {w.dtype}")
    if wsum.dtype is not I32 or tuple(wsum.shape) != (n,):
        raise ShapeError(f"{what} weight sums must be int32 of shape ({n},); got {wsum}")
    size = 1
    for d in static_shape(zp, f"{what} zero point"):
        size *= d
    if zp.dtype is not x.dtype or size != 1:
        raise ShapeError(f"{what} zero point must be one {x.dtype} value; got {zp}")
    return 128 if x.dtype is DType.int8 else 0


def _centered_acc(zp, wsum, off: int):
    """The epilogue ``acc - (x_zp + off) * wsum[n]`` with the zero point read at run time."""
    z = Cast(zp[(0,) * zp.ndim], I32) + Const(off, I32)
    return lambda acc, n: acc - z * wsum[n]


# -- qmatmul_i32 ---------------------------------------------------------------------------------

def _qmatmul_infer(ins, attrs):
    a, w = static_shape(ins[0], "qmatmul_i32 A"), static_shape(ins[1], "qmatmul_i32 weights")
    w = logical_weights(w, attrs, "qmatmul_i32")
    if len(a) < 2 or len(w) != 2 or a[-1] != w[1]:
        raise ShapeError(f"qmatmul_i32 takes A (..., M, K) and packed weights (N, K); got {a} and {w}")
    _check(ins, w[0], "qmatmul_i32")
    return [TensorType(a[:-1] + (w[0],), I32)]


def _qmatmul_compute(ins, outs, attrs):
    a, w, wsum, zp = ins
    off = 128 if a.dtype is DType.int8 else 0
    return matmul_dot_stages(a, w, outs[0], off, _centered_acc(zp, wsum, off), attrs)


register("qmatmul_i32", FusionKind.OUT_FUSABLE, _qmatmul_infer, _qmatmul_compute)


# -- qconv_i32 -----------------------------------------------------------------------------------

def _qconv_infer(ins, attrs):
    x, w = static_shape(ins[0], "qconv_i32 input"), static_shape(ins[1], "qconv_i32 weights")
    w = logical_weights(w, attrs, "qconv_i32")
    shape = conv_dot_out_shape(x, w, attrs, "qconv_i32")
    _check(ins, w[0], "qconv_i32")
    return [TensorType(shape, I32)]


def _qconv_compute(ins, outs, attrs):
    x, w, wsum, zp = ins
    off = 128 if x.dtype is DType.int8 else 0
    pad = Cast(Cast(zp[(0,) * zp.ndim], I32) + Const(off, I32), U8)
    return conv_dot_stages(x, w, outs[0], dict(attrs, act_offset=off), pad, _centered_acc(zp, wsum, off))


register("qconv_i32", FusionKind.OUT_FUSABLE, _qconv_infer, _qconv_compute)
