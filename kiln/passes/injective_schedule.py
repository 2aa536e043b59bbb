"""Default schedules of stages without a reduction: all but the last loop fused and run in
parallel with the last vectorized; an iterating stage's walks interleaved (``interleave``); a
Winograd transform's cases expanded (``expand_cases``); a layout transpose tiled
(``transpose_schedule``)."""
from __future__ import annotations

from kiln.ir.compute import Stage
from kiln.ir.loop import For
from kiln.ir.schedule import Schedule
from kiln.passes.capabilities import DEFAULT_CAPABILITIES, Capabilities
from kiln.passes.loop_nests import (PARALLEL_MIN_WORK, TARGET_PARALLEL_EXTENT, extents, fuse_parallel,
                                    largest_divisor, parallel_outer, static_extent)
from kiln.passes.transpose_schedule import schedule_transpose


def schedule_injective(sch: Schedule, spatial, st: Stage, work, caps: Capabilities = DEFAULT_CAPABILITIES) -> None:
    """The rule for a stage without a reduction: a Winograd transform's own, ``interleave``
    for one that iterates (a tree walk), a layout transpose's tile (``transpose_schedule``),
    or ``_injective``."""
    if st.has_iterate:
        interleave(sch, spatial, work, caps)
    elif "winograd" in st.hints:
        expand_cases(sch, spatial, st.hints["winograd"], work)
    elif "transpose" in st.hints and schedule_transpose(
            sch, spatial, st.hints["transpose"], st.dtype.itemsize, caps.vector_bytes, parallel=work >= PARALLEL_MIN_WORK):
        pass
    else:
        plain_injective(sch, spatial, work)


MAX_INTERLEAVE = 8  # walks advanced together: 8 measured 2.4x faster than 1, 1.6x than 4


def interleave(sch: Schedule, spatial, work, caps: Capabilities) -> None:
    """An iterating stage (a tree walk: each step a chain of dependent loads) advances a few
    elements' iterations together, one step of each in turn, so their loads overlap instead
    of each waiting for the last:

        outer loops (parallel) | lane_o | step | lane_i (unrolled; the states in registers)

    The lanes are the axis with most of them (up to ``MAX_INTERLEAVE``, and to half the
    registers), moved innermost -- for a tree walk the samples, so each tree's nodes stay in
    L1 while all samples walk it; with one sample, the trees. The iteration loop moves
    outside the lanes as a reduction loop moves outside a register tile
    (``decompose_reduction``). No vector lanes: their gathers measured slower here."""
    width = max(1, min(MAX_INTERLEAVE, caps.vector_registers // 2))
    lanes = max(range(len(spatial)), key=lambda k: (largest_divisor(spatial[k][1], width), -k))
    name, extent = spatial[lanes]
    rest = [loop for k, loop in enumerate(spatial) if k != lanes]
    if len(spatial) > 1:
        sch.reorder(*[n for n, _ in rest], name)
    u = largest_divisor(extent, width)
    if u > 1:
        outer, inner = sch.split(name, u) if u < static_extent(extent) else (None, name)
        sch.decompose_reduction(inner)
        sch.unroll(inner)
        rest = rest + ([(outer, static_extent(extent) // u)] if outer else [])
    else:
        rest = rest + [(name, extent)]
    parallel_outer(sch, rest, work)


def expand_cases(sch: Schedule, spatial, hint: dict, work) -> None:
    """A stage whose body is a select over cases of some axes (kiln/ir/ops/winograd.py):

        outer loops (parallel) | vector axis (vectorized) | case axes (expanded)

    ``hint``: ``expand`` the case axes -- whole, or split by ``expand_block`` and only the
    inner parts expanded; ``vector`` the axis to vectorize. Each case then is straight-line
    code inside one vectorized loop, so the values the cases share are loaded and combined
    once per vector."""
    names = [n for n, _ in spatial]
    outer, inner = list(names), []
    for ax in hint["expand"]:
        if hint.get("expand_block"):
            o, i = sch.split(names[ax], hint["expand_block"])
            outer[ax] = o
        else:
            i = names[ax]
            outer.remove(i)
        inner.append(i)
    vec = names[hint["vector"]]
    outer.remove(vec)
    sch.reorder(*outer, vec, *inner)
    sch.vectorize(vec)
    if work >= PARALLEL_MIN_WORK:  # before expanding: fusing rewrites one body, not one per case
        fuse_parallel(sch, list(zip(outer, extents(sch, outer))), TARGET_PARALLEL_EXTENT)
    for i in reversed(inner):
        sch.expand(i)


def plain_injective(sch: Schedule, spatial, work) -> None:
    """The last loop (contiguous in memory) vectorized, the loops outside it fused into one
    parallel loop; a long single loop split into parallel chunks of 1024."""
    last, last_n = spatial[-1]
    last_n = static_extent(last_n)
    loop = sch._loop(last)
    if not isinstance(loop.body, For) and last_n >= 4:
        sch.vectorize(last)
    outer = spatial[:-1]
    if outer:
        name, extent = outer[0]
        for nxt, _ in outer[1:]:
            name = sch.fuse(name, nxt)
        if work >= PARALLEL_MIN_WORK:
            sch.parallel(name)
    elif work >= PARALLEL_MIN_WORK and last_n >= 4096 and isinstance(spatial[-1][1], int):
        o, i = sch.split(last, 1024)
        sch.parallel(o)
