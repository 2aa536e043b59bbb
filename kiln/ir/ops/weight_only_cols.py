"""Weight-only quantized matmul with the weights blocked by output columns: ``matmul_wq_cols``.

The same function as ``matmul_wq`` (``kiln/ir/ops/weight_only.py``), in the layout a GEMV
wants. ``matmul_wq`` stores each output column's weights as one row, so a kernel reduces
along a row and must sum a vector horizontally somewhere; with groups of 32 that is once
per 16 bytes, and gcc vectorizes the short loop with 128-bit SLP code. Here the weights of
``T`` consecutive output columns sit side by side:

- ``packed`` (N/T, K/2, T) uint8 for 4 bits: byte [b, g*G/2 + j, t] holds, for column
  n = b*T + t, element g*G + j (low nibble) and g*G + G/2 + j (high nibble), the pairing of
  ``matmul_wq``; (N/T, K, T) int8 for 8 bits (``q - 128``, as ``matmul_wq``);
- ``scale`` and ``offset`` (N/T, K/G, T) float32, ``offset = -scale * zero_point``, so
  that a weight is ``q * scale + offset``: one fused multiply-add.

    y[.., m, n] = sum_{g, j} x[.., m, k(g, j)] * (q[n, k(g, j)] * scale[n, g] + offset[n, g])

The kernel is the fp32 GEMM rule with its column tile fixed to ``T`` (``tile_cols``): a
register tile of rows x T columns, the reduction outside, every weight byte loaded once as
part of a T-wide vector, no horizontal sums. The ``weight_only_layout`` rule of the
``integer_ops`` pass makes this op out of ``matmul_wq`` at compile time.
"""
from __future__ import annotations

from kiln.errors import ShapeError
from kiln.ir.compute import compute, rsum
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, register
from kiln.ir.ops.nn import static_shape
from kiln.ir.ops.weight_only import GROUP_SIZES

F32, U8, I32 = DType.float32, DType.uint8, DType.int32
COLUMN_BLOCK = 32   # T: two AVX-512 vectors of floats, four AVX2 ones
TILE_ROWS = 4       # rows of activations per register tile: 4 x 32 floats stay in registers on AVX2


def _infer(ins, attrs):
    x, p = static_shape(ins[0], "matmul_wq_cols input"), static_shape(ins[1], "matmul_wq_cols weights")
    bits, g = int(attrs["bits"]), int(attrs["group"])
    if ins[0].dtype is not F32:
        raise ShapeError(f"matmul_wq_cols takes float32 activations; got {ins[0].dtype}")
    if bits not in (4, 8) or g not in GROUP_SIZES:
        raise ShapeError(f"matmul_wq_cols supports bits 4 or 8 and group sizes {GROUP_SIZES}; "
                         f"got bits={bits}, group={g}")
    if len(x) < 2 or len(p) != 3 or x[-1] % g:
        raise ShapeError(f"matmul_wq_cols takes input (..., M, K), K a multiple of {g}, and weights (N/T, K', T); "
                         f"got {x} and {p}")
    k = x[-1]
    blocks, t = p[0], p[2]
    want = (blocks, k // 2 if bits == 4 else k, t)
    want_dt = U8 if bits == 4 else DType.int8
    if p != want or ins[1].dtype is not want_dt:
        raise ShapeError(f"matmul_wq_cols {bits}-bit weights must be {want_dt}{list(want)}; got {ins[1]}")
    for tt, what in ((ins[2], "scales"), (ins[3], "offsets")):
        if tt.dtype is not F32 or tuple(tt.shape) != (blocks, k // g, t):
            raise ShapeError(f"matmul_wq_cols {what} must be float32[{blocks}, {k // g}, {t}]; got {tt}")
    return [TensorType(x[:-1] + (blocks * t,), F32)]


def _compute(ins, outs, attrs):
    x, q, scale, off = ins
    o = outs[0]
    bits, g = int(attrs["bits"]), int(attrs["group"])
    t = q.shape[2]
    groups = x.shape[-1] // g
    half = g // 2

    def body(*i):
        lead, n = i[:-1], i[-1]
        nb, nt = n // t, n % t

        def term(gi, j):
            s, m = scale[nb, gi, nt], off[nb, gi, nt]
            if bits == 8:
                return x[lead + (gi * g + j,)] * (Cast(q[nb, gi * g + j, nt], F32) * s + m)
            b = Cast(q[nb, gi * half + j, nt], I32)
            lo = Cast(Bin("bitand", b, Const(15, I32), I32), F32)
            hi = Cast(Bin("shr", b, Const(4, I32), I32), F32)
            return x[lead + (gi * g + j,)] * (lo * s + m) + x[lead + (gi * g + half + j,)] * (hi * s + m)
        return rsum(term, (groups, half if bits == 4 else g))

    r = o.ndim
    return [compute(o.name, o.shape, body, F32, tag="matmul",
                    hints={"tile": (r - 2, r - 1), "tile_cols": t, "tile_rows": TILE_ROWS})]


register("matmul_wq_cols", FusionKind.OUT_FUSABLE, _infer, _compute)
