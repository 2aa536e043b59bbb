"""Which rows of a VNNI register tile read only zeros, segment by segment of its reduction.

A convolution that reads its input's zero border in place (``kiln/passes/padded_storage.py``,
``Buffer.zero_outside``) multiplies weights by those zeros. ``skip_border_taps`` skips the
window rows that lie in the border; this module finds the window *columns* that do, which
the loop pass cannot reach: they are inside the register tile, whose rows are the output
pixels along an image row. Pixel ``p`` of a 3x3 convolution's tile reads input columns
``p + kw``, and the tile's reduction runs over ``kw x C`` contiguous bytes; on the image's
left edge the first pixel's ``kw = 0`` bytes are border, on its right edge the last pixel's
``kw = 2`` bytes. The renderer (``kiln/codegen/x86.py``) splits the reduction at multiples of
``C`` and leaves those rows out of those segments: on ResNet-18's 7x7 last stage, 2 of the
tile's 21 pixel-columns.

A row is left out of a segment only when every byte it reads there lies outside the box
(the box's index on some bordered dim, with the step inside the segment eliminated, is
outside its range): each product it drops is 0 times a weight, so the integers are the same.
Where that depends on the tile's position (``i2_o``, which tile of a row), the segment
carries the condition and the renderer prints both variants.
"""
from __future__ import annotations

from dataclasses import dataclass

from kiln.ir.dtype import INDEX
from kiln.ir.expr import Bin, Const, Expr, Load, Var, free_vars, fresh, join, simplify_in_ranges, substitute, walk
from kiln.passes.skip_border_taps import box_tests, index_range

STEP = 4  # a VNNI step reads 4 bytes of each row


@dataclass(frozen=True)
class Segment:
    """Reduction steps ``lo <= k < hi``: rows that read only zeros there (``skip``), and rows
    that do when a condition on the enclosing loops' variables holds (``maybe``)."""

    lo: int
    hi: int
    skip: frozenset[int] = frozenset()
    maybe: tuple[tuple[int, Expr], ...] = ()


def tile_segments(x: Load, r: Var, rows: int, k: Var, extent: int, box, ranges: dict[str, int]) -> list[Segment]:
    """The tile's reduction ``0 <= k < extent`` as segments (the module docstring); one
    segment with nothing to skip when no row ever reads only zeros.

    ``x``: the tile's activation load (rows ``r``); ``box``: its buffer's ``zero_outside``;
    ``ranges``: the extents of the loops around the tile."""
    whole = [Segment(0, extent)]
    dims = [d for d, interior in enumerate(box or ()) if interior is not None and k.name in free_vars(x.indices[d])]
    width = _segment_width(x, k, extent, dims)
    if width is None:
        return whole
    step = Var(fresh("j"), INDEX)
    segments = []
    for s in range(extent // width):
        skip, maybe = set(), []
        for row in range(rows):
            at = {k.name: Bin("add", Const(s * width, INDEX), step, INDEX), r.name: Const(row, INDEX)}
            state = _outside(x, dims, box, at, {**ranges, step.name: width}, step)
            if state is True:
                skip.add(row)
            elif state is not None:
                maybe.append((row, state))
        segments.append(Segment(s * width, (s + 1) * width, frozenset(skip), tuple(maybe)))
    return _merge(segments) if any(g.skip or g.maybe for g in segments) else whole


def _segment_width(x: Load, k: Var, extent: int, dims: list[int]) -> int | None:
    """The divisor of ``k`` in the bordered dims' indices (a window column's ``C`` bytes)."""
    widths = {int(e.b.value) for d in dims for e in walk(x.indices[d])
              if isinstance(e, Bin) and e.op == "floordiv" and isinstance(e.b, Const) and k.name in free_vars(e.a)}
    usable = [w for w in widths if w % STEP == 0 and extent % w == 0 and w < extent]
    return usable[0] if len(usable) == 1 else None


def _outside(x: Load, dims, box, at, ranges, step: Var):
    """True: the row reads only zeros in the segment; None: it may read inside the box; else
    the condition (an expression) under which it reads only zeros."""
    conds: list[Expr] = []
    for d in dims:
        e = simplify_in_ranges(substitute(x.indices[d], at), ranges)
        if step.name in free_vars(e):
            continue  # the index moves inside the segment: no conclusion on this dim
        start, stop = box[d]
        low, high = index_range(e, ranges)
        if high < start or low >= stop:
            return True
        conds += box_tests(e, box[d], ranges, inside=False)
    return join("or", conds) if conds else None


def _merge(segments: list[Segment]) -> list[Segment]:
    """Neighbouring segments that skip the same rows under the same conditions as one."""
    out = [segments[0]]
    for g in segments[1:]:
        last = out[-1]
        if (g.skip, g.maybe) == (last.skip, last.maybe):
            out[-1] = Segment(last.lo, g.hi, g.skip, g.maybe)
        else:
            out.append(g)
    return out


__all__ = ["Segment", "tile_segments"]
