"""The host's C renderer with x86 intrinsics for the loop nests gcc cannot vectorize well:
the register tile of an integer dot-product kernel whose weights are in VNNI panels
(``kiln/passes/vnni_pack.py``), below, and the float tile of a weight-only (int4/int8)
matmul that dequantizes its weights inside the reduction (``kiln/codegen/x86_dequant.py``).

The default schedule (``kiln/passes/dot_schedule.py``) leaves that tile as

    for k < K:                                  (K a multiple of 4)
      for r < R (unrolled):  for c < C (unrolled):          (C a multiple of 16)
        acc[r][c] = acc[r][c] + int32(x[.. r .., k]) * int32(w[.. c .., k])

with ``x`` uint8 and ``w`` int8 read from panels where 16 consecutive ``c`` times 4
consecutive ``k`` are 64 contiguous bytes. gcc would vectorize it lane by lane (widen,
multiply, add); this prints it as one ``vpdpbusd`` per (row, panel) and 4 steps of ``k``:
the 4 activation bytes of a row broadcast to every lane, the accumulators held in
registers for the whole reduction:

    acc_r_p = dpbusd(acc_r_p, broadcast32(&x[r, k]), load512(&w[16 p, k]))

(``vpdpbusd`` is printed as inline asm, ``KILN_DPBUSD``: the intrinsic made gcc 12 copy
every accumulator through a second register at each step; see ``c_support.HELPERS["vnni"]``.)
Where ``x``'s storage holds 0 outside a box (a convolution reading its zero border in place,
``Buffer.zero_outside``), the reduction is printed in segments, one per window column, without
the rows whose bytes there are all border (``kiln/codegen/x86_border.py``).

Integer addition is exact and the lanes are the same sums in another order, so the result
equals the scalar loop's. Before printing, the renderer checks on the index expressions
themselves (evaluated at several points) that the bytes it loads as a block are the ones
the loop reads; a nest that does not match is printed as plain C. The intrinsic form sits
under ``#if defined(__AVX512VNNI__)`` with the plain loop in ``#else``, so the source
builds and computes the same on any x86 machine.
"""
from __future__ import annotations

from kiln.codegen.c import CRenderer
from kiln.codegen.x86_amx import AMX_BEGIN, AMX_GUARD, AmxTile, match_amx_tile, print_amx_tile
from kiln.codegen.x86_border import Segment, tile_segments
from kiln.codegen.x86_dot import I8, I32, LANES, U8, DotNest, bind as _bind, flat_offset, match_dot_nest
from kiln.codegen.x86_dequant import DequantPrinter, DequantTile, Unsupported as DequantUnsupported, match_dequant_tile
from kiln.codegen.x86_epilogue import LANES as EPILOGUE_LANES, EpilogueWriter, contiguous_or_invariant, match_epilogue
from kiln.errors import VerificationError
from kiln.ir.expr import Bin, Const, Load, Var, free_vars, substitute
from kiln.ir.loop import For, If, SERIAL

MAX_ACCUMULATORS = 24  # of 32 zmm registers: the rest hold weights and the broadcast
MAX_CONDITIONS = 2     # rows a segment skips at run time (a tile's first and last pixel)


class X86Renderer(CRenderer):
    """``CRenderer`` plus the VNNI register tile (see the module docstring)."""

    sum_lanes = 16  # float sums into a scalar: one AVX-512 vector (two AVX2 ones) of partial sums

    def __init__(self):
        super().__init__()
        self.stats = {"amx_tiles": 0, "vnni_tiles": 0, "vnni_epilogues": 0, "dequant_tiles": 0, "vnni_zero_rows": 0,
                      "vnni_zero_row_tests": 0}
        self._plain = False  # printing a tile's #else branch: plain C all the way down
        self._extents: dict[str, int] = {}  # loop variable -> extent, of the loops being printed

    def stmt(self, s, depth: int, in_parallel: bool = False):
        if isinstance(s, For) and isinstance(s.extent, int):
            self._extents[s.var.name] = s.extent  # (a kernel's loop names are unique: canonicalize)
        if isinstance(s, For) and not self._plain and s.kind == SERIAL:
            tile = match_dequant_tile(s, self.buffers)
            if tile is not None and self._dequant_tile(s, tile, depth, in_parallel):
                return
        if isinstance(s, For) and not self._plain and s.kind == SERIAL:
            amx = match_amx_tile(s, self.buffers)
            if amx is not None:
                self._amx_tile(s, amx, depth, in_parallel)
                return
        if isinstance(s, For) and not self._plain:
            # a serial reduction loop around the tile (a convolution's window rows) runs
            # inside the register block: the accumulators are loaded and stored once, not
            # once per row (the 7x7 stem's rows are 7 steps of 4 bytes each)
            # (its body may be guarded: rows in a zero border skipped, kiln/passes/skip_border_taps.py)
            guard, inner = (s.body.cond, s.body.then) if isinstance(s.body, If) else (None, s.body)
            if s.kind == SERIAL and isinstance(s.extent, int) and isinstance(inner, For):
                tile = match_vnni_tile(inner, self.buffers)
                if tile is not None:
                    self._vnni_tile(inner, tile, depth, in_parallel, around=s, guard=guard)
                    return
            tile = match_vnni_tile(s, self.buffers)
            if tile is not None:
                self._vnni_tile(s, tile, depth, in_parallel)
                return
            if self._tile_epilogue(s, depth, in_parallel):
                return
        super().stmt(s, depth, in_parallel)

    def _tile_epilogue(self, loop: For, depth: int, in_parallel: bool) -> bool:
        """The write-back of a register tile with AVX-512 intrinsics (``x86_epilogue``);
        False (nothing printed) when ``loop`` is not one or its expression is not supported."""
        accs = [name for name, b in self.buffers.items()
                if b.scope == "local" and b.dtype is I32 and len(b.shape) == 2]
        if not any(match_epilogue(loop, acc, self.buffers) for acc in accs):
            return False
        inner = loop.body
        store = inner.body

        def ref(e) -> str:
            return f"&{e.buffer}{self.subscript(e.buffer, e.indices)}"

        r, c = loop.var.name, inner.var.name
        writer, step = self._paired_bytes(loop, ref), 2 * EPILOGUE_LANES
        if writer is None:
            writer, step = EpilogueWriter(c, ref, self.expr, row=r), EPILOGUE_LANES
            try:
                writer.store(self.buffers[store.buffer].dtype, ref(store), store.value)
            except EpilogueWriter.Unsupported:
                return False
        # columns outside, rows inside (every element is written once, in any order): what
        # does not depend on the row -- per-channel bias, multiplier, shift, constants -- is
        # computed once per 16 columns instead of once per row
        self.emit("#if defined(__AVX512VNNI__)", 0)
        self.emit(f"for (int64_t {c} = 0; {c} < {inner.extent}; {c} += {step}) {{", depth)
        for line in writer.hoisted:
            self.emit(line, depth + 1)
        self.emit(f"for (int64_t {r} = 0; {r} < {loop.extent}; ++{r}) {{", depth + 1)
        for line in writer.lines:
            self.emit(line, depth + 2)
        self.emit("}", depth + 1)
        self.emit("}", depth)
        self._plain_fallback(loop, depth, in_parallel)
        self.stats["vnni_epilogues"] += 1
        return True

    def _paired_bytes(self, loop: For, ref) -> EpilogueWriter | None:
        """The write-back 32 columns at a time -- columns c and c + 16 computed side by side
        and narrowed to bytes together (``EpilogueWriter.store_pair``) -- where the tile's
        columns come in 32s, 32 contiguous bytes each; None (nothing printed) otherwise."""
        inner = loop.body
        store = inner.body
        dtype = self.buffers[store.buffer].dtype
        if dtype not in (I8, U8) or inner.extent % (2 * EPILOGUE_LANES):
            return None
        c = inner.var
        if not contiguous_or_invariant(store.buffer, store.indices, c.name, inner.extent, self.buffers,
                                       must_vary=True, lanes=2 * EPILOGUE_LANES):
            return None
        second = substitute(store.value, {c.name: Bin("add", c, Const(EPILOGUE_LANES, c.dtype), c.dtype)})
        writer = EpilogueWriter(c.name, ref, self.expr, row=loop.var.name)
        return writer if writer.store_pair(dtype, ref(store), store.value, second) else None

    def _dequant_tile(self, loop: For, tile: DequantTile, depth: int, in_parallel: bool) -> bool:
        """The weight-only tile (``x86_dequant``); False, with nothing printed, when some
        part of the nest is not supported."""
        start = len(self.lines)
        known = dict(self.buffers)
        try:
            self.emit("#if defined(__AVX512F__)", 0)
            self.emit("{", depth)
            printer = DequantPrinter(self, tile)
            for r in range(tile.rows):
                self.emit(" ".join(f"__m512 {printer.acc(r, p)} = _mm512_loadu_ps(&{tile.acc}[{r}][{p * LANES}]);"
                                   for p in range(tile.chunks)), depth + 1)
            printer.nest(loop, depth + 1)
            for r in range(tile.rows):
                self.emit(" ".join(f"_mm512_storeu_ps(&{tile.acc}[{r}][{p * LANES}], {printer.acc(r, p)});"
                                   for p in range(tile.chunks)), depth + 1)
            self.emit("}", depth)
        except DequantUnsupported:
            del self.lines[start:]
            self.buffers = known
            return False
        self._plain_fallback(loop, depth, in_parallel)
        self.helpers_used.add("intrinsics")
        self.stats["dequant_tiles"] += 1
        return True

    def _amx_tile(self, loop: For, tile: AmxTile, depth: int, in_parallel: bool) -> None:
        """The AMX block (``x86_amx``) where the compiler targets AMX and Linux grants the
        tile state at run time; otherwise the nest as plain C."""
        if AMX_BEGIN not in self.prologue:
            self.prologue += [AMX_GUARD, AMX_BEGIN, "#endif"]
        self.emit(AMX_GUARD, 0)
        self.emit("if (kiln_amx_ready()) {", depth)
        print_amx_tile(self, loop, tile, depth)
        self.emit("} else", depth)
        self.emit("#endif", 0)
        self.emit("{", depth)
        self._print_plain(loop, depth + 1, in_parallel)
        self.emit("}", depth)
        self.helpers_used.add("amx")
        self.stats["amx_tiles"] += 1

    def _plain_fallback(self, loop: For, depth: int, in_parallel: bool) -> None:
        """``#else``, ``loop`` as plain C (no intrinsics anywhere inside it), ``#endif``."""
        self.emit("#else", 0)
        self._print_plain(loop, depth, in_parallel)
        self.emit("#endif", 0)

    def _print_plain(self, loop: For, depth: int, in_parallel: bool) -> None:
        """``loop`` as plain C: no intrinsics anywhere inside it."""
        self._plain = True
        try:
            super().stmt(loop, depth, in_parallel)
        finally:
            self._plain = False

    def _vnni_tile(self, loop: For, tile: "VnniTile", depth: int, in_parallel: bool,
                   around: For | None = None, guard=None) -> None:
        k = loop.var.name
        rows, panels = tile.rows, tile.panels

        def ref(load: Load, var: Var, value: int) -> str:
            idx = tuple(_bind(i, var.name, value) for i in load.indices)
            return f"&{load.buffer}{self.subscript(load.buffer, idx)}"

        def acc(r: int, p: int) -> str:
            return f"&{tile.acc}[{r}][{p * LANES}]"

        self.emit("#if defined(__AVX512VNNI__)", 0)
        self.emit("{", depth)
        for r in range(rows):
            self.emit(" ".join(f"__m512i kiln_acc_{r}_{p} = _mm512_loadu_si512((const void*){acc(r, p)});"
                               for p in range(panels)), depth + 1)
        inner = depth + 1
        if around is not None:
            v = around.var.name
            self.emit(f"for (int64_t {v} = 0; {v} < {around.extent}; ++{v}) {{", inner)
            inner += 1
            if guard is not None:
                self.emit(f"if ({self.expr(guard)}) {{", inner)
                inner += 1

        def steps(lo: int, hi: int, kept: list[int], at: int) -> None:
            if not kept:
                return
            self.emit(f"for (int64_t {k} = {lo}; {k} < {hi}; {k} += 4) {{", at)
            for p in range(panels):
                self.emit(f"const __m512i kiln_w_{p} = _mm512_loadu_si512((const void*){ref(tile.w, tile.c, p * LANES)});",
                          at + 1)
            for r in kept:
                self.emit(f"{{ const __m512i kiln_x = _mm512_set1_epi32(kiln_load_u32({ref(tile.x, tile.r, r)}));",
                          at + 1)
                for p in range(panels):
                    self.emit(f"  KILN_DPBUSD(kiln_acc_{r}_{p}, kiln_x, kiln_w_{p});", at + 1)
                self.emit("}", at + 1)
            self.emit("}", at)

        def variants(seg: Segment, maybe, kept: list[int], at: int) -> None:
            """The segment's loop for each outcome of its rows' conditions."""
            if not maybe:
                steps(seg.lo, seg.hi, kept, at)
                return
            (row, cond), rest = maybe[0], maybe[1:]
            self.stats["vnni_zero_row_tests"] += 1
            self.emit(f"if ({self.expr(cond)}) {{", at)
            variants(seg, rest, [r for r in kept if r != row], at + 1)
            self.emit("} else {", at)
            variants(seg, rest, kept, at + 1)
            self.emit("}", at)

        box = self.buffers[tile.x.buffer].zero_outside
        ranges = {**self._extents, **({around.var.name: around.extent} if around is not None else {})}
        for seg in tile_segments(tile.x, tile.r, rows, loop.var, loop.extent, box, ranges):
            kept = [r for r in range(rows) if r not in seg.skip]
            maybe = seg.maybe if len(seg.maybe) <= MAX_CONDITIONS else ()  # 2**n copies of the loop
            self.stats["vnni_zero_rows"] += len(seg.skip) + len(maybe)
            variants(seg, maybe, kept, inner)
        if guard is not None:
            self.emit("}", inner - 1)
        if around is not None:
            self.emit("}", depth + 1)
        for r in range(rows):
            self.emit(" ".join(f"_mm512_storeu_si512((void*){acc(r, p)}, kiln_acc_{r}_{p});"
                               for p in range(panels)), depth + 1)
        self.emit("}", depth)
        self._plain_fallback(around or loop, depth, in_parallel)
        self.helpers_used.add("vnni")
        self.stats["vnni_tiles"] += 1


# The VNNI printer's tile is the matched nest (``tile.panels``: its columns in panels of 16)
VnniTile = DotNest


def match_vnni_tile(loop: For, buffers) -> VnniTile | None:
    """The tile when ``loop`` is the nest of the module docstring, its accesses verified."""
    nest = match_dot_nest(loop, buffers, step=4)
    if nest is None or nest.rows * (nest.cols // LANES) > MAX_ACCUMULATORS:
        return None
    if not _blocks_match(loop, nest.x, nest.w, nest.r, nest.c, nest.rows, nest.cols, buffers):
        return None
    return nest


def _blocks_match(loop: For, x: Load, w: Load, r: Var, c: Var, rows: int, cols: int, buffers) -> bool:
    """x: 4 contiguous bytes at every (row, k); w: 64 contiguous bytes -- 16 columns x 4
    steps -- at every (panel, k). Checked at the first, second and last k step, with the
    enclosing loops' variables at 0 and at 1."""
    k = loop.var.name
    others = (set().union(*(free_vars(i) for i in x.indices + w.indices)) - {k, r.name, c.name})
    steps = sorted({0, 4, loop.extent - 4})
    try:
        for base in (0, 1):
            env0 = {name: base for name in others}
            for k0 in steps:
                for row in range(rows):
                    first = flat_offset(x, {**env0, k: k0, r.name: row}, buffers)
                    if any(flat_offset(x, {**env0, k: k0 + j, r.name: row}, buffers) != first + j for j in range(4)):
                        return False
                for p in range(cols // LANES):
                    first = flat_offset(w, {**env0, k: k0, c.name: p * LANES}, buffers)
                    for lane in range(4 * LANES):
                        at = {**env0, k: k0 + lane % 4, c.name: p * LANES + lane // 4}
                        if flat_offset(w, at, buffers) != first + lane:
                            return False
    except (KeyError, VerificationError):  # an index that reads a tensor: not this nest
        return False
    return True


__all__ = ["X86Renderer", "match_vnni_tile"]
