"""Weight-only quantized matmul: float activations, int4/int8 weights in groups.

``matmul_wq(x, packed, scales, zeros)`` with ``x`` (..., M, K) float32, one scale and one
zero point (float32, (N, K/G)) per group of ``G`` weights along K, and weights packed at
compile time in the layout the kernel reads, one row per output column n:

- ``bits=8``: ``packed`` int8 (N, K), element k at [n, k];
- ``bits=4``: ``packed`` uint8 (N, K/2); in group g, byte g*G/2 + j holds element g*G + j in
  its low nibble and element g*G + G/2 + j in its high nibble. Both halves of the group
  then read ``x`` contiguously, so the inner loop vectorizes with no shuffles.

    y[.., m, n] = sum_g scale[n, g] * sum_{j} x[.., m, k(g, j)] * (q[n, k(g, j)] - zero[n, g])

The group's scale multiplies the inner sum once per group: dequantization is hoisted out of
the inner loop (a nested reduction, lowered to a per-group accumulator). Weights take 1/8
(int4) or 1/4 (int8) of the float32 bytes; a GEMV is memory bound, so that is its speed-up.
"""
from __future__ import annotations

from kiln.errors import ShapeError
from kiln.ir.compute import compute, rsum
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, register
from kiln.ir.ops.nn import static_shape

F32, U8 = DType.float32, DType.uint8
GROUP_SIZES = (16, 32, 64, 128, 256)


def _infer(ins, attrs):
    x, p = static_shape(ins[0], "matmul_wq input"), static_shape(ins[1], "matmul_wq weights")
    bits, g = int(attrs["bits"]), int(attrs["group"])
    if ins[0].dtype is not F32:
        raise ShapeError(f"matmul_wq takes float32 activations; got {ins[0].dtype}")
    if bits not in (4, 8) or g not in GROUP_SIZES:
        raise ShapeError(f"matmul_wq supports bits 4 or 8 and group sizes {GROUP_SIZES}; got bits={bits}, group={g}")
    k = x[-1] if x else 0
    if len(x) < 2 or k % g:
        raise ShapeError(f"matmul_wq input {x} must be (..., M, K) with K a multiple of the group size {g}")
    want_p = (p[0], k // 2) if bits == 4 else (p[0], k)
    want_dt = U8 if bits == 4 else DType.int8
    if len(p) != 2 or p != want_p or ins[1].dtype is not want_dt:
        raise ShapeError(f"matmul_wq {bits}-bit weights must be {want_dt}{list(want_p)}; got {ins[1]}")
    for t, what in ((ins[2], "scales"), (ins[3], "zero points")):
        if t.dtype is not F32 or tuple(t.shape) != (p[0], k // g):
            raise ShapeError(f"matmul_wq {what} must be float32[{p[0]}, {k // g}]; got {t}")
    return [TensorType(x[:-1] + (p[0],), F32)]


# Up to this many rows of activations, the kernel keeps per-lane partial sums (see
# ``_lane_partials``); above it the (N, lanes) temporary per row would cost more than the
# horizontal sums it saves, and a many-row matmul is compute bound anyway.
LANE_PARTIAL_MAX_ROWS = 4
LANES = 32  # partial sums per output column: two AVX-512 vectors, four AVX2 / NEON ones
# Rows of the register tile. Each lane's nibble -> float conversion keeps several vector
# temporaries live beside the accumulators: with the fp32 GEMM's 8 rows gcc spilled the
# tile to the stack on every step (143-217 stack accesses in the loop, AVX-512); 2 rows
# keep it in registers, and a memory-bound GEMV needs no more reuse of ``x`` than that.
TILE_ROWS = 2


def _nibbles(q, n, byte):
    b = Cast(q[n, byte], DType.int32)
    lo = Cast(Bin("bitand", b, Const(15, DType.int32), DType.int32), F32)
    hi = Cast(Bin("shr", b, Const(4, DType.int32), DType.int32), F32)
    return lo, hi


def _compute(ins, outs, attrs):
    x, q, scale, zero = ins
    o = outs[0]
    rows = 1
    for d in x.shape[:-1]:
        rows *= d if isinstance(d, int) else LANE_PARTIAL_MAX_ROWS + 1
    if rows <= LANE_PARTIAL_MAX_ROWS:
        return _lane_partials(ins, outs, attrs)
    bits, g = int(attrs["bits"]), int(attrs["group"])
    groups = x.shape[-1] // g

    def body(*i):
        lead, n = i[:-1], i[-1]

        def group_sum(gi):
            z = zero[n, gi]
            if bits == 8:
                inner = rsum(lambda j: x[lead + (gi * g + j,)] * (Cast(q[n, gi * g + j], F32) - z), g)
            else:
                def pair(j):
                    lo, hi = _nibbles(q, n, gi * (g // 2) + j)
                    return x[lead + (gi * g + j,)] * (lo - z) + x[lead + (gi * g + g // 2 + j,)] * (hi - z)
                inner = rsum(pair, g // 2)
            return scale[n, gi] * inner
        return rsum(group_sum, groups)

    return [compute(o.name, o.shape, body, F32, tag="gemv")]


def _lane_partials(ins, outs, attrs):
    """GEMV form: ``P[.., n, l]`` sums lane ``l`` of every chunk of every group, then
    ``y[.., n] = sum_l P[.., n, l]``.

    Summing a group to a scalar before scaling it (the form above) costs one horizontal
    vector sum per group and output -- 1.4 M of them in a 4096 x 11008 GEMV with groups of
    32, which made the kernel compute bound at a third of memory speed. Here a group's
    ``G/2`` bytes are read as chunks of ``L`` lanes; lane ``l`` of every chunk of every
    group accumulates into ``P[n, l]``, scaled by its group's scale (loaded once per group
    and row, outside the vector loop). ``P`` is a register tile of rows x lanes
    (``tile`` hint: the fp32 GEMM rule), each row's lanes summed once at the end.
    """
    x, q, scale, zero = ins
    o = outs[0]
    bits, g = int(attrs["bits"]), int(attrs["group"])
    groups = x.shape[-1] // g
    per_group = g // 2 if bits == 4 else g          # bytes of a group along a row
    lanes = min(per_group, LANES)
    chunks = per_group // lanes

    def partial(*i):
        lead, n, lane = i[:-2], i[-2], i[-1]

        def term(gi, c):
            z = zero[n, gi]
            j = c * lanes + lane if chunks > 1 else lane
            if bits == 8:
                v = x[lead + (gi * g + j,)] * (Cast(q[n, gi * g + j], F32) - z)
            else:
                lo, hi = _nibbles(q, n, gi * per_group + j)
                v = x[lead + (gi * g + j,)] * (lo - z) + x[lead + (gi * g + per_group + j,)] * (hi - z)
            return scale[n, gi] * v
        return rsum(term, (groups, chunks))

    r = o.ndim
    p = compute(f"{o.name}__lanes", o.shape + (lanes,), partial, F32, tag="matmul",
                hints={"tile": (r - 1, r), "tile_rows": TILE_ROWS}, inline=False)
    y = compute(o.name, o.shape, lambda *i: rsum(lambda lane: p.tensor[i + (lane,)], lanes), F32, tag="gemv")
    return [p, y]


register("matmul_wq", FusionKind.OUT_FUSABLE, _infer, _compute)
