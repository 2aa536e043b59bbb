"""A float register tile whose weights are dequantized inside the reduction, printed with
AVX-512 intrinsics: the weight-only int4/int8 GEMV/GEMM (``matmul_wq_cols``).

The default schedule leaves that kernel as

    for g < groups:                               (serial)
      for j < G/2:                                (serial)
        for r < R (unrolled):
          x_lo = x[r, ..]; x_hi = x[r, ..]       (scalars hoisted out of the vector loop)
          for c < C (vectorized):                 (C a multiple of 16)
            acc[r][c] = acc[r][c] + E(c)          (E: x_lo * (float(q & 15) * s + m) + ...)

gcc vectorizes the ``c`` loop but, keeping ``acc`` in memory and working in 256-bit halves,
widens each weight byte in two steps (bytes to words to ints) and reloads the accumulators
at every step: on a Zen 4 host the W4 GEMV 1x4096x11008 ran in 1.7-2.4 ms, compute-bound,
where memory allows about 0.8 ms. This prints the nest with the accumulators in registers
for the whole reduction (loaded before it, stored after, as the VNNI tile does) and ``E``
16 lanes at a time: one ``vpmovzxbd`` per 16 weight bytes, ``and``/shift for the nibbles,
``vcvtdq2ps``, and float multiply-adds; loads that do not depend on ``c`` (the activations)
are broadcast.

Every operation is the lane-wise C operation of the scalar expression (gcc contracts the
same multiply-adds in both forms), so the sums are the same up to that contraction. The
form sits under ``#if defined(__AVX512F__)`` with the plain nest in ``#else``. A nest with
anything else in it (another store, a load this module cannot prove contiguous or
invariant in ``c``) is printed as plain C.
"""
from __future__ import annotations

from dataclasses import dataclass

from kiln.codegen.x86_epilogue import contiguous_or_invariant
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const, Load, free_vars, simplify, substitute, walk
from kiln.ir.loop import Alloc, For, Seq, Store, SERIAL, UNROLLED, VECTORIZED, subst_stmt, walk_stmts

F32, I32, U8, I8 = DType.float32, DType.int32, DType.uint8, DType.int8
LANES = 16
MAX_ACCUMULATORS = 16   # of 32 zmm registers: the rest hold weights, scales and broadcasts


class Unsupported(Exception):
    pass


@dataclass(frozen=True, slots=True)
class DequantTile:
    acc: str        # the local float accumulator, (rows, columns)
    rows: int
    chunks: int     # columns / 16


def match_dequant_tile(loop: For, buffers) -> DequantTile | None:
    """The tile when ``loop`` (a serial reduction loop) holds the nest of the module
    docstring: one accumulating store into a local float (rows, 16k) buffer from a
    vectorized loop, whose value dequantizes an integer load; other stores only to local
    scalars; every loop of a static extent."""
    if loop.kind != SERIAL or not isinstance(loop.extent, int):
        return None
    buffers = {**buffers, **{s.buffer.name: s.buffer for s in walk_stmts(loop) if isinstance(s, Alloc)}}
    acc_stores, vector_loops = [], []
    for s in walk_stmts(loop):
        if isinstance(s, For):
            if not isinstance(s.extent, int) or s.kind not in (SERIAL, UNROLLED, VECTORIZED):
                return None
            if s.kind == VECTORIZED:
                vector_loops.append(s)
        elif isinstance(s, Store):
            b = buffers.get(s.buffer)
            if b is None or b.scope != "local":
                return None
            if b.shape:
                acc_stores.append(s)
        elif not isinstance(s, (Seq, Alloc)):
            return None
    if len(acc_stores) != 1 or len(vector_loops) != 1 or vector_loops[0].body is not acc_stores[0]:
        return None
    store, vloop = acc_stores[0], vector_loops[0]
    acc = buffers[store.buffer]
    if acc.dtype is not F32 or len(acc.shape) != 2 or acc.shape[1] % LANES or vloop.extent != acc.shape[1]:
        return None
    rows, chunks = int(acc.shape[0]), int(acc.shape[1]) // LANES
    if rows * chunks > MAX_ACCUMULATORS or store.indices[1] != vloop.var:
        return None
    value = store.value
    if not (isinstance(value, Bin) and value.op == "add" and value.a == Load(store.buffer, store.indices, F32)):
        return None
    if any(isinstance(e, Load) and e.buffer == store.buffer for e in walk(value.b)):
        return None
    if not any(isinstance(e, Cast) and e.dtype is F32 and not e.a.dtype.is_float for e in walk(value.b)):
        return None  # no dequantization: a float GEMM tile, which gcc already does well
    return DequantTile(store.buffer, rows, chunks)


class DequantPrinter:
    """Prints a matched nest through the renderer's ``emit``/``expr``/``subscript``."""

    def __init__(self, renderer, tile: DequantTile):
        self.r, self.tile = renderer, tile

    def acc(self, row: int, chunk: int) -> str:
        return f"kiln_facc_{row}_{chunk}"

    def nest(self, s, depth: int) -> None:
        r = self.r
        if isinstance(s, Seq):
            for x in s.stmts:
                self.nest(x, depth)
        elif isinstance(s, Alloc):
            if s.buffer.shape:
                raise Unsupported("an array inside the tile")
            r.buffers[s.buffer.name] = s.buffer
            r.emit(f"{r.vtype(s.buffer.dtype)} {s.buffer.name};", depth)
            self.nest(s.body, depth)
        elif isinstance(s, Store) and s.buffer != self.tile.acc:
            r.emit(f"{s.buffer}{r.subscript(s.buffer, s.indices)} = {r.expr(s.value)};", depth)
        elif isinstance(s, For) and s.kind == UNROLLED:
            for k in range(s.extent):  # each copy in a block of its own: its scalars are its own
                r.emit("{", depth)
                self.nest(subst_stmt(s.body, {s.var.name: Const(k, DType.int64)}), depth + 1)
                r.emit("}", depth)
        elif isinstance(s, For) and s.kind == VECTORIZED:
            store = s.body
            row = simplify(store.indices[0])
            if not isinstance(row, Const):
                raise Unsupported("accumulator row not fixed by the unrolled loops")
            for chunk in range(self.tile.chunks):
                code, kind = self.vec(store.value.b, s.var.name, s.extent, chunk * LANES)
                if kind != "ps":
                    raise Unsupported("integer accumulation")
                name = self.acc(int(row.value), chunk)
                r.emit(f"{name} = _mm512_add_ps({name}, {code});", depth)
        elif isinstance(s, For):
            v = s.var.name
            r.emit(f"for (int64_t {v} = 0; {v} < {s.extent}; ++{v}) {{", depth)
            self.nest(s.body, depth + 1)
            r.emit("}", depth)
        else:
            raise Unsupported(type(s).__name__)

    def vec(self, e, c: str, extent: int, base: int) -> tuple[str, str]:
        """``e`` for lanes ``c = base .. base + 15``: (code, "ps" or "epi32")."""
        r = self.r
        if isinstance(e, Const):
            if e.dtype is F32:
                return f"_mm512_set1_ps({r.expr(e)})", "ps"
            if e.dtype in (I32, U8, I8):
                return f"_mm512_set1_epi32({int(e.value)})", "epi32"
        elif isinstance(e, Load) and c not in set().union(*(free_vars(i) for i in e.indices)):
            if e.dtype is F32:
                return f"_mm512_set1_ps({r.expr(e)})", "ps"
            if e.dtype in (I32, U8, I8):
                return f"_mm512_set1_epi32((int32_t)({r.expr(e)}))", "epi32"
        elif isinstance(e, Load) and e.dtype in (F32, I32, U8, I8):
            if not contiguous_or_invariant(e.buffer, e.indices, c, extent, r.buffers, must_vary=True):
                raise Unsupported(f"{e.buffer} is not contiguous in {c}")
            idx = tuple(simplify(substitute(i, {c: Const(base, DType.int64)})) for i in e.indices)
            addr = f"&{e.buffer}{r.subscript(e.buffer, idx)}"
            if e.dtype is F32:
                return f"_mm512_loadu_ps({addr})", "ps"
            if e.dtype is I32:
                return f"_mm512_loadu_si512((const void*){addr})", "epi32"
            widen = "_mm512_cvtepu8_epi32" if e.dtype is U8 else "_mm512_cvtepi8_epi32"
            return f"{widen}(_mm_loadu_si128((const __m128i*){addr}))", "epi32"
        elif isinstance(e, Cast):
            code, kind = self.vec(e.a, c, extent, base)
            if e.dtype is I32 and e.a.dtype in (U8, I8, I32):
                return code, "epi32"  # held as int32 lanes already (widened when loaded)
            if e.dtype is F32 and kind == "epi32" and e.a.dtype in (I32, U8, I8):  # int8 weights: directly
                return f"_mm512_cvtepi32_ps({code})", "ps"
        elif isinstance(e, Bin) and e.dtype is F32:
            fn = {"add": "_mm512_add_ps", "sub": "_mm512_sub_ps", "mul": "_mm512_mul_ps"}.get(e.op)
            a, b = self.vec(e.a, c, extent, base), self.vec(e.b, c, extent, base)
            if fn and a[1] == b[1] == "ps":
                return f"{fn}({a[0]}, {b[0]})", "ps"
        elif isinstance(e, Bin) and e.dtype is I32:
            a = self.vec(e.a, c, extent, base)
            if e.op in ("bitand", "shr") and isinstance(e.b, Const) and a[1] == "epi32":
                k = int(e.b.value)
                if e.op == "bitand":
                    return f"_mm512_and_si512({a[0]}, _mm512_set1_epi32({k}))", "epi32"
                if 0 <= k < 32:
                    return f"_mm512_srai_epi32({a[0]}, {k})", "epi32"
        raise Unsupported(str(e)[:80])


__all__ = ["DequantTile", "DequantPrinter", "Unsupported", "match_dequant_tile"]
