"""Loop pass: a convolution skips the window rows that lie in its input's zero border.

A convolution marked ``pads_in_storage`` (``kiln/passes/padded_storage.py``) reads its
input's storage, border included, as an unpadded convolution. Where that border holds 0 (the
input's zero point is 0, as after a ReLU), every product with a border element is 0, and a
window row that lies wholly in the border adds nothing to the accumulators. On a 3x3
convolution over a 7x7 image the first and the last output row each read one such row: 2 of
every 21 window rows, 2/21 of ResNet-18's last-stage dot products. This pass guards the loop
over window rows so that those rows are skipped::

    for kh < 3:                                     for kh < 3:
      for k < K:                                      if (1 <= h + kh && h + kh < 1 + H):
        acc[..] = acc[..] + int32(x[n, h + kh, ..])     for k < K:
                            * int32(w[..])      ->        acc[..] = acc[..] + int32(x[..]) * int32(w[..])

The test is evaluated once per window row, outside the register tile (the x86 renderer prints
it inside its tile's window-row loop, ``kiln/codegen/x86.py``).

Exact, and applied only where plainly so:

- the bordered buffer is a parameter whose storage holds 0 outside a box (``Buffer.zero_outside``,
  set by the kernel builder for an input stored with a border of zero points equal to 0);
- the guarded loop's body holds only loops (none parallel) and stores, each store
  accumulating into a local integer buffer: ``acc[i] = acc[i] + t``, ``t`` a product one of
  whose factors is an integer load of the one bordered buffer ``x`` (through integer casts,
  which keep 0 as 0);
- the guarded loop is serial and has a serial loop inside (a test inside an unrolled loop
  would split a register tile; one around the tile's own steps would run at every step);
- on each dim ``d`` of ``x`` the guard tests, every such load has the same index, an
  expression of the loop's variable and of variables bound outside the loop; an index that
  depends on a loop inside (a window column spread over an unrolled tile) is not tested here.

When the guard fails, the index on some dim ``d`` is in the border for every load of ``x``
in the body, so each increment is ``acc + 0``. Comparisons that always hold (by the ranges of
the loop variables) are left out; a loop none of whose comparisons can fail is left alone.
"""
from __future__ import annotations

from kiln.ir.dtype import INDEX, DType
from kiln.ir.expr import Bin, Cast, Const, Expr, Load, affine_coeffs, free_vars, join, walk
from kiln.ir.loop import PARALLEL, SERIAL, Alloc, For, Func, If, Seq, Stmt, Store, walk_stmts

ACCUMULATORS = (DType.int32, DType.int64)
INTEGER_LOADS = (DType.int8, DType.uint8, DType.int16, DType.uint16, DType.int32, DType.int64)


def skip_border_taps(func: Func) -> Func:
    """``func`` with window-row loops guarded against rows in a zero border (module
    docstring); the borders are the parameters' ``zero_outside`` boxes."""
    boxes = {p.name: p.zero_outside for p in func.params if p.zero_outside is not None}
    if not boxes:
        return func
    local = {s.buffer.name: s.buffer for s in walk_stmts(func.body) if isinstance(s, Alloc)}
    return func.with_body(_visit(func.body, {}, boxes, local))


def _visit(s: Stmt, ranges: dict[str, int], boxes, local) -> Stmt:
    if isinstance(s, For):
        inside = {**ranges, s.var.name: s.extent} if isinstance(s.extent, int) else ranges
        body = _visit(s.body, inside, boxes, local)
        guard = _guard(s, ranges, boxes, local) if s.kind == SERIAL else None
        return For(s.var, s.extent, body if guard is None else If(guard, body), s.kind)
    if isinstance(s, Seq):
        return Seq(tuple(_visit(x, ranges, boxes, local) for x in s.stmts))
    if isinstance(s, Alloc):
        return Alloc(s.buffer, _visit(s.body, ranges, boxes, local))
    if isinstance(s, If):
        return If(s.cond, _visit(s.then, ranges, boxes, local))
    return s


def _guard(loop: For, outer: dict[str, int], boxes, local) -> Expr | None:
    """The interior test for ``loop``'s body, or None when the rewrite does not apply."""
    if not isinstance(loop.extent, int) or not any(
            isinstance(x, For) and x.kind == SERIAL for x in walk_stmts(loop.body)):
        return None  # the test runs once per pass over a loop nest, not per step of a register tile
    bordered = _bordered_loads(loop.body, boxes, local)
    if not bordered:
        return None
    names = {ld.buffer for ld in bordered}
    if len(names) != 1:
        return None
    box = boxes[names.pop()]
    var = loop.var.name
    bound = set(outer) | {var}
    ranges = {**outer, var: loop.extent}
    tests: list[Expr] = []
    for d, interior in enumerate(box):
        if interior is None:
            continue
        index = {ld.indices[d] for ld in bordered}
        if len(index) != 1:
            continue
        e = index.pop()
        used = free_vars(e)
        if var not in used or not used <= bound:
            continue
        tests += box_tests(e, interior, ranges, inside=True)
    return join("and", tests) if tests else None


def box_tests(e: Expr, interior: tuple[int, int], ranges: dict[str, int], inside: bool) -> list[Expr]:
    """``start <= e`` and ``e < stop`` (``inside``), or ``e < start`` and ``e >= stop``, without
    the comparisons whose outcome ``e``'s range over the loops decides."""
    start, stop = interior
    low, high = index_range(e, ranges)
    tests = []
    if low < start:
        tests.append(Bin("ge" if inside else "lt", e, Const(start, INDEX), DType.bool))
    if high >= stop:
        tests.append(Bin("lt" if inside else "ge", e, Const(stop, INDEX), DType.bool))
    return tests


def index_range(e: Expr, ranges: dict[str, int]) -> tuple[float, float]:
    """Smallest and largest value of ``e`` over the loops' ranges; unbounded when not affine."""
    form = affine_coeffs(e)
    if form is None or any(v not in ranges for v in form if v):
        return float("-inf"), float("inf")
    low = high = form[""]
    for v, c in form.items():
        if v:
            top = c * (ranges[v] - 1)
            low, high = low + min(0, top), high + max(0, top)
    return low, high


def _bordered_loads(body: Stmt, boxes, local) -> list[Load] | None:
    """The bordered load that zeroes each store's increment; None when some statement is not
    a plain accumulation or some increment has no such factor."""
    found: list[Load] = []
    for s in walk_stmts(body):
        if isinstance(s, (Seq, For)):
            if isinstance(s, For) and s.kind == PARALLEL:
                return None
            continue
        if not isinstance(s, Store):
            return None
        buf = local.get(s.buffer)
        if buf is None or buf.scope != "local" or buf.dtype not in ACCUMULATORS:
            return None
        term = _increment(s, buf.dtype)
        factor = _zeroing_factor(term, boxes) if term is not None else None
        if factor is None:
            return None
        found.append(factor)
    return found


def _increment(s: Store, dtype: DType) -> Expr | None:
    """``t`` of ``acc[i] = acc[i] + t`` (either order), ``t`` not reading ``acc``."""
    v, acc = s.value, Load(s.buffer, s.indices, dtype)
    if not (isinstance(v, Bin) and v.op == "add"):
        return None
    for a, t in ((v.a, v.b), (v.b, v.a)):
        if a == acc and not any(isinstance(x, Load) and x.buffer == s.buffer for x in walk(t)):
            return t
    return None


def _zeroing_factor(t: Expr, boxes) -> Load | None:
    """A load of a bordered buffer that, when 0, makes the product ``t`` 0."""
    if isinstance(t, Cast) and t.dtype in INTEGER_LOADS:
        return _zeroing_factor(t.a, boxes)
    if isinstance(t, Load):
        return t if t.buffer in boxes and t.dtype in INTEGER_LOADS else None
    if isinstance(t, Bin) and t.op == "mul" and not t.dtype.is_float:
        return _zeroing_factor(t.a, boxes) or _zeroing_factor(t.b, boxes)
    return None


__all__ = ["skip_border_taps", "box_tests", "index_range"]
