"""Converter for ONNX Runtime's ``com.microsoft.MatMulNBits`` (weight-only int4/int8).

The packed weights, scales and zero points must be constants: they are repacked at compile
time into the layout of Kiln's ``matmul_wq`` kernel (``kiln/ir/ops/weight_only.py``).
"""
from __future__ import annotations

import numpy as np

from kiln.frontend.onnx_ops import converter
from kiln.ir.ops.weight_only import GROUP_SIZES


@converter("MatMulNBits", domain="com.microsoft")
def _matmul_nbits(ctx, node):
    from kiln.quantization.weight_only import kiln_pack, ort_unpack, unpack_zero_points

    k, n = int(ctx.attr("K")), int(ctx.attr("N"))
    bits, bs = int(ctx.attr("bits", 4)), int(ctx.attr("block_size"))
    if bits not in (4, 8) or bs not in GROUP_SIZES or k % bs:
        ctx.unsupported(f"bits={bits}, block_size={bs}, K={k}: Kiln implements 4- and 8-bit weights in "
                        f"groups of {GROUP_SIZES} dividing K")
    if ctx.has_input(4) or ctx.type(ctx.input(0)).dtype.value != "float32":
        ctx.unsupported("g_idx (act-order) or non-float32 activations")
    blocks = k // bs
    b = ctx.require_const(1, "packed weights")
    scales = ctx.require_const(2, "scales").astype(np.float32).reshape(n, blocks)
    if ctx.has_input(3):
        z = ctx.require_const(3, "zero points")
        zp = (z.astype(np.float32).reshape(n, blocks) if z.dtype.kind == "f"
              else unpack_zero_points(z, bits, n, blocks).astype(np.float32))
    else:
        zp = np.full((n, blocks), float(1 << (bits - 1)), np.float32)
    q = ort_unpack(b, bits, n, k)
    if bits == 8:
        zp = zp - 128.0  # kiln_pack stores q - 128 as int8
    ins = [ctx.input(0), ctx.add_const(kiln_pack(q, bits, bs), "wq"), ctx.add_const(scales, "wq_scale"),
           ctx.add_const(zp, "wq_zero")]
    attrs = {"bits": bits, "group": bs}
    if ctx.has_input(5):
        y = ctx.emit("matmul_wq", ins, attrs)[0]
        return ctx.emit("add", [y, ctx.input(5)], out_names=ctx.outputs())
    return ctx.emit("matmul_wq", ins, attrs, out_names=ctx.outputs())
