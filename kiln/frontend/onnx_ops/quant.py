"""Converters for QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger,
ConvInteger, QLinearMatMul and QLinearConv.

The QLinear ops become an integer op (int32 accumulation) followed by ``requantize`` with
the multiplier ``a_scale * b_scale / y_scale`` built from graph ops (folded when the scales
are constants, as in exported models). QuantizeLinear/DequantizeLinear take every quantized
type of ONNX: 2/4/8/16-bit integers and the float8/float4 formats (the QLinear and
*Integer ops take 8-bit integers).
"""
from __future__ import annotations

import numpy as np
import onnx

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.nn import ints_attr, kernel_shape, resolve_pads, static_shape
from kiln.ir.dtype import DType
from kiln.ir.ops.quant import quantized_type
from kiln.ir.ops import normalize_axis

_QUANT_OUT = {onnx.TensorProto.UINT8: DType.uint8, onnx.TensorProto.INT8: DType.int8,
              onnx.TensorProto.INT16: DType.int16}
_FLOATS = {onnx.TensorProto.FLOAT: DType.float32, onnx.TensorProto.FLOAT16: DType.float16,
           onnx.TensorProto.DOUBLE: DType.float64}


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _param_attrs(ctx, x: str, scale: str) -> dict:
    """Normalized axis and block size for the scale's layout (per tensor / axis / block)."""
    rank = len(static_shape(ctx, x, f"{ctx.node.op_type} input"))
    sshape = static_shape(ctx, scale, f"{ctx.node.op_type} scale")
    block = int(ctx.attr("block_size", 0) or 0) if ctx.opset >= 21 else 0
    axis = int(ctx.attr("axis", 1)) if ctx.opset >= 13 else 1
    if _size(sshape) == 1:
        return {"axis": 0, "block_size": 0}
    if block < 0:
        ctx.fail(f"block_size must be >= 0; got {block}")
    if not block and len(sshape) != 1:
        ctx.fail(f"a per-axis scale must be 1-D; got shape {sshape} (set block_size for blocked scales)")
    return {"axis": normalize_axis(axis, rank, "axis"), "block_size": block}


@converter("QuantizeLinear", since=10)
def _quantize(ctx, node):
    x, scale = ctx.input(0), ctx.input(1)
    zp = ctx.input(2) if ctx.has_input(2) else None
    attrs = _param_attrs(ctx, x, scale)
    out_attr = int(ctx.attr("output_dtype", 0) or 0)
    if zp is not None:
        out = ctx.type(zp).dtype
    elif out_attr:
        from kiln.frontend.onnx import onnx_dtype

        out = onnx_dtype(out_attr)
    else:
        out = DType.uint8
    if not quantized_type(out) or out is DType.int32:
        ctx.unsupported(f"quantizing to {out}: Kiln quantizes to 2/4/8/16-bit integers and float8/float4")
    precision = int(ctx.attr("precision", 0) or 0)
    if precision and precision not in _FLOATS:
        ctx.unsupported(f"precision {onnx.TensorProto.DataType.Name(precision)}")
    attrs.update(dtype=out.value, precision=_FLOATS[precision].value if precision else None,
                 saturate=int(ctx.attr("saturate", 1)))
    return ctx.emit("quantize_linear", [x, scale] + ([zp] if zp else []), attrs, out_names=ctx.outputs())


@converter("DequantizeLinear", since=10)
def _dequantize(ctx, node):
    x, scale = ctx.input(0), ctx.input(1)
    zp = ctx.input(2) if ctx.has_input(2) else None
    if not quantized_type(ctx.type(x).dtype):
        ctx.unsupported(f"dequantizing {ctx.type(x).dtype}")
    attrs = _param_attrs(ctx, x, scale)
    out_attr = int(ctx.attr("output_dtype", 0) or 0)
    if out_attr and out_attr not in _FLOATS:
        ctx.unsupported(f"output_dtype {onnx.TensorProto.DataType.Name(out_attr)}")
    attrs["dtype"] = (_FLOATS[out_attr] if out_attr else ctx.type(scale).dtype).value
    # Not folded here even for constant weights: the quantize pass needs DQ(int8 weights) to
    # build integer kernels; whatever it leaves is folded by the fold_constants pass.
    return ctx.emit("dequantize_linear", [x, scale] + ([zp] if zp else []), attrs, out_names=ctx.outputs(),
                    fold=False)


@converter("DynamicQuantizeLinear", since=11)
def _dynamic_quantize(ctx, node):
    outs = ctx.outputs()
    y, s, z = ctx.emit("dynamic_quantize_linear", [ctx.input(0)],
                       out_names=[outs[0], ctx.fresh("dql_scale"), ctx.fresh("dql_zp")])
    s = ctx.emit("reshape", [s], {"shape": ()}, out_names=[outs[1]] if len(outs) > 1 and outs[1] else None)[0]
    z = ctx.emit("reshape", [z], {"shape": ()}, out_names=[outs[2]] if len(outs) > 2 and outs[2] else None)[0]
    return [y, s, z]


# -- integer matmul / conv ------------------------------------------------------------------------------

def _zero_point(ctx, i: int, operand: str, per_row: bool) -> str:
    """Zero point input ``i`` shaped to broadcast against its operand (a 0 scalar if absent).

    A 1-D zero point of A is per row: reshaped (M, 1). One of B is per column: (N,) as is.
    """
    if not ctx.has_input(i):
        return ctx.add_const(np.zeros((), dtype=ctx.type(operand).dtype.np), "zp")
    zp = ctx.input(i)
    shape = static_shape(ctx, zp, "zero point")
    if per_row and len(shape) == 1 and shape[0] != 1:
        return ctx.emit("reshape", [zp], {"shape": (shape[0], 1)})[0]
    return zp


def _matrix_operands(ctx, a: str, b: str):
    for n, what in ((a, "A"), (b, "B")):
        if len(static_shape(ctx, n, f"{ctx.node.op_type} {what}")) < 2:
            ctx.unsupported("1-D operands (only matrices and batches of matrices are implemented)")


@converter("MatMulInteger", since=10)
def _matmul_integer(ctx, node):
    a, b = ctx.input(0), ctx.input(1)
    _matrix_operands(ctx, a, b)
    ins = [a, b, _zero_point(ctx, 2, a, True), _zero_point(ctx, 3, b, False)]
    return ctx.emit("matmul_integer", ins, out_names=ctx.outputs())


def _conv_attrs(ctx, x: str, w: str) -> dict:
    xs, ws = static_shape(ctx, x, "input"), static_shape(ctx, w, "weights")
    if len(ws) < 3 or len(xs) != len(ws):
        ctx.fail(f"expected input (N, C, *spatial) and weights of equal rank >= 3; got {xs} and {ws}")
    kernel = kernel_shape(ctx, ws)
    nd = len(kernel)
    strides, dil = ints_attr(ctx, "strides", nd, 1), ints_attr(ctx, "dilations", nd, 1)
    return {"strides": strides, "dilations": dil, "group": int(ctx.attr("group", 1)),
            "pads": resolve_pads(ctx, xs[2:], kernel, strides, dil)}


@converter("ConvInteger", since=10)
def _conv_integer(ctx, node):
    x, w = ctx.input(0), ctx.input(1)
    ins = [x, w, _zero_point(ctx, 2, x, False), _zero_point(ctx, 3, w, False)]
    return ctx.emit("conv_integer", ins, _conv_attrs(ctx, x, w), out_names=ctx.outputs())


def _multiplier(ctx, scales, shapes) -> str:
    """``s0 * s1 / s2`` in the scales' float type; each scale reshaped to ``shapes[k]`` when given."""
    names = []
    for s, shape in zip(scales, shapes):
        if shape is not None and _size(ctx.shape(s)) != 1:
            s = ctx.emit("reshape", [s], {"shape": shape})[0]
        names.append(s)
    prod = ctx.emit("mul", names[:2])[0]
    return ctx.emit("div", [prod, names[2]])[0]


@converter("QLinearMatMul", since=10)
def _qlinear_matmul(ctx, node):
    a, b = ctx.input(0), ctx.input(3)
    _matrix_operands(ctx, a, b)
    acc = ctx.emit("matmul_integer", [a, b, _zero_point(ctx, 2, a, True), _zero_point(ctx, 5, b, False)])[0]
    m = static_shape(ctx, a, "A")[-2]
    a_scale = ctx.input(1)
    mult = _multiplier(ctx, [a_scale, ctx.input(4), ctx.input(6)], [(m, 1), None, None])
    y_zp = ctx.input(7) if ctx.has_input(7) else ctx.add_const(np.zeros((), ctx.type(a).dtype.np), "zp")
    return ctx.emit("requantize", [acc, mult, y_zp], out_names=ctx.outputs())


@converter("QLinearConv", since=10)
def _qlinear_conv(ctx, node):
    x, w = ctx.input(0), ctx.input(3)
    attrs = _conv_attrs(ctx, x, w)
    acc = ctx.emit("conv_integer", [x, w, _zero_point(ctx, 2, x, False), _zero_point(ctx, 5, w, False)],
                   attrs)[0]
    oc = static_shape(ctx, w, "weights")[0]
    per_channel = (oc,) + (1,) * (len(ctx.shape(x)) - 2)
    if ctx.has_input(8):  # int32 bias, added to the accumulator before scaling
        bias = ctx.emit("reshape", [ctx.input(8)], {"shape": per_channel})[0]
        acc = ctx.emit("add", [acc, bias])[0]
    mult = _multiplier(ctx, [ctx.input(1), ctx.input(4), ctx.input(6)], [None, per_channel, None])
    y_zp = ctx.input(7) if ctx.has_input(7) else ctx.add_const(np.zeros((), ctx.type(x).dtype.np), "zp")
    return ctx.emit("requantize", [acc, mult, y_zp], out_names=ctx.outputs())
