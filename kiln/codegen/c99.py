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
- A dot-product tile of one pixel by four output channels (``Capabilities.dot_tile`` on
  Cortex-M, ``kiln/passes/dot_schedule.py``), whose reduction loop wraps the tile's channel
  loop, becomes one call to ``kiln_dot1x4_<a><b>(a + p, b + q, ldb, n, acc)``: each
  activation word is loaded and widened once for four dot products. On the M4/M7 a tile
  of two pixels by two channels, where pixels pair up, is ``kiln_dot2x2_<a><b>(a + p, lda,
  b + q, ldb, n, acc)``: each widened word feeds two sums. A uint8 activation read as int8
  (``int8(int32(x) - 128)``, ``offset_at_read``) is the operand kind ``x8``.
- A register tile of integer sums (a pool's channels) has its column loops unrolled on a
  core without a vector unit, so the sums stay in registers; Helium cores keep the loops,
  which gcc vectorizes.
- Helium only (``helium``): a write-back loop of four channels whose body is the high-word
  requantization (``qlinear.requant_high_word``) becomes ``kiln_requant4_<o>``, and a
  pooling sum of 8-bit channels into a register tile ``kiln_lane_add_<a>``: four int32
  lanes per instruction where the loop is scalar code.
"""
from __future__ import annotations

import math
from dataclasses import replace

from kiln.codegen.c import CRenderer
from kiln.errors import VerificationError
from kiln.ir.dtype import DType
from kiln.ir.expr import (Bin, Cast, Const, Load, Var, from_linear_terms, linear_terms, map_children, memoized,
                          row_major, simplify, substitute, walk)
from kiln.ir.loop import SERIAL, For, Store
from kiln.ir.ops.qlinear import requant_high_word, to_domain

_DOT_TYPES = {DType.int8: "s8", DType.uint8: "u8"}
TILE_COLUMNS_UNROLLED = 16   # the widest integer tile row unrolled (M4/M7 tiles are 8 wide)


class C99Renderer(CRenderer):
    steal_parallel_loops = False  # one core, no threads
    type_map = {k: v for k, v in CRenderer.type_map.items() if k is not DType.float16}
    # Each kernel a function of its own: gcc -O2 inlined the kernels called once into the
    # model's run function, where the DS-CNN's first and last convolutions ran 20-30 % more
    # instructions on the M4 than the same loops out of line (9.31M -> 8.64M per inference).
    function_attributes = "__attribute__((noinline)) "

    def __init__(self, dsp: bool = True, helium: bool = False, vector_unit: bool = False):
        super().__init__()
        self.dsp = dsp
        # the core has vector registers gcc vectorizes loops for by itself (Helium, with or
        # without Kiln's helpers): then a register tile's columns stay a loop (_tile_columns)
        self.vector_unit = vector_unit
        # four-lane helpers for the requantizing epilogue (kiln_requant4_*) and for widening
        # sums (kiln_lane_add_*): only where each is one vector sequence (Helium); on a DSP
        # core they would be the same scalar code as the loop they replace
        self.helium = helium
        self.dot_used: set[str] = set()   # kiln_dsp.h helpers the kernels call (_helper)
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

    # -- expressions ---------------------------------------------------------------------------------
    # int32 clamps to a whole 8-bit range: one saturating instruction (c_support's ``sat8``)
    _SATURATE = {(-128, 127): "kiln_ssat8", (0, 255): "kiln_usat8"}

    def binary(self, e: Bin) -> str:
        inner = e.a
        if (e.op == "min" and e.a.dtype is DType.int32 and isinstance(inner, Bin) and inner.op == "max"
                and isinstance(e.b, Const) and isinstance(inner.b, Const)):
            helper = self._SATURATE.get((int(inner.b.value), int(e.b.value)))
            if helper:
                self.helpers_used.add("sat8")
                return f"{helper}({self.expr(inner.a)})"
        return super().binary(e)

    # -- statements ----------------------------------------------------------------------------------
    def stmt(self, s, depth: int, in_parallel: bool = False):
        if not isinstance(s, For):
            return super().stmt(s, depth, in_parallel)
        dot = (self.dot_tile_call(s) or self.dot_call(s) or self.mac_tile_call(s)
               or (self.helium and (self.requant_call(s) or self.lane_add_call(s))) or None) if self.dsp else None
        if dot is not None:
            self.emit(dot, depth)
            return
        if isinstance(s.extent, int) and (s.kind == "unrolled" or self._tile_columns(s)):
            self.emit(f"#pragma GCC unroll {s.extent}", depth)
        v = s.var.name
        self.emit(f"for (int32_t {v} = 0; {v} < {self.dim(s.extent)}; ++{v}) {{", depth)
        self.stmt(replace(s, kind=SERIAL).body, depth + 1, False)
        self.emit("}", depth)

    def vector_pragma(self, loop):  # no OpenMP on a microcontroller
        return None

    def _tile_columns(self, loop: For) -> bool:
        """A vectorized loop of a few integer register-tile columns (its body stores to or
        reads a local int buffer: an integer pool's sums, their write-back) on a core without
        a vector unit: unrolled, so gcc keeps the accumulators in registers. Left a loop, gcc
        -O2 kept the tile on the stack, a load and a store per byte summed (VWW's global pool
        on the M4: 20,392 -> 8,324 instructions). Not on Helium, where gcc vectorizes the
        loop (unrolled, the digits CNN's uint8 max pool went from 574 to 6,430 instructions on
        the M55), nor for float tiles (unrolled, the digits CNN's float 3x3 conv ran 4 % more
        instructions on the M4)."""
        body = loop.body
        if (self.vector_unit or loop.kind != "vectorized" or loop.extent > TILE_COLUMNS_UNROLLED
                or not isinstance(body, Store)):
            return False
        loads = [x.buffer for x in walk(body.value) if isinstance(x, Load)]
        tiles = [self.buffers[name] for name in [body.buffer, *loads]]
        return any(t.scope == "local" and t.dtype.is_int for t in tiles)

    # -- integer dot products ------------------------------------------------------------------------
    def dot_call(self, loop: For) -> str | None:
        """``acc = acc + kiln_dot_u8s8(&a[p], &b[q], n);`` for a contiguous 8-bit dot product."""
        body = loop.body
        if not (isinstance(body, Store) and not body.indices and isinstance(loop.extent, int)):
            return None
        operands = self._unit_stride_operands(loop, self._dot_terms(body, self.buffers.get(body.buffer)))
        if operands is None:
            return None
        (ka, pa), (kb, pb) = operands
        return f"{body.buffer} = {body.buffer} + {self._helper(f'kiln_dot_{ka}{kb}', pa, pb, loop.extent)};"

    def dot_tile_call(self, loop: For) -> str | None:
        """A reduction loop over ``k`` whose body is a register tile, innermost
        ``acc[r][c] += (int32)a[.., r, k] * (int32)b[.., c, k]``, ``b`` an int8 weight matrix:

        - one row by C columns (loops of extent 1 and C; ``a`` the same for every column,
          ``b``'s columns ``ldb`` apart): ``kiln_dot1x4_u8s8(&a[p], &b[q], ldb, n, &acc[..])``
          for four columns, ``kiln_dot1x2`` for two (but x8 operands, Helium's, where
          it saves nothing), one ``kiln_dot`` per column otherwise; a tile of R rows by one
          column likewise (the int8 operand that moves takes ``b``'s place);
        - two rows by two columns (``a``'s rows ``lda`` apart, the same for both columns):
          ``kiln_dot2x2_u8s8(&a[p], lda, &b[q], ldb, n, &acc[0][0])``;
        - a tile of one output (a prime channel count): one ``kiln_dot``.

        None: not such a loop."""
        if not isinstance(loop.extent, int):
            return None
        tile, body = [], loop.body
        while isinstance(body, For) and isinstance(body.extent, int):
            tile.append(body)
            body = body.body
        if not tile or not isinstance(body, Store):
            return None
        wide = [t for t in tile if t.extent != 1]
        acc = self.buffers.get(body.buffer)
        terms = self._dot_terms(body, acc, local_operands=True)
        if terms is None or acc.scope != "local" or len(wide) > 2:
            return None
        zero = {t.var.name: Const(0, DType.int64) for t in tile if t.extent == 1}
        ranges = {t.var.name: t.extent for t in wide}
        names = [loop.var.name] + [t.var.name for t in wide]
        operands = []   # (kind, strides along the tile's wide loops, buffer, start pointer)
        for kind, ld in terms:
            flat = _without_tile_offsets(substitute(self._flat_index(ld), zero), ranges)
            strides = _strides(flat, names)
            if strides is None or strides[0] != 1:
                return None
            start = simplify(substitute(flat, {n: Const(0, DType.int64) for n in names}))
            operands.append((kind, strides[1:], ld.buffer, self._pointer(ld.buffer, start)))
        names = [getattr(i, "name", None) for i in body.indices]
        tile_names = [t.var.name for t in wide]
        if [n for n in names if n not in zero] != tile_names or not set(names) <= set(zero) | set(tile_names):
            return None
        if len(wide) == 2:   # rows x columns: the weights move along the columns only, the
            return self._dot2x2(loop, body, names, wide, operands)   # activations along rows
        # one wide loop (one operand moves along it, the other is the same run) or none
        moving = [o for o in operands if o[1] and o[1][0] != 0]
        if len(moving) > 1 or (wide and not moving) or (wide and wide[0].extent > 4):
            return None
        if not wide:
            call = self._dot(operands[0][::3], operands[1][::3], loop.extent)
            return None if call is None else f"{body.buffer}{'[0]' * len(names)} += {call};"
        (kv, (ld,), _, pv), shared = moving[0], next(o for o in operands if o is not moving[0])
        cols = wide[0].extent
        target = body.buffer + "".join("[{c}]" if n == wide[0].var.name else "[0]" for n in names)
        if kv == "s8" and (cols == 4 or (cols == 2 and shared[0] != "x8")):   # (x8: Helium's, 1x2 saves nothing)
            return self._helper(f"kiln_dot1x{cols}_{shared[0]}s8", shared[3], pv, ld, loop.extent,
                                f"&{target.format(c=0)}") + ";"
        calls = [self._dot((kv, pv + (f" + {c * ld}" if c else "")), shared[::3], loop.extent) for c in range(cols)]
        if None in calls:
            return None
        return " ".join(f"{target.format(c=c)} += {call};" for c, call in enumerate(calls))

    def _dot2x2(self, loop: For, body: Store, names, wide, operands) -> str | None:
        """``kiln_dot2x2_<a>s8(&a[p], lda, &b[q], ldb, n, &acc[0][0])`` for a 2 x 2 tile."""
        weights = [o for o in operands if o[1][1] != 0 and o[1][0] == 0]
        if len(weights) != 1 or weights[0][0] != "s8" or tuple(t.extent for t in wide) != (2, 2):
            return None
        (_, (_, ldb), _, pb) = weights[0]
        (ka, lda, _, pa) = next(o for o in operands if o is not weights[0])
        if lda[1] != 0 or lda[0] == 0:
            return None
        target = body.buffer + "".join("[0]" for _ in names)
        return self._helper(f"kiln_dot2x2_{ka}s8", pa, lda[0], pb, ldb, loop.extent, f"&{target}") + ";"

    def _dot(self, x, y, n) -> str | None:
        """``kiln_dot_<a><b>(x, y, n)`` for two (kind, pointer) operands in the order the
        helpers take them (``_helper_order``); None for a pair no helper takes."""
        (kx, px), (ky, py) = _helper_order(x, y)
        if ky != "s8" and (kx, ky) != ("u8", "u8"):
            return None
        return self._helper(f"kiln_dot_{kx}{ky}", px, py, n)

    def _helper(self, name: str, *args) -> str:
        """``name(args)``, a kiln_dsp.h helper, recorded as used."""
        self.dot_used.add(name)
        return f"{name}({', '.join(str(a) for a in args)})"

    def mac_tile_call(self, loop: For) -> str | None:
        """``kiln_lane_mac4_u8s8(&a[p], &b[q], &acc[..][0]);`` for a loop of four channels side by
        side, ``acc[.., c] += (int32)a[p + c] * (int32)b[q + c]`` (a taps-major depthwise
        convolution at one tap: kiln/passes/integer_layout.py). None: not such a loop."""
        body = loop.body
        if loop.extent != 4 or not isinstance(body, Store) or not body.indices:
            return None
        acc = self.buffers.get(body.buffer)
        terms = self._dot_terms(body, acc)
        first = self._tile_row(body.indices, loop.var.name)
        if terms is None or acc.scope != "local" or first is None:
            return None
        operands = self._unit_stride_operands(loop, terms)
        if operands is None or operands[0][0] == "x8":  # (depthwise reads uint8 as stored)
            return None
        (ka, pa), (kb, pb) = operands
        return self._helper(f"kiln_lane_mac4_{ka}{kb}", pa, pb,
                            f"&{self._index_text(Load(body.buffer, first, acc.dtype))}") + ";"

    def requant_call(self, loop: For) -> str | None:
        """``kiln_requant4_s8(&acc[..][0], &mult[p], &shift[p], zp, lo, hi, &out[q]);`` for a
        write-back loop of four channels whose body is the high-word requantization of a
        register tile (``qlinear.requant_high_word``: every shift 33 or more), the output, the
        multipliers and the shifts each one element apart per channel. The body must be exactly
        the expression ``requant_high_word`` builds from its leaves, so the helper computes
        the same integers. None: not such a loop."""
        body = loop.body
        if loop.extent != 4 or not isinstance(body, Store):
            return None
        leaves = _requant_leaves(body.value)
        out = self.buffers.get(body.buffer)
        if leaves is None or out is None or out.scope == "local" or out.dtype not in _DOT_TYPES:
            return None
        factors, shift, zp, lo, hi = leaves
        local = [ld for ld in factors if self.buffers[ld.buffer].scope == "local"]
        if len(local) != 1:
            return None
        acc, mult = local[0], next(ld for ld in factors if ld is not local[0])
        tile, var = self.buffers[acc.buffer], loop.var.name
        first = self._tile_row(acc.indices, var)
        if first is None:
            return None
        starts = [self._run_start(ld, var) for ld in (mult, shift, Load(body.buffer, body.indices, out.dtype))]
        if None in starts:
            return None
        return self._helper(f"kiln_requant4_{_DOT_TYPES[out.dtype]}",
                            f"&{self._index_text(Load(acc.buffer, first, tile.dtype))}", starts[0], starts[1],
                            zp, lo, hi, starts[2]) + ";"

    def lane_add_call(self, loop: For) -> str | None:
        """``kiln_lane_add_s8(&x[p], &acc[..][0], n);`` for ``acc[.., c] += (int32)x[p + c]``
        over n channels, n a multiple of 4 (a pooling sum of channels-last 8-bit
        activations into a register tile). None: not such a loop."""
        body = loop.body
        if not (isinstance(loop.extent, int) and loop.extent % 4 == 0 and isinstance(body, Store) and body.indices):
            return None
        acc, v = self.buffers.get(body.buffer), body.value
        if (acc is None or acc.scope != "local" or acc.dtype is not DType.int32 or not isinstance(v, Bin)
                or v.op != "add" or v.a != Load(body.buffer, body.indices, acc.dtype)
                or not (isinstance(v.b, Cast) and v.b.dtype is DType.int32 and isinstance(v.b.a, Load))):
            return None
        x = v.b.a
        kind = _DOT_TYPES.get(self.buffers[x.buffer].dtype)
        first = self._tile_row(body.indices, loop.var.name)
        start = self._run_start(x, loop.var.name) if kind else None
        if first is None or start is None:
            return None
        return self._helper(f"kiln_lane_add_{kind}", start,
                            f"&{self._index_text(Load(body.buffer, first, acc.dtype))}", loop.extent) + ";"

    def _pointer(self, buffer: str, flat) -> str:
        """``&buf[p]`` for a flat index ``p``; a local array of several dimensions (a gathered
        window) as ``&buf[0][0] + p``."""
        text = self._index_text(flat)
        dims = len(self.buffers[buffer].shape)
        if self.buffers[buffer].scope == "local" and dims > 1:
            return f"&{buffer}{'[0]' * dims}" + (f" + {text}" if text != "0" else "")
        return f"&{buffer}[{text}]"

    def _run_start(self, ld: Load, var: str) -> str | None:
        """``&buf[p]``: where a load from a global buffer starts when it moves one element
        per step of ``var``; None otherwise (a local buffer, or another stride)."""
        flat = self._flat_index(ld) if self.buffers[ld.buffer].scope != "local" else None
        if flat is None or _strides(flat, (var,)) != (1,):
            return None
        return f"&{ld.buffer}[{self._index_text(substitute(flat, {var: Const(0, DType.int64)}))}]"

    def _tile_row(self, indices, var: str):
        """A register tile's indices with the last, ``var`` itself, set to 0: where the lanes
        the loop over ``var`` touches start; None when ``var`` appears anywhere else."""
        last = indices[-1] if indices else None
        if (not isinstance(last, Var) or last.name != var
                or any(var in {v.name for v in walk(i) if isinstance(v, Var)} for i in indices[:-1])):
            return None
        return tuple(indices[:-1]) + (Const(0, DType.int64),)

    def _unit_stride_operands(self, loop: For, terms):
        """``((kind, "&a[p]"), (kind, "&b[q]"))``: where each 8-bit load of ``terms`` starts,
        both one element apart per step of ``loop``; None otherwise. An (s8, u8) pair comes
        back swapped: the helpers take (u8|x8|s8, s8)."""
        if terms is None:
            return None
        operands = [(kind, self._run_start(ld, loop.var.name)) for kind, ld in terms]
        if any(start is None for _, start in operands):
            return None
        return _helper_order(*operands)

    def _dot_terms(self, body: Store, acc, local_operands: bool = False):
        """The two 8-bit loads of ``acc[..] = acc[..] + (int32)x * (int32)y`` as (kind, load),
        or None. Loads from local buffers only with ``local_operands`` (a window gathered
        into a tile, ``dot_schedule.gather_window``)."""
        v = body.value
        if (acc is None or acc.dtype is not DType.int32 or not isinstance(v, Bin) or v.op != "add"
                or not isinstance(v.a, Load) or v.a.buffer != body.buffer or v.a.indices != body.indices):
            return None
        prod = v.b
        if not (isinstance(prod, Bin) and prod.op == "mul"):
            return None
        out = []
        for side in (prod.a, prod.b):
            if not (isinstance(side, Cast) and side.dtype is DType.int32):
                return None
            ld, flipped = _flipped_uint8(side.a), True
            if ld is None:
                ld, flipped = side.a, False
            if not isinstance(ld, Load):
                return None
            buf = self.buffers[ld.buffer]
            kind = "x8" if flipped else _DOT_TYPES.get(buf.dtype)
            if kind is None or (buf.scope == "local" and not local_operands) or self._flat_index(ld) is None:
                return None
            out.append((kind, ld))
        return out

    def _index_text(self, e) -> str:
        self._index_depth += 1
        try:
            return self.expr(e)
        finally:
            self._index_depth -= 1

    def _flat_index(self, ld: Load):
        """The row-major flat index of a load into a global buffer, as an expression."""
        buf = self.buffers[ld.buffer]
        if not all(isinstance(n, int) for n in buf.shape):
            return None
        return row_major(ld.indices, buf.shape)


def _without_tile_offsets(e, ranges: dict[str, int]):
    """``e`` with each ``(g*Y + R) // (g*m)`` written ``Y // m`` where ``R`` is a sum of tile
    variables (``0 <= v < ranges[v]``, non-negative coefficients) that stays below ``g``: the
    same integer. A grouped convolution's ``((4*o + c) // 8) * 4`` (the input channels of
    output channel ``4o + c``'s group) is then ``(o // 2) * 4``, one run for the whole
    four-channel tile."""
    def step(x):
        x = map_children(x, go)
        m = int(x.b.value) if isinstance(x, Bin) and x.op == "floordiv" and isinstance(x.b, Const) else None
        terms = linear_terms(x.a) if m and m > 0 else None
        if not terms:
            return x
        small = {a: c for a, c in terms.items() if isinstance(a, Var) and a.name in ranges and c >= 0}
        g = m
        for a, c in terms.items():
            if a != "" and a not in small:
                g = math.gcd(g, c)
        const = terms.get("", 0)
        if g <= 1 or not small or sum(c * (ranges[a.name] - 1) for a, c in small.items()) + const % g >= g:
            return x
        y = {a: c // g for a, c in terms.items() if a != "" and a not in small}
        return simplify(Bin("floordiv", from_linear_terms({**y, "": const // g}, x.dtype), Const(m // g, x.dtype),
                            x.dtype))

    go = memoized(step, {})
    return simplify(go(e))


def _helper_order(x, y):
    """Two (kind, ...) operands in the order kiln_dsp.h's helpers take them: (u8 | x8 | s8,
    s8), an (s8, u8) pair swapped (a product does not care)."""
    return (y, x) if x[0] == "s8" and y[0] != "s8" else (x, y)


def _flipped_uint8(e):
    """The uint8 load ``x`` when ``e`` is ``qlinear.to_domain(x, -128, int8)`` -- a uint8
    activation read as int8 where it is used (``offset_at_read``; one ``VEOR`` with 0x80 on
    Helium) -- or None."""
    if not (isinstance(e, Cast) and e.dtype is DType.int8):
        return None
    found = [x for x in walk(e) if isinstance(x, Load)]
    if len(found) != 1 or found[0].dtype is not DType.uint8 or to_domain(found[0], -128, DType.int8) != e:
        return None
    return found[0]


def _requant_leaves(value):
    """((a, b), shift, zp, lo, hi) when ``value`` is ``requant_high_word`` of
    ``int64(a) * int64(b)`` by ``shift`` (three int32 loads); None otherwise."""
    if not (isinstance(value, Cast) and value.dtype in _DOT_TYPES and isinstance(value.a, Bin)
            and value.a.op == "min" and isinstance(value.a.b, Const) and isinstance(value.a.a, Bin)
            and value.a.a.op == "max" and isinstance(value.a.a.b, Const)):
        return None
    shifted = value.a.a.a
    if not isinstance(shifted, Bin):
        return None
    zp = int(shifted.b.value) if shifted.op == "add" and isinstance(shifted.b, Const) else 0
    products = [e for e in walk(shifted) if isinstance(e, Bin) and e.op == "mul" and e.dtype is DType.int64
                and all(isinstance(f, Cast) and isinstance(f.a, Load) for f in (e.a, e.b))]
    if len(products) != 1:
        return None
    prod = products[0]
    factors = [prod.a.a, prod.b.a]
    loads = [e for e in walk(shifted) if isinstance(e, Load)]
    others = [ld for ld in loads if ld not in factors]
    if len(others) != 1 or any(ld.dtype is not DType.int32 for ld in loads):
        return None
    lo, hi = int(value.a.a.b.value), int(value.a.b.value)
    if requant_high_word(prod, others[0], zp, lo, hi, value.dtype) != value:
        return None
    return tuple(factors), others[0], zp, lo, hi


def _strides(flat, names) -> tuple[int, ...] | None:
    """The constant coefficient of each loop variable in ``names`` in a flat index whose other
    parts may be anything (a fused loop's divisions) that does not involve them; None when one
    of them appears other than linearly."""
    terms = linear_terms(flat)
    if terms is None:
        return None
    out = {}
    for atom, coeff in terms.items():
        if isinstance(atom, Var) and atom.name in names:
            out[atom.name] = coeff
        elif atom != "" and any(isinstance(v, Var) and v.name in names for v in walk(atom)):
            return None
    return tuple(out.get(n, 0) for n in names)


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
