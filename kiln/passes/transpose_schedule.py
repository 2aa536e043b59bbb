"""The default rule for layout transposes: copies whose input is contiguous along a
different output axis than the output's last one (NCHW <-> NCHWc, an ONNX Transpose that
moves the last axis).

The plain injective rule vectorizes the output's last axis, and each vector lane then
reads from a different cache line of the input: converting a [1, 144, 56, 56] tensor
out of NCHW16c read every input line 16 times, from L2 (139 us on 2 threads of a Zen 4,
against 19 us for a plain copy of the same bytes). This rule keeps both contiguous axes
in the two innermost loops instead, a tile of at most 16 x (the serial axis):

    outer loops (parallel) | serial axis | unrolled axis (<= 16 iterations)

One of the two contiguous axes is unrolled -- a whole block when the input's axis is
made of short runs (``from_nchwc``'s channel blocks), else the output's last axis when it
is short (``to_nchwc``'s block), else a block of the input's contiguous axis -- and the
other loop is left serial without a pragma. Where the tile is one block of memory on
one side (both NCHWc conversions) gcc vectorizes the serial loop and packs the unrolled
copies into vectors with permutes (an in-register transpose). Where the input rows of a
tile are cut out of longer runs (NHWC -> NCHW), they are first copied back to back into
a local tile (``_stage_input``), so the transpose reads one block there too. Measured on that
tensor: from NCHW16c 139 -> 28 us, to NCHW16c 56 -> 28 us (C microbenchmark, best of 400).

The op marks its stage with ``hints["transpose"] = (axis, run)``
(``kiln.ir.ops.transpose_hint``): the output axis that walks the input's last axis, and
how many consecutive values of it are contiguous there (NCHWc's block ``b`` for
``from_nchwc``, whose input's last index is ``c % b``).
"""
from __future__ import annotations

import math

from kiln.ir.schedule import Schedule
from kiln.passes.loop_nests import largest_divisor

MAX_UNROLL = 16  # copies per tile row: a cache line of floats, a register's worth of permutes
# Output rows a multiple of this many bytes apart fall into one or two sets of the L1 cache
# (32 KiB, 8 ways, 64-byte lines): 16 of them written a value at a time evict each other.
# Those tiles take 8 rows (a 1024 x 1024 float transpose: 1.5 ms -> 0.29 ms).
ALIASING_STRIDE = 2048
# The largest input tile staged in a local buffer (``cache_read``), in bytes: half of L1
STAGED_TILE_BYTES = 16384


def schedule_transpose(sch: Schedule, spatial, hint: tuple[int, int], itemsize: int, vector_bytes: int,
                       parallel: bool) -> bool:
    """Tile a layout transpose (see the module docstring). ``spatial``: the stage's loops,
    (name, extent) pairs; the outer loops are fused into one, run in ``parallel`` if asked.
    False (nothing done) when the tile does not apply: symbolic extents, no vector unit,
    or no block of two or more contiguous values."""

    axis, run = hint
    names = [n for n, _ in spatial]
    extents = [e for _, e in spatial]
    if vector_bytes < 16 or not all(isinstance(e, int) for e in extents) or axis >= len(spatial) - 1:
        return False
    last = len(spatial) - 1
    row_bytes = math.prod(extents[axis + 1:]) * itemsize  # output axis ``axis``'s stride
    block = largest_divisor(math.gcd(extents[axis], run), 8 if row_bytes % ALIASING_STRIDE == 0 else MAX_UNROLL)
    blocked = block == run < extents[axis]  # the axis holds several runs (from_nchwc's blocks)
    if extents[last] <= MAX_UNROLL and not blocked:
        # The output's last axis is short (to_nchwc's block): unroll it, the input's
        # contiguous axis serial right outside it.
        serial, unrolled = names[axis], names[last]
        outer = [(n, e) for k, (n, e) in enumerate(spatial) if k not in (axis, last)]
        staged = False
    elif block >= 2:
        # A block of the input's contiguous axis unrolled, the output's last axis serial.
        axis_o, unrolled = sch.split(names[axis], block) if block < extents[axis] else (None, names[axis])
        serial = names[last]
        outer = [(axis_o, extents[axis] // block) if k == axis else (n, e)
                 for k, (n, e) in enumerate(spatial[:last]) if k != axis or axis_o]
        staged = block < run and extents[last] * block * itemsize <= STAGED_TILE_BYTES
    else:
        return False
    sch.reorder(*[n for n, _ in outer], serial, unrolled)
    sch.unroll(unrolled)
    if outer:
        if staged:  # before the fuse: the tile's region is affine in the unfused loops
            _stage_input(sch, serial, outer[-1][0])
        fused = outer[0][0]
        for name, _ in outer[1:]:
            fused = sch.fuse(fused, name)
        if parallel:
            sch.parallel(fused)
    return True


def _stage_input(sch: Schedule, serial: str, tile_loop: str) -> None:
    """The tile's input rows are ``block`` values cut out of longer runs (NHWC -> NCHW:
    16 of 64 channels, 256 bytes apart), which gcc leaves as scalar copies. Copy them
    first into a local tile where they lie back to back (``cache_read``): the copy moves
    whole runs, and the transpose from the tile is the blocked one gcc vectorizes.
    [112, 112, 64] -> [64, 112, 112] in a C benchmark: 234 -> 70 us."""
    from kiln.ir.expr import Load, walk
    from kiln.ir.loop import Store, walk_stmts

    store = next(s for s in walk_stmts(sch._loop(serial)) if isinstance(s, Store))
    loads = {x.buffer for x in walk(store.value) if isinstance(x, Load)}
    if len(loads) == 1:
        sch.cache_read(loads.pop(), tile_loop)
