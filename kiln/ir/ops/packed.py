"""Matrix multiplication with B packed in column panels (GotoBLAS's packed B).

A row-major B (..., K, N) read by a register tile of ``nb`` columns jumps N floats from one
``k`` to the next; when N * 4 bytes is a multiple of 4 KiB (N = 1024, 2048, 3072...) every
row of a tile's panel maps to the same L1 sets and the cache thrashes. Packed as
(..., N/nb, K, nb), a panel is one contiguous strip: the inner loop streams it. Measured
on GEMM 1024^3 (AVX-512, 2 threads, 8 x 32 tile): 235 GFLOP/s row-major, 466 packed.

- ``pack_panels``: B (..., K, N) -> (..., N/nb, K, nb), an index remapping. Constant
  weights are packed at compile time (constant folding runs it); a computed B (attention's
  keys) is packed by its own small kernel.
- ``matmul_packed``: A (..., M, K) x packed B -> (..., M, N), the same arithmetic as
  ``matmul`` in the same order (bit-identical results).

``passes/pack_matmul.py`` decides which matmuls use it.
"""
from __future__ import annotations

from kiln.errors import ShapeError
from kiln.ir.compute import compute, rsum
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, broadcast_shapes, register
from kiln.ir.ops.nn import _batch_index, _check_same_dtype, widen


def _panel(attrs) -> int:
    return int(attrs["panel"])


def _pack_infer(ins, attrs):
    *batch, k, n = tuple(ins[0].shape)
    nb = _panel(attrs)
    if len(ins[0].shape) < 2 or not isinstance(n, int) or n % nb:
        raise ShapeError(f"pack_panels: B {tuple(ins[0].shape)} needs a static last dim divisible by the "
                         f"panel width {nb}")
    return [TensorType((*batch, n // nb, k, nb), ins[0].dtype)]


def _pack_compute(ins, outs, attrs):
    b, o = ins[0], outs[0]
    nb = _panel(attrs)

    def body(*i):
        *batch, p, k, j = i
        return b[tuple(batch) + (k, p * nb + j)]

    return [compute(o.name, o.shape, body, o.dtype)]


register("pack_panels", FusionKind.INJECTIVE, _pack_infer, _pack_compute)


def _matmul_packed_infer(ins, attrs):
    a, bp = tuple(ins[0].shape), tuple(ins[1].shape)
    nb = _panel(attrs)
    if len(a) < 2 or len(bp) < 3 or bp[-1] != nb:
        raise ShapeError(f"matmul_packed takes A (..., M, K) and packed B (..., N/{nb}, K, {nb}); "
                         f"got {a} and {bp}")
    _check_same_dtype(ins, "matmul_packed")
    if a[-1] != bp[-2]:
        raise ShapeError(f"matmul_packed inner dimensions differ: A {a} has K={a[-1]}, packed B {bp} has "
                         f"K={bp[-2]}; expected equal")
    batch = broadcast_shapes(a[:-2], bp[:-3])
    return [TensorType(tuple(batch) + (a[-2], bp[-3] * nb), ins[0].dtype)]


def _matmul_packed_compute(ins, outs, attrs):
    a, bp = ins
    o = outs[0]
    nb = _panel(attrs)
    r, kdim = o.ndim, a.shape[-1]

    def body(*i):
        ba = _batch_index(a, i[:-2])
        bb = tuple(0 if n == 1 else i[len(i) - 2 - (bp.ndim - 3) + k] for k, n in enumerate(bp.shape[:-3]))
        n = i[-1]
        return rsum(lambda k: widen(a[ba + (i[-2], k)]) * widen(bp[bb + (n // nb, k, n % nb)]), kdim)

    # ``panel_outer``: the column-panel loop runs outside the row-tile loop, so one panel
    # stays in L2 while every row tile streams past it. The register tile is one panel wide.
    return [compute(o.name, o.shape, body, o.dtype, tag="matmul",
                    hints={"tile": (r - 2, r - 1), "panel_outer": True, "tile_cols": nb})]


register("matmul_packed", FusionKind.OUT_FUSABLE, _matmul_packed_infer, _matmul_packed_compute)
