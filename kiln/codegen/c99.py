"""C99 renderer for microcontrollers (Cortex-M): no OpenMP, no ``_Float16``, no libmvec,
32-bit indexing, and integer dot products lowered to DSP/Helium helpers.

Differences from the host :class:`~kiln.codegen.c.CRenderer`, and why:

- Parallel and SIMD loops are plain loops: a Cortex-M has one core and no OpenMP runtime.
- Loop counters and subscripts are ``int32_t``: the host spells index arithmetic in
  ``int64_t``, which on a 32-bit core costs two registers and a call for every
  multiply-add of an address. No tensor on a microcontroller has 2^31 elements.
- ``float16`` has no portable C99 spelling: it is refused with a clear error.
- An integer reduction loop ``acc += (int32)a[i + p] * (int32)b[i + q]`` over 8-bit
  operands, contiguous in both, becomes one call to ``kiln_dot_<a>_<b>(a + p, b + q, n)``
  from ``kiln_dsp.h`` (written by the project, CMSIS-style): ``__SXTB16``/``__UXTB16``
  and ``__SMLAD`` on Cortex-M4/M7 (two multiply-adds per instruction), Helium
  ``VMLADAVA`` on Cortex-M55 when built with ``-mcpu=cortex-m55``, plain C elsewhere.
"""
from __future__ import annotations

from dataclasses import replace

from kiln.codegen.c import CRenderer
from kiln.errors import VerificationError
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const, Load, affine_coeffs, row_major, substitute
from kiln.ir.loop import SERIAL, For, Store

_DOT_TYPES = {DType.int8: "s8", DType.uint8: "u8"}


class C99Renderer(CRenderer):
    steal_parallel_loops = False  # one core, no threads
    type_map = {k: v for k, v in CRenderer.type_map.items() if k is not DType.float16}

    def __init__(self, dsp: bool = True):
        super().__init__()
        self.dsp = dsp
        self.dot_used: set[str] = set()   # kiln_dot_* helpers the kernels call
        self._index_depth = 0

    def ctype(self, dtype: DType) -> str:
        if dtype is DType.float16:
            raise VerificationError("float16 has no C99 spelling on microcontrollers; compile the model in "
                                    "float32 or quantize it to int8 (kiln.quantize)")
        return super().ctype(dtype)

    # -- 32-bit indexing ---------------------------------------------------------------------------
    def literal(self, c: Const) -> str:
        if self._index_depth and c.dtype is DType.int64:
            return str(int(c.value))   # an index constant: int arithmetic, not int64_t
        return super().literal(c)

    def subscript(self, name: str, indices) -> str:
        self._index_depth += 1
        try:
            return super().subscript(name, indices)
        finally:
            self._index_depth -= 1

    # -- statements ----------------------------------------------------------------------------------
    def stmt(self, s, depth: int, in_parallel: bool = False):
        if not isinstance(s, For):
            return super().stmt(s, depth, in_parallel)
        dot = self.dot_call(s) if self.dsp else None
        if dot is not None:
            self.emit(dot, depth)
            return
        if s.kind == "unrolled" and isinstance(s.extent, int):
            self.emit(f"#pragma GCC unroll {s.extent}", depth)
        v = s.var.name
        self.emit(f"for (int32_t {v} = 0; {v} < {self.dim(s.extent)}; ++{v}) {{", depth)
        self.stmt(replace(s, kind=SERIAL).body, depth + 1, False)
        self.emit("}", depth)

    def vector_pragma(self, loop):  # no OpenMP on a microcontroller
        return None

    # -- integer dot products ------------------------------------------------------------------------
    def dot_call(self, loop: For) -> str | None:
        """``acc = acc + kiln_dot_u8s8(&a[p], &b[q], n);`` for a contiguous 8-bit dot product."""
        body = loop.body
        if not (isinstance(body, Store) and not body.indices and isinstance(loop.extent, int)):
            return None
        acc = self.buffers.get(body.buffer)
        v = body.value
        if (acc is None or acc.dtype is not DType.int32 or not isinstance(v, Bin) or v.op != "add"
                or not isinstance(v.a, Load) or v.a.buffer != body.buffer or v.a.indices):
            return None
        prod = v.b
        if not (isinstance(prod, Bin) and prod.op == "mul"):
            return None
        operands = []
        for side in (prod.a, prod.b):
            if not (isinstance(side, Cast) and side.dtype is DType.int32 and isinstance(side.a, Load)):
                return None
            ld = side.a
            kind = _DOT_TYPES.get(self.buffers[ld.buffer].dtype)
            if kind is None or self.buffers[ld.buffer].scope == "local":
                return None
            flat = self._flat_index(ld)
            coeffs = affine_coeffs(flat) if flat is not None else None
            if coeffs is None or coeffs.get(loop.var.name, 0) != 1:
                return None
            start = substitute(flat, {loop.var.name: Const(0, DType.int64)})
            self._index_depth += 1
            try:
                operands.append((kind, f"&{ld.buffer}[{self.expr(start)}]"))
            finally:
                self._index_depth -= 1
        (ka, pa), (kb, pb) = operands
        if (ka, kb) == ("s8", "u8"):   # the helpers take (u8|s8, s8) and (s8, u8) by swapping
            (ka, pa), (kb, pb) = (kb, pb), (ka, pa)
        name = f"kiln_dot_{ka}{kb}"
        self.dot_used.add(name)
        return f"{body.buffer} = {body.buffer} + {name}({pa}, {pb}, {loop.extent});"

    def _flat_index(self, ld: Load):
        """The row-major flat index of a load into a global buffer, as an expression."""
        buf = self.buffers[ld.buffer]
        if not all(isinstance(n, int) for n in buf.shape):
            return None
        return row_major(ld.indices, buf.shape)


C99_PRELUDE = """\
#include <stdint.h>
#include <string.h>
{math}
static inline int64_t kiln_floordiv(int64_t a, int64_t b) {{
  int64_t q = a / b;
  return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q;
}}
static inline int64_t kiln_mod(int64_t a, int64_t b) {{
  int64_t r = a % b;
  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}}
static inline int64_t kiln_div(int64_t a, int64_t b) {{ return a / b; }}
static inline int64_t kiln_fmod(int64_t a, int64_t b) {{ return a % b; }}
"""


def c99_prelude(uses_float: bool, uses_dot: bool) -> str:
    """Includes and helpers: ``math.h`` only for models that compute in float (the int8
    path needs no libm), ``kiln_dsp.h`` only when a dot-product helper is called."""
    text = C99_PRELUDE.format(math="#include <math.h>" if uses_float else "")
    return text + ('#include "kiln_dsp.h"\n' if uses_dot else "")


__all__ = ["C99Renderer", "c99_prelude"]
