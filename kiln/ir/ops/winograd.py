"""Winograd convolution F(m x m, 3 x 3) in NCHWc: the transforms around a batched GEMM.

A 3x3, stride-1 convolution computes each m x m tile of outputs from an (m+2) x (m+2) tile
of inputs. Winograd's minimal filtering (Lavin & Gray, 2015) does it with
(m+2)^2 multiply-adds per input and output channel instead of 9 m^2:

    Y = A^T [ (G g G^T) . (B^T d B) ] A          (. : elementwise, g the 3x3 filter, d the tile)

F(4x4, 3x3) needs 36 multiplications for 16 outputs (4x fewer than direct), F(2x2, 3x3)
16 for 4 (2.25x fewer). Summed over input channels, the elementwise products become one
GEMM per transform coordinate ``e`` in 0..(m+2)^2:

    V[e, p, c] = (B^T d_{p,c} B)[e]           winograd_input   (this module)
    M[e, p, k] = sum_c V[e, p, c] U[e, c, k]   matmul_packed    (U = G g G^T, packed at compile time)
    Y[n, kb, y, x, k'] = (A^T M_{p,k} A)[y % m, x % m] + bias     winograd_output  (this module)

with ``p`` the tile (image, tile row, tile column). The transforms keep p as three axes and
the channels as (block, lane), so their loads index the loop variables directly; the GEMM
sees them merged by reshapes (views, no copies). ``passes/winograd.py`` decides which
convolutions take this route.

The transforms are written out term by term (their coefficients are small integers, exact
in float32, and most are zero), one case per transform coordinate in a chain of selects on
the coordinate. The default schedule puts that coordinate innermost and unrolls it; the loop
pass ``passes/specialize_unrolled.py`` then resolves each copy's selects, so every case is
straight-line code inside one vectorized loop over the channel block, its shared partial
sums computed once. Rounding: the transforms add and subtract products of inputs in a
different order than a direct convolution, so results differ from it in the last bits
(relative error around 1e-6 for F(2x2) and 1e-5 for F(4x4) at these magnitudes).
"""
from __future__ import annotations

from fractions import Fraction as F
from typing import Sequence

import numpy as np

from kiln.errors import ShapeError
from kiln.ir.compute import compute
from kiln.ir.expr import Const, Expr, Select
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, register
from kiln.ir.ops.nn import pad_stage

# (B^T, G, A^T) for each supported output tile m; interpolation points 0, +-1, +-2 and infinity.
MATRICES: dict[int, tuple[list, list, list]] = {
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [F(1, 2), F(1, 2), F(1, 2)], [F(1, 2), F(-1, 2), F(1, 2)], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[F(1, 4), 0, 0], [F(-1, 6), F(-1, 6), F(-1, 6)], [F(-1, 6), F(1, 6), F(-1, 6)],
         [F(1, 24), F(1, 12), F(1, 6)], [F(1, 24), F(-1, 12), F(1, 6)], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}


def alpha(m: int) -> int:
    """The input tile's side: m outputs of a 3-tap filter read m + 2 inputs."""
    return m + 2


def _tile(attrs) -> int:
    m = int(attrs["m"])
    if m not in MATRICES:
        raise ShapeError(f"Winograd output tile m={m} is not supported; expected one of {sorted(MATRICES)}")
    return m


def transform_weights(w: np.ndarray, m: int) -> np.ndarray:
    """Conv weights (K, C, 3, 3) -> U (alpha^2, C, K) = G g G^T per channel pair, computed in
    float64 and rounded once to float32 (the B operand of the transform GEMMs)."""
    g = np.array(MATRICES[m][1], dtype=np.float64)
    u = np.einsum("ai,kcij,bj->abck", g, w.astype(np.float64), g)
    a = alpha(m)
    return np.ascontiguousarray(u.reshape(a * a, w.shape[1], w.shape[0]).astype(np.float32))


def _combine(terms: Sequence[tuple[object, Expr]]) -> Expr:
    """sum(coef * x) with +-1 coefficients as plain adds and subtracts; zero terms left out."""
    out: Expr | None = None
    for coef, x in terms:
        if coef == 0:
            continue
        neg = coef < 0
        t = x if abs(coef) == 1 else x * Const(float(abs(coef)), x.dtype)
        if out is None:
            out = -t if neg else t
        else:
            out = out - t if neg else out + t
    return out if out is not None else Const(0.0)


def _two_sided(mat, tile: dict[tuple[int, int], Expr], row: int, col: int) -> Expr:
    """(mat tile mat^T)[row, col], the column transform inside the row transform so equal
    partial sums (shared by every ``row``) are built identically and computed once."""
    inner = {i: _combine([(mat[col][j], tile[i, j]) for j in range(len(mat[col]))])
             for i in range(len(mat[row])) if mat[row][i] != 0}
    return _combine([(mat[row][i], inner[i]) for i in inner])


def _cases(index: Expr, values: list[Expr]) -> Expr:
    """``values[index]`` as a select chain (resolved per case once ``index`` is unrolled)."""
    out = values[-1]
    for k in range(len(values) - 2, -1, -1):
        out = Select(index.eq(k), values[k], out)
    return out


# -- input transform ------------------------------------------------------------------------

def _grid(attrs) -> tuple[int, int]:
    return int(attrs["tiles"][0]), int(attrs["tiles"][1])


def _input_infer(ins, attrs):
    """x (N, C/bi, H, W, bi) -> V (alpha^2, N, TH, TW, C/bi, bi): a GEMM operand
    (alpha^2, tiles, C) once the middle and last axes are merged (a view)."""
    m = _tile(attrs)
    n, cb, h, w, bi = tuple(ins[0].shape)
    th, tw = _grid(attrs)
    if not all(isinstance(d, int) for d in (n, cb, h, w, bi)):
        raise ShapeError(f"winograd_input needs a static input shape; got {tuple(ins[0].shape)}")
    pt, pl, pb, pr = (int(p) for p in attrs["pads"])
    if th * m != h + pt + pb - 2 or tw * m != w + pl + pr - 2:
        raise ShapeError(f"winograd_input: a {th}x{tw} grid of {m}x{m} tiles does not cover the "
                         f"{h + pt + pb - 2}x{w + pl + pr - 2} outputs of a 3x3 window on input {(h, w)}")
    return [TensorType((alpha(m) ** 2, n, th, tw, cb, bi), ins[0].dtype)]


def _input_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    m = _tile(attrs)
    a, bt = alpha(m), MATRICES[m][0]
    pt, pl, pb, pr = (int(p) for p in attrs["pads"])
    # padded on every side the tile grid reaches: the transform reads without bounds tests
    stages = [pad_stage(f"{o.name}__pad", x, (pt, pl, 0), (pb, pr, 0))] if any((pt, pl, pb, pr)) else []
    src = stages[0].tensor if stages else x

    def body(e, n, row, col, cb, c):
        tile = {(i, j): src[n, cb, row * m + i, col * m + j, c] for i in range(a) for j in range(a)}
        return _cases(e, [_two_sided(bt, tile, r, s) for r in range(a) for s in range(a)])

    # Loops: tiles and channel blocks outside, the channel block vectorized, the transform
    # coordinate expanded inside it.
    hints = {"winograd": {"expand": (0,), "vector": 5}}
    return stages + [compute(o.name, o.shape, body, o.dtype, tag="winograd", hints=hints)]


register("winograd_input", FusionKind.OPAQUE, _input_infer, _input_compute)


# -- output transform -----------------------------------------------------------------------

def _output_infer(ins, attrs):
    """M (alpha^2, N, TH, TW, K/b, b) [, bias (K/b, 1, 1, b)] -> Y (N, K/b, TH*m, TW*m, b)."""
    m = _tile(attrs)
    shape = tuple(ins[0].shape)
    if len(shape) != 6 or shape[0] != alpha(m) ** 2 or shape[2:4] != _grid(attrs) or shape[5] != int(attrs["block"]):
        raise ShapeError(f"winograd_output takes M ({alpha(m) ** 2}, N, {', '.join(map(str, _grid(attrs)))}, "
                         f"K/{attrs['block']}, {attrs['block']}); got {shape}")
    _, n, th, tw, kb, b = shape
    return [TensorType((n, kb, th * m, tw * m, b), ins[0].dtype)]


def _output_compute(ins, outs, attrs):
    mm, o = ins[0], outs[0]
    bias = ins[1] if len(ins) > 1 else None
    m = _tile(attrs)
    a, at = alpha(m), MATRICES[m][2]

    def body(n, kb, y, x, k):
        tile = {(i, j): mm[i * a + j, n, y // m, x // m, kb, k] for i in range(a) for j in range(a)}
        # by row, then by column: expanding the column loop resolves the inner selects alone
        v = _cases(y % m, [_cases(x % m, [_two_sided(at, tile, r, s) for s in range(m)]) for r in range(m)])
        return v if bias is None else v + bias[kb, 0, 0, k]

    # Loops: tile rows and columns outside, the channel block vectorized, the m x m outputs
    # of a tile expanded inside it (their shared partial sums computed once).
    hints = {"winograd": {"expand": (2, 3), "expand_block": m, "vector": 4}}
    return [compute(o.name, o.shape, body, o.dtype, tag="winograd", hints=hints)]


register("winograd_output", FusionKind.OUT_FUSABLE, _output_infer, _output_compute)
